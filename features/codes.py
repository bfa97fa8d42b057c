"""Category codes: one canonical text per code, so a spec, a file and an API request agree.

A trial file may code a category as text (``female``, ``1_yes``) or as a number
(``0``/``1``), and the same code reaches the service as CSV text (``"1"``), a
Parquet integer or float (``1``, ``1.0``) or a JSON number. :func:`level_key`
maps them all to one string before anything compares them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def level_key(value: Any) -> str | None:
    """The canonical text of a category code: 1, 1.0, "1", "1.0" and " 1 " give "1"; missing gives None.

    Text is stripped and otherwise kept as written (case matters; "01" stays "01").
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isnan(number):
            return None
        return str(int(number)) if number.is_integer() else repr(number)
    text = str(value).strip()
    if not text:
        return None
    if "." in text and "e" not in text.lower():
        try:
            number = float(text)
        except ValueError:
            return text
        if math.isfinite(number) and number.is_integer():
            return str(int(number))  # "1.0" in a CSV written from a float column is the code 1
    return text


def level_keys(values: pd.Series) -> pd.Series:
    """``values.map(level_key).astype(object)``, with :func:`level_key` called once per distinct value.

    A column of one kind (text, numbers) is factorised and its distinct values
    mapped (the same ``map``, so the same missing-value marker): at 10^6
    patients per-cell calls took seconds per column. A column of mixed Python
    objects is mapped cell by cell, because factorising merges equal values of
    different kinds (``True`` and ``1``) that map to different keys.
    """
    if values.dtype == object:
        return values.map(level_key).astype(object)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    distinct = pd.Series(uniques).reindex(range(len(uniques) + 1))  # and one missing value, for code -1
    mapped = distinct.map(level_key)
    return mapped.take(np.where(codes < 0, len(uniques), codes)).set_axis(values.index).astype(object)
