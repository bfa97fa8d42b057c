"""Numbers as the cohort report shows them: rounding to JSON, mean (SD), median [IQR] with censored labs, counts with percent."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from training.tracking import metric_value


# Small helpers ----------------------------------------------------------------------------------
def _num(value: Any) -> float | None:
    """JSON-safe float, rounded as MLflow metrics are logged (:func:`training.tracking.metric_value`); None for missing or non-finite values."""
    if value is None:
        return None
    value = float(value)
    return metric_value(value) if math.isfinite(value) else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _mean_sd(x: np.ndarray, digits: int = 1) -> str:
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return "n/a"
    sd = float(np.std(x, ddof=1)) if len(x) > 1 else float("nan")
    return f"{_fmt(float(np.mean(x)), digits)} ({_fmt(sd, digits)})"


def _median_iqr(x: np.ndarray, digits: int = 1) -> str:
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return "n/a"
    q1, q2, q3 = np.quantile(x, [0.25, 0.5, 0.75])
    return f"{q2:.{digits}f} [{q1:.{digits}f} to {q3:.{digits}f}]"


def _censored_median_iqr(x: np.ndarray, below: np.ndarray, lod: float | None, digits: int) -> str:
    """Median [IQR] of a lab with values below the detection limit, which are only known to be below it.

    A quartile that falls among the censored values is shown as ``< LOD``; when
    most measured values are censored the median itself is, and the count
    below the limit is shown instead of a number that would only repeat the
    substituted value.
    """
    measured = ~np.isnan(x)
    n = int(measured.sum())
    if n == 0:
        return "n/a"
    censored = int((below[measured] > 0).sum())
    if lod is None or censored == 0:
        return _median_iqr(x, digits)
    limit = f"< {lod:g}"
    if censored * 2 >= n:
        return f"{limit} in {censored}/{n} ({100 * censored / n:.0f}%)"
    fraction = censored / n
    values = np.quantile(x[measured], [0.25, 0.5, 0.75])
    shown = [limit if q <= fraction else f"{v:.{digits}f}" for q, v in zip((0.25, 0.5, 0.75), values, strict=True)]
    return f"{shown[1]} [{shown[0]} to {shown[2]}]"


def _digits(x: np.ndarray) -> int:
    """Decimals that suit the scale of a lab (IL-1beta near 0.7 needs two, ESR near 12 none)."""
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return 1
    median = abs(float(np.median(x)))
    return 2 if median < 1 else 1 if median < 20 else 0


def _count_pct(hits: int, total: int) -> str:
    return f"{hits}/{total} ({100 * hits / total:.0f}%)" if total else "0/0"
