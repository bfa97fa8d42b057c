"""Lab value parsing: the one place that turns a lab export cell into a canonical number.

Rules (all limits come from the lab catalog):

- Missing: empty, ``NA``, ``n/a``, ``nan``, ``-``, ``.`` (SAS and Stata exports) or ``not done`` -> NaN
  (imputed later).
- Numbers may be given as numbers or text, with a decimal point or a decimal comma.
- Units: a value in an accepted unit is multiplied by the catalog factor to give
  the canonical unit; an unknown unit is an error.
- Detection limit (LOD, the catalog's, in canonical units after unit conversion).
  No parsed value is ever below ``LOD / sqrt(2)``, the value that stands for
  "below the detection limit" in training, so a censored or tiny value can never
  be extrapolated beyond what the models saw:

  - a plain number below the LOD, including 0, becomes ``LOD / sqrt(2)`` with
    ``below_lod = 1`` (Hornung & Reed 1990), so a lab that prints 0.1 and one
    that prints ``<0.3`` agree; a negative number is implausible (an error);
  - ``<x`` (also ``<=x``) and ``not detected``: censored below ``x``. With
    ``0 < x <= LOD`` (``<0.3``, ``<0.0001``) the value is below the detection
    limit: ``LOD / sqrt(2)``, ``below_lod = 1``. With ``x > LOD`` (a lab whose
    reporting limit is higher, ``<5``) it is ``x / sqrt(2)``, ``below_lod = 1``.
    ``<0`` (or any ``x <= 0``) says nothing a concentration can be and is an
    error for that patient, never a number;
  - ``>x`` (also ``>=x``): censored above; the value is ``x`` (a lower bound).
    A lower bound below the LOD (``>0``, ``>0.1`` for CRP) carries no usable
    value and is an error for that patient.
- ``negative`` / ``neg`` for an analyte with a positivity cut-off: the value is
  half the cut-off; ``positive`` / ``pos``: the value is the cut-off.
  For a titre, ``negative`` is one dilution below the screening dilution.
- Titres: ``1:320`` (also ``>1:1280``, ``<1:40`` and a bare dilution ``320``)
  give the dilution denominator N; features use ``log2(N / 40)``.
- Plausibility: a canonical value outside the catalog's plausible range is an
  error naming the analyte and value (a CRP of 5000 mg/L is a data error).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.catalog import Analyte

MISSING_TEXT = frozenset({"", ".", "na", "n/a", "nan", "none", "null", "-", "not done", "nd", "missing"})
NEGATIVE_TEXT = frozenset({"negative", "neg", "neg.", "not detected", "undetectable", "non-reactive"})
POSITIVE_TEXT = frozenset({"positive", "pos", "pos.", "reactive", "detected"})

_NUMBER = r"[0-9]+(?:[.,][0-9]+)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+"
_COMPARATOR = re.compile(rf"^(<=|>=|<|>|≤|≥)\s*({_NUMBER})$")
_PLAIN = re.compile(rf"^({_NUMBER})$")
_TITRE = re.compile(r"^(<=|>=|<|>|≤|≥)?\s*1\s*[:/]\s*([0-9]+)$")

SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True)
class LabResult:
    """One parsed lab value in canonical units."""

    value: float
    below_lod: bool = False
    censored: str | None = None  # "below_lod", "above", "negative", "positive"

    @property
    def missing(self) -> bool:
        return math.isnan(self.value)


class LabValueError(ValueError):
    """A lab cell that cannot become a feature; names the analyte and the value."""

    def __init__(self, analyte: str, raw: Any, reason: str, unit: str | None = None):
        self.analyte = analyte
        self.raw = raw
        self.reason = reason
        self.unit = unit
        unit_text = f" {unit}" if unit else ""
        super().__init__(f"{analyte}: {raw!r}{unit_text}: {reason}")


def _to_float(text: str) -> float:
    return float(text.replace(",", "."))


def missing_mask(values: pd.Series) -> np.ndarray:
    """:func:`is_missing` of every cell, evaluated once per distinct value (equal values are missing alike)."""
    if values.dtype.kind in "iufb":
        return values.isna().to_numpy()
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    flags = np.fromiter((is_missing(u) for u in uniques), dtype=bool, count=len(uniques))
    out = np.ones(len(codes), dtype=bool)  # code -1: None, NaN, NA or NaT
    present = codes >= 0
    out[present] = flags[codes[present]]
    return out


def is_missing(raw: Any) -> bool:
    if raw is None:
        return True
    if isinstance(raw, float) and math.isnan(raw):
        return True
    if raw is pd.NA or raw is pd.NaT:
        return True
    if isinstance(raw, str) and raw.strip().casefold() in MISSING_TEXT:
        return True
    return False


def parse_lab_value(raw: Any, analyte: Analyte, unit: str | None = None) -> LabResult:
    """Parse one lab cell for ``analyte`` given in ``unit`` (None: canonical unit).

    Raises :class:`LabValueError` for unparseable text, an unknown unit or an
    implausible value.
    """
    if is_missing(raw):
        return LabResult(math.nan)
    if analyte.kind == "titre":
        return _parse_titre(raw, analyte)
    if isinstance(unit, str) and not unit.strip():
        unit = None
    try:
        factor = analyte.factor(unit)
    except KeyError:
        accepted = ", ".join(analyte.units)
        raise LabValueError(analyte.key, raw, f"unknown unit {unit!r} (accepted: {accepted})", unit) from None

    if isinstance(raw, bool):
        raise LabValueError(analyte.key, raw, "not a lab value", unit)
    if isinstance(raw, (int, float, np.integer, np.floating)):
        return _quantity(float(raw), None, factor, analyte, raw, unit)

    text = str(raw).strip()
    folded = text.casefold()
    if folded in NEGATIVE_TEXT:
        if folded in {"not detected", "undetectable"} and analyte.lod is not None:
            return LabResult(analyte.lod / SQRT2, below_lod=True, censored="below_lod")
        if analyte.positive_at is None:
            raise LabValueError(analyte.key, raw, "qualitative result for a quantitative-only analyte", unit)
        return LabResult(analyte.positive_at / 2.0, censored="negative")
    if folded in POSITIVE_TEXT:
        if analyte.positive_at is None:
            raise LabValueError(analyte.key, raw, "qualitative result for a quantitative-only analyte", unit)
        return LabResult(analyte.positive_at, censored="positive")
    match = _COMPARATOR.match(text)
    if match:
        return _quantity(_to_float(match.group(2)), match.group(1), factor, analyte, raw, unit)
    match = _PLAIN.match(text)
    if match:
        return _quantity(_to_float(match.group(1)), None, factor, analyte, raw, unit)
    raise LabValueError(analyte.key, raw, "not a number or a recognised lab result", unit)


def _quantity(
    number: float, comparator: str | None, factor: float, analyte: Analyte, raw: Any, unit: str | None
) -> LabResult:
    if not math.isfinite(number):
        raise LabValueError(analyte.key, raw, "not a finite number", unit)
    value = number * factor
    low, high = analyte.plausible
    if not low <= value <= high:
        raise LabValueError(
            analyte.key, raw, f"implausible: {value:g} {analyte.unit} is outside {low:g}-{high:g}", unit
        )
    lod = analyte.lod
    if comparator in {"<", "<=", "≤"}:
        if value <= 0:
            raise LabValueError(
                analyte.key, raw, f"implausible censoring: '<{number:g}' is not a detection limit ({analyte.label} cannot be below {value:g} {analyte.unit})", unit
            )
        if lod is not None and value <= lod:
            return LabResult(lod / SQRT2, below_lod=True, censored="below_lod")
        return LabResult(value / SQRT2, below_lod=True, censored="below_lod")
    if comparator in {">", ">=", "≥"}:
        if value <= 0 or (lod is not None and value < lod):
            limit = f"the detection limit ({lod:g} {analyte.unit})" if lod is not None else "zero"
            raise LabValueError(analyte.key, raw, f"implausible censoring: '>{number:g}' is a lower bound below {limit}, no usable value", unit)
        return LabResult(value, censored="above")
    if lod is not None and value < lod:
        return LabResult(lod / SQRT2, below_lod=True, censored="below_lod")
    return LabResult(value)


def _parse_titre(raw: Any, analyte: Analyte) -> LabResult:
    assert analyte.negative_dilution is not None and analyte.reference_dilution is not None
    if isinstance(raw, bool):
        raise LabValueError(analyte.key, raw, "not a titre")
    text = str(raw).strip()
    folded = text.casefold()
    if folded in NEGATIVE_TEXT:
        return LabResult(float(analyte.negative_dilution), censored="negative")
    if folded in POSITIVE_TEXT:
        if analyte.positive_at is None:
            raise LabValueError(analyte.key, raw, "positive without a titre and no cut-off")
        return LabResult(float(analyte.positive_at), censored="positive")
    comparator = None
    match = _TITRE.match(text)
    if match:
        comparator, dilution = match.group(1), float(match.group(2))
    elif isinstance(raw, (int, float, np.integer, np.floating)) or _PLAIN.match(text):
        dilution = float(_to_float(text)) if isinstance(raw, str) else float(raw)
    else:
        raise LabValueError(analyte.key, raw, "not a titre such as 1:160 or negative")
    low, high = analyte.plausible
    if not low <= dilution <= high:
        raise LabValueError(analyte.key, raw, f"implausible titre: 1:{dilution:g} is outside 1:{low:g}-1:{high:g}")
    if comparator in {"<", "<=", "≤"} and dilution <= analyte.reference_dilution:
        return LabResult(float(analyte.negative_dilution), censored="negative")
    if comparator in {">", ">=", "≥"}:
        return LabResult(dilution, censored="above")
    return LabResult(dilution)


@dataclass(frozen=True)
class LabIssue:
    """A lab cell that could not be parsed; ``row`` is the frame's index label."""

    row: Any
    column: str
    analyte: str
    raw: Any
    reason: str

    def message(self) -> str:
        return f"{self.column}: {self.raw!r}: {self.reason}"


def parse_lab_series(
    values: pd.Series, analyte: Analyte, column: str, unit: str | None = None, units: pd.Series | None = None
) -> tuple[np.ndarray, np.ndarray, list[LabIssue]]:
    """Parse a column of lab cells.

    ``unit`` is the column's declared unit; ``units`` optionally gives a unit per
    row (a ``<column>_unit`` column or an API field) that overrides it.
    Returns ``value`` (canonical, NaN when missing or bad) and ``below_lod``
    (0/1) arrays aligned with ``values``, and the list of issues found (rows
    named by the series' index labels).
    """
    row_units = units.to_numpy(dtype=object) if units is not None else None
    return parse_lab_cells(values.to_numpy(dtype=object), analyte, column, unit, row_units, values.index)


SCALAR_CELLS = 4  # up to this many cells (an API request of a few patients) each goes through parse_lab_value: array set-up costs more


def parse_lab_cells(
    values: Sequence[Any], analyte: Analyte, column: str, unit: str | None = None, units: Sequence[Any] | None = None, rows: Sequence[Any] | None = None
) -> tuple[np.ndarray, np.ndarray, list[LabIssue]]:
    """:func:`parse_lab_series` on plain sequences (a frame's column or the values of a batch of request dicts).

    ``rows`` names each cell's row in the issues (default: its position). Every
    cell follows :func:`parse_lab_value`, the one implementation of the rules:
    plain numbers (or number text) in the column's unit of a quantitative analyte with array
    operations that repeat its arithmetic (a number times the unit factor,
    the plausible range, the detection limit; any number the arrays would
    refuse goes through :func:`parse_lab_value` for its message), every other
    cell through :func:`parse_lab_value` once per distinct text and unit. Up to
    :data:`SCALAR_CELLS` cells all go through it (the same results: tests/test_features.py).
    """
    n = len(values)
    out_value = np.full(n, np.nan)
    out_lod = np.zeros(n)
    issues: list[LabIssue] = []
    row_units: list[str | None] | None = None
    if units is not None:
        row_units = [None if is_missing(u) else str(u).strip() for u in units]
    numeric = _plain_numbers(values, analyte, unit, row_units) if n > SCALAR_CELLS else None
    if numeric is not None:
        mask, numbers = numeric
        factor = analyte.factor(unit if not (isinstance(unit, str) and not unit.strip()) else None)
        value = numbers * factor
        low, high = analyte.plausible
        with np.errstate(invalid="ignore"):
            fine = mask & np.isfinite(value) & (value >= low) & (value <= high)
        given = mask & np.isnan(numbers)  # a NaN number is a missing cell
        lod = analyte.lod
        below = fine & (value < lod) if lod is not None else np.zeros(n, dtype=bool)
        out_value[fine] = np.where(below[fine], lod / SQRT2 if lod is not None else 0.0, value[fine])
        out_lod[below] = 1.0
        rest = np.flatnonzero(~(fine | given))
    else:
        rest = range(n)
    if row_units is None and len(rest) >= ARROW_CELLS and _parse_distinct_texts(values, rest, analyte, column, unit, rows, out_value, out_lod, issues):
        return out_value, out_lod, issues
    known: dict[tuple[type, Any, str | None], LabResult | LabValueError] = {}
    for i in rest:
        raw = values[i]
        row_unit = unit if row_units is None or row_units[i] is None else row_units[i]
        try:
            key = (type(raw), raw, row_unit)
            result = known.get(key)
        except TypeError:  # an unhashable cell: parsed on its own
            key, result = None, None
        if result is None:
            try:
                result = parse_lab_value(raw, analyte, row_unit)
            except LabValueError as err:
                result = err
            if key is not None:
                known[key] = result
        if isinstance(result, LabValueError):
            issues.append(LabIssue(rows[i] if rows is not None else i, column, analyte.key, raw, result.reason))
            continue
        out_value[i] = result.value
        out_lod[i] = float(result.below_lod)
    return out_value, out_lod, issues


def _parse_distinct_texts(
    values: Sequence[Any], rest: Any, analyte: Analyte, column: str, unit: str | None, rows: Sequence[Any] | None,
    out_value: np.ndarray, out_lod: np.ndarray, issues: list[LabIssue],
) -> bool:
    """The cells ``rest`` of a column of text (report text such as ``1:160``, ``negative``, ``<0.5``) through
    :func:`parse_lab_value` once per distinct text (Arrow's dictionary encoding), the results taken for their rows.

    The per-cell loop's results and issues (in row order), without Python per cell; False (nothing done)
    when a cell is neither text nor missing.
    """
    index = np.asarray(rest, dtype=np.intp)
    cells = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    arr = text_array(cells[index])
    if arr is None:
        return False
    encoded = arr.dictionary_encode()
    distinct = [*encoded.dictionary.to_pylist(), None]  # a missing cell: the None after the texts
    codes = encoded.indices.fill_null(len(distinct) - 1).to_numpy(zero_copy_only=False)
    results: list[LabResult | LabValueError] = []
    for raw in distinct:
        try:
            results.append(parse_lab_value(raw, analyte, unit))
        except LabValueError as err:
            results.append(err)
    bad = np.asarray([isinstance(r, LabValueError) for r in results])
    value = np.asarray([math.nan if isinstance(r, LabValueError) else r.value for r in results], dtype=float)
    lod = np.asarray([0.0 if isinstance(r, LabValueError) else float(r.below_lod) for r in results])
    ok = ~bad[codes]
    out_value[index[ok]] = value[codes[ok]]
    out_lod[index[ok]] = lod[codes[ok]]
    for k in np.flatnonzero(~ok):
        i = int(index[k])
        issues.append(LabIssue(rows[i] if rows is not None else i, column, analyte.key, cells[i], results[codes[k]].reason))
    return True


_NUMBER_TYPES = (float, int, np.float64, np.float32, np.int64, np.int32)


def _plain_number(value: Any) -> float:
    """A number, or text that is one plain number (``3.2``, ``3,2``: :func:`parse_lab_value`'s rule), as a float; else NaN."""
    kind = type(value)
    if kind is str:
        text = value.strip()
        return _to_float(text) if _PLAIN.match(text) else math.nan
    if kind in _NUMBER_TYPES:
        return float(value)
    return math.nan


def _plain_numbers(values: Sequence[Any], analyte: Analyte, unit: str | None, row_units: list[str | None] | None):
    """Which cells are plain numbers in the column's unit (and their values), or None when the array path does not apply.

    It applies to quantitative analytes whose column unit is known; numbers and
    text that is one plain number (a CSV read as text) take it; a cell with a
    unit of its own, other text or a boolean is left to :func:`parse_lab_value`.
    """
    if analyte.kind == "titre":
        return None
    try:
        analyte.factor(unit if not (isinstance(unit, str) and not unit.strip()) else None)
    except KeyError:
        return None  # every cell gets the unknown-unit message
    n = len(values)
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
        mask, numbers = np.ones(n, dtype=bool), values.astype(np.float64)
    elif (plain := plain_text_numbers(values)) is not None:
        mask, numbers = plain
    else:
        numbers = np.fromiter((_plain_number(v) for v in values), dtype=np.float64, count=n)
        mask = ~np.isnan(numbers) | np.fromiter((type(v) in _NUMBER_TYPES for v in values), dtype=bool, count=n)
    if row_units is not None:
        mask &= np.fromiter((u is None for u in row_units), dtype=bool, count=n)
    return mask, numbers


# Batches from this many cells on read text columns with Arrow's compute kernels (a file's column: no Python per cell).
ARROW_CELLS = 256
_PLAIN_WHOLE = rf"^(?:{_NUMBER})$"  # the same pattern as _PLAIN, for RE2; no trailing newline allowed (Python's $ would)


def text_array(values: Sequence[Any]):
    """``values`` as an Arrow string array when every cell is text or missing (None, NaN), else None (or a short batch)."""
    if len(values) < ARROW_CELLS or (isinstance(values, np.ndarray) and values.dtype.kind != "O"):
        return None
    import pyarrow as pa

    try:
        arr = pa.array(values, from_pandas=True)  # the type inferred, so that bytes (binary) or numbers are not taken for text
    except (pa.ArrowTypeError, pa.ArrowInvalid, TypeError):
        return None
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.string())
    return arr if pa.types.is_string(arr.type) else None


def plain_text_numbers(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`_plain_numbers`'s (mask, numbers) for a column of text (a CSV read as text), with Arrow's kernels.

    A cell counts when it is exactly one plain number (:data:`_PLAIN`, decimal
    comma allowed) without surrounding blanks; its float is Arrow's cast of
    the text with the comma as a point, which, like Python's ``float``, is the
    correctly rounded value (tests/test_batch.py compares both). Missing cells
    count as NaN numbers (missing, as :func:`parse_lab_value` has them). Any
    other cell (blanks around a number, report text) is left to the per-cell path.
    None when the column is not all text.
    """
    arr = text_array(values)
    if arr is None:
        return None
    import pyarrow as pa
    import pyarrow.compute as pc

    plain = pc.match_substring_regex(arr, _PLAIN_WHOLE)
    numbers = pc.cast(pc.if_else(plain, pc.replace_substring(arr, ",", "."), pa.scalar(None, pa.string())), pa.float64())
    numbers = numbers.to_numpy(zero_copy_only=False)
    missing = arr.is_null().to_numpy(zero_copy_only=False)
    return plain.fill_null(False).to_numpy(zero_copy_only=False) | missing, numbers
