"""``responders predict`` to a table: a file's patients scored column by column, written as Parquet or JSON lines.

The same checks, parse, models and numbers as ``POST /predict``
(:class:`serving.scoring.Scorer`), without a response object per patient:

- reading: a CSV or Parquet file becomes one array per field (a CSV parsed by
  Arrow with every cell as text, as pandas reads it: :func:`csv_texts`); a numeric field
  whose cells are all plain numbers or missing is a float array (Arrow parses
  the text), any other column keeps its cells as the file gives them;
- checking: each field's rule of the request model applied to the whole column
  (float arrays and text columns with array operations and Arrow's kernels,
  other cells one by one); a row any check doubts goes through the request
  model itself, which names its problems as the API would;
- warnings: masks over the batch (:func:`features.plan.warning_items`),
  written as each row's JSON text of the API's ``warnings`` list;
- scoring: the compiled plan on the usable rows (a BCF champion's walk split
  over the cores: :meth:`~serving.scoring.Scorer.batch_threads`);
- writing: Parquet through pyarrow, JSON lines from the columns' texts (Arrow
  writes the floats and quotes the text; Python only where its text would differ).

tests/test_scoring_plan.py compares every number, label, warning and error
with the API's answers for the same rows (the same floats, not merely close).
Patient values are never logged.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from core.spec import DatasetSpec
    from serving.scoring import Scorer

TABLE_SUFFIXES = (".parquet", ".pq", ".jsonl")  # one row per patient; any other output name gets the POST /predict JSON
SCORE_FIELDS = ("p_response_treated", "p_response_control", "benefit", "benefit_lower", "benefit_upper")
TABLE_BLOCK = 20_000  # patients per block of score_table: a BCF champion's draws for 20,000 patients take ~200 MB
_NUMBERS = (float, int)
_ID_PATTERN: re.Pattern | None = None
# A number cell of a CSV as Python's float() reads it after a decimal comma became a point (RE2 syntax).
_PLAIN_NUMBER = r"^[+-]?(?:[0-9]+(?:[.,][0-9]*)?|[.,][0-9]+)(?:[eE][+-]?[0-9]+)?$"


# Reading ------------------------------------------------------------------------------------------
def read_columns(path: str | Path, spec: DatasetSpec) -> tuple[dict[str, Any], int]:
    """The patient fields of a CSV or Parquet file, one array per field, and the number of rows.

    Numeric fields whose cells are all numbers (or plain number text, decimal
    comma allowed) or missing: float arrays, NaN for missing. Other fields:
    object arrays of the cells as given, None for missing (text a number
    field cannot take stays text, for the request model to name).
    """
    import pandas as pd

    from serving import schemas as S
    from serving.scoring import _number  # cells Arrow cannot read as numbers: as the API reads them

    fields = S.patient_model(spec, spec.lab_catalog()).model_fields
    numeric = set(spec.numeric_covariates()) | set(spec.baseline_score_columns())
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        # below ARROW_CELLS cells a column is read cell by cell, as features.labs.text_array has it
        from features.labs import ARROW_CELLS

        texts = csv_texts(path, fields)
        if texts is not None:
            columns: dict[str, Any] = {}
            for column, arr in texts.items():
                numbers = _plain_numbers(arr) if column in numeric and len(arr) >= ARROW_CELLS else None
                if numbers is not None:
                    columns[column] = numbers
                    continue
                values = arr.to_numpy(zero_copy_only=False)  # object: the cells' text, None for missing
                columns[column] = np.asarray([_number(v) for v in values], dtype=object) if column in numeric else values
            return columns, len(next(iter(texts.values())))
        # as read_table reads it (every cell as text), only the patient fields (not arm, follow-up, true_*)
        frame = pd.read_csv(path, dtype=str, keep_default_na=True, usecols=lambda c: c in fields)
    elif suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        frame = pd.read_parquet(path, columns=[c for c in pq.read_schema(path).names if c in fields])
    else:
        from core.data import read_table  # (pandera: only for the other formats)

        frame = read_table(path)
    columns = {}
    for column in (c for c in frame.columns if c in fields):
        series = frame[column]
        if column in numeric:
            numbers = _number_column(series)
            if numbers is not None:
                columns[column] = numbers
                continue
        values = series.astype(object).to_numpy()
        values = np.where(pd.isna(values), None, values)
        columns[column] = np.asarray([_number(v) for v in values], dtype=object) if column in numeric else values
    return columns, len(frame)


def _number_column(series: pd.Series) -> np.ndarray | None:
    """A numeric field's cells as floats (NaN for missing) when every cell is a number or plain number text, else None."""
    if series.dtype.kind in "fiu":
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    from features.labs import text_array

    arr = text_array(series.to_numpy(dtype=object))
    return None if arr is None else _plain_numbers(arr)


def _plain_numbers(arr: Any) -> np.ndarray | None:
    """An Arrow string column as floats (NaN for missing) when every cell is plain number text or missing, else None."""
    import pyarrow as pa
    import pyarrow.compute as pc

    plain = pc.match_substring_regex(arr, _PLAIN_NUMBER)
    if not pc.all(pc.or_kleene(plain, arr.is_null())).as_py():
        return None  # some cell is other text (or a number with blanks around it): cell by cell
    return pc.cast(pc.replace_substring(arr, ",", "."), pa.float64()).to_numpy(zero_copy_only=False)


def csv_texts(path: str | Path, fields: Any) -> dict[str, Any] | None:
    """The ``fields`` columns of a CSV file as Arrow string arrays, every cell as text as ``pandas.read_csv(dtype=str)``
    reads it (its missing-value words are missing), or None where the two readers could differ (pandas then reads it).

    Arrow parses on both cores without a Python object per cell. None for a
    header with a repeated name (pandas renames them), a file with none of the
    fields, or any file Arrow refuses (a row with more or fewer cells than the
    header, text that is not UTF-8): pandas reads those and says what is wrong.
    """
    import csv

    import pyarrow as pa
    import pyarrow.csv as pv
    from pandas._libs.parsers import STR_NA_VALUES

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), [])
    except (UnicodeDecodeError, csv.Error):
        return None
    wanted = [c for c in header if c in fields]
    if not wanted or len(set(header)) != len(header):
        return None
    options = pv.ConvertOptions(
        include_columns=wanted, column_types=dict.fromkeys(wanted, pa.string()), null_values=sorted(STR_NA_VALUES),
        strings_can_be_null=True, quoted_strings_can_be_null=True,
    )
    try:
        table = pv.read_csv(path, convert_options=options)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):
        return None
    return {c: table.column(c).combine_chunks() for c in wanted}


# Checking ---------------------------------------------------------------------------------------
def validate_columns(
    scorer: Scorer, columns: dict[str, Any], n: int, row: Any = None
) -> tuple[dict[str, Any], dict[int, list[Any]]]:
    """:meth:`Scorer.validate_rows` on a file read column by column: the validated columns and the problems by row.

    Every cell is checked with array operations against the rules the request
    model states for its field (types, ranges, codes, lengths, the patient-id
    pattern); a row with any cell those checks do not pass surely goes through
    the request model itself (``validate_rows``), which gives its problems, or
    its values when the checks were stricter than the model. ``row(i)``: row
    ``i`` as the model should see it (default: built from the columns). Rows
    with problems keep only their id in the validated columns. A field absent
    from the file stays absent (missing in every row).
    """
    checks = column_checks(scorer)
    clean: dict[str, Any] = {}
    ok = np.ones(n, dtype=bool)
    for column, values in columns.items():
        check = checks.get(column)
        if check is None:  # a key the model does not know: an error wherever it has a value
            ok &= np.fromiter((_is_blank(v) for v in values), dtype=bool, count=n)
            continue
        clean[column], passed = check(values)
        ok &= passed
    for column, check in checks.items():
        if column not in clean:
            _, passed = check(np.full(1, None, dtype=object))  # absent: every row as a missing cell
            ok &= passed[0]
    problems: dict[int, list[Any]] = {}
    doubtful = np.flatnonzero(~ok)
    if len(doubtful):
        rows = [row(i) if row is not None else {c: _cell(columns[c], i) for c in columns} for i in doubtful]
        id_column = scorer.spec.id_column
        for i, given, (values, found) in zip(doubtful, rows, scorer.validate_rows(rows), strict=True):
            for column in clean:
                _assign(clean[column], i, given.get(id_column) if column == id_column and values is None else None if values is None else values.get(column))
            if values is None:
                problems[int(i)] = found
    return clean, problems


def _cell(values: Any, i: int) -> Any:
    """Cell ``i`` as the request model takes it (a Python float, None for a missing float)."""
    value = values[i]
    if isinstance(value, np.floating):
        value = float(value)
        return None if math.isnan(value) else value
    return value


def _assign(values: Any, i: int, value: Any) -> None:
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        values[i] = np.nan if value is None else value
    else:
        values[i] = value


def column_checks(scorer: Scorer) -> dict[str, Any]:
    """Per field of the request model, a check of a whole column: (validated values, which cells surely pass)."""
    checks = getattr(scorer, "_batch_checks", None)
    if checks is not None:
        return checks
    spec = scorer.spec
    catalog = spec.lab_catalog()
    required = set(spec.required_columns())
    checks = {spec.id_column: _id_check}
    for column in spec.baseline_score_columns():
        checks[column] = _number_check(*spec.baseline_outcome(column).scale, True)
    for column, cov in spec.covariates.items():
        if cov.kind == "numeric":
            checks[column] = _number_check(*(cov.range or (None, None)), column in required)
        else:
            checks[column] = _code_check(set(cov.level_codes()), column in required)
    for analyte, lab in spec.labs.items():
        checks[lab.column] = _text_check(32)
        if catalog[analyte].kind != "titre":
            checks[f"{lab.column}_unit"] = _text_check(16, numbers=False)
    if set(checks) != set(scorer.patient_model.model_fields):  # the checks must cover the model's fields exactly
        raise RuntimeError(f"column checks out of step with the request model: {sorted(set(checks) ^ set(scorer.patient_model.model_fields))}")
    scorer._batch_checks = checks
    return checks


def _is_blank(value: Any) -> bool:
    from serving.scoring import _is_blank as blank  # the API's rule for an empty cell

    return blank(value)


def _blanks(values: Any) -> tuple[np.ndarray, Any]:
    """Which cells are blank (None, NaN, whitespace-only text), and the column as an Arrow string array when it is all text.

    For text, a cell whose first character is printable ASCII other than a
    space is surely not blank; only the others (empty, leading blanks,
    non-ASCII) are checked one by one with Python's ``str.strip``.
    """
    from features.labs import text_array

    arr = text_array(values)
    if arr is None:
        return np.fromiter((_is_blank(v) for v in values), dtype=bool, count=len(values)), None
    import pyarrow.compute as pc

    blank = arr.is_null().to_numpy(zero_copy_only=False).copy()
    surely = pc.match_substring_regex(arr, r"^[\x21-\x7e]").fill_null(True).to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(~surely):
        blank[i] = not values[i].strip()
    return blank, arr


def _id_check(values: Any) -> tuple[Any, np.ndarray]:
    global _ID_PATTERN
    if _ID_PATTERN is None:
        from serving import schemas as S

        _ID_PATTERN = re.compile(S.PATIENT_ID_PATTERN)
    blank, _ = _blanks(values)
    out = np.asarray(values, dtype=object).copy()
    out[blank] = None
    passed = np.fromiter((type(v) is str and 1 <= len(v) <= 64 and _ID_PATTERN.fullmatch(v) is not None for v in out), dtype=bool, count=len(out))
    return out, passed


def _number_check(low: float | None, high: float | None, required: bool):
    def check(values: Any) -> tuple[Any, np.ndarray]:
        if isinstance(values, np.ndarray) and values.dtype.kind == "f":  # a column of numbers (NaN: missing)
            numbers, missing = values, np.isnan(values)
            out = values.copy()  # rows the request model refuses are cleared in the copy
        else:
            blank, _ = _blanks(values)
            cells = np.asarray(values, dtype=object)
            numbers = np.fromiter((math.nan if b else _as_float(v) for v, b in zip(cells, blank, strict=True)), dtype=np.float64, count=len(cells))
            missing = blank
            out = np.where(blank, None, np.asarray(numbers, dtype=object))
        with np.errstate(invalid="ignore"):
            passed = np.isfinite(numbers)
            if low is not None:
                passed &= numbers >= low
            if high is not None:
                passed &= numbers <= high
        if not required:
            passed |= missing
        return out, passed

    return check


def _as_float(value: Any) -> float:
    """A number cell as a float; NaN (left to the request model) for anything else, or an int too large for a float."""
    if type(value) in _NUMBERS:
        try:
            return float(value)
        except OverflowError:
            return math.nan
    return math.nan


def _code_check(codes: set[str], required: bool):
    from features.codes import level_key

    def check(values: Any) -> tuple[Any, np.ndarray]:
        blank, arr = _blanks(values)
        if arr is not None:  # text: each distinct text keyed once
            encoded = arr.dictionary_encode()
            keys = [level_key(v) for v in encoded.dictionary.to_pylist()]
            keys = np.asarray([k if k in codes else None for k in keys] + [None], dtype=object)
            index = encoded.indices.fill_null(len(keys) - 1).to_numpy(zero_copy_only=False)
            out = keys[index]
        else:
            known: dict[tuple[type, Any], str | None] = {}
            out = np.empty(len(values), dtype=object)
            for i, v in enumerate(values):
                key = (type(v), v)
                if key not in known:
                    code = level_key(v) if type(v) in (int, float, str) else None
                    known[key] = code if code in codes else None
                out[i] = known[key]
        out[blank] = None
        passed = np.not_equal(out, None)
        if not required:
            passed |= blank
        return out, passed

    return check


def _text_check(longest: int, numbers: bool = True):
    """A lab cell (a number, or report text up to ``longest`` characters) or a unit (text only, ``numbers=False``)."""

    def check(values: Any) -> tuple[Any, np.ndarray]:
        if numbers and isinstance(values, np.ndarray) and values.dtype.kind == "f":
            return values.copy(), np.ones(len(values), dtype=bool)
        blank, arr = _blanks(values)
        out = np.asarray(values, dtype=object).copy()
        out[blank] = None
        if arr is not None:
            import pyarrow.compute as pc

            passed = blank | pc.less_equal(pc.utf8_length(arr), longest).fill_null(True).to_numpy(zero_copy_only=False)
            return out, passed
        if numbers:
            floats = [_as_float(v) if type(v) in _NUMBERS else v for v in out]
            out = np.asarray([v if type(v) is not float or v == v else w for v, w in zip(floats, out, strict=True)], dtype=object)
            ok = (v is None or (type(v) is float and v == v) or (type(v) is str and len(v) <= longest) for v in out)
        else:
            ok = (v is None or (type(v) is str and len(v) <= longest) for v in out)
        return out, np.fromiter(ok, dtype=bool, count=len(out))

    return check


# Scoring --------------------------------------------------------------------------------------------
def score_table(scorer: Scorer, columns: dict[str, Any], n: int, row: Any = None, offset: int = 0) -> pd.DataFrame:
    """A file's patients scored column by column: one row per patient, in file order.

    ``patient_id``; ``errors`` and ``warnings`` (JSON text of the response's
    lists; errors null when the patient was scored, warnings null when not);
    per outcome ``<outcome>_<field>`` for the scores (:data:`SCORE_FIELDS`:
    the interval as ``benefit_lower`` and ``benefit_upper``),
    ``<outcome>_patient_label`` and its reason, and ``<outcome>_answer``; all
    null for a patient with errors.
    """
    import pandas as pd
    import pyarrow as pa

    from core.runtime.plan import Parsed
    from serving import schemas as S
    from serving.scoring import _lab_code

    clean, prior = validate_columns(scorer, columns, n, row)
    parsed, issues = scorer.plan.parse_columns({c: clean[c] for c in scorer.plan.columns if c in clean}, n)
    errors: dict[int, list[Any]] = {
        i: [S.FieldProblem(field=x.column, message=x.message(), code=_lab_code(x.reason)) for x in found] for i, found in issues.items()
    }
    for i, problems in prior.items():
        errors.setdefault(i, []).extend(problems)
    usable = np.ones(n, dtype=bool)
    usable[list(errors)] = False
    good = np.flatnonzero(usable)
    subset: dict[int, Parsed] = {}  # outcomes sharing a parse share its subset too (the raw cells are not needed to score)
    rows = {o: p if len(good) == n else subset.setdefault(id(p), Parsed(len(good), {c: v[good] for c, v in p.columns.items()}, {})) for o, p in parsed.items()}
    ids = clean.get(scorer.spec.id_column, [None] * n)
    # ids are distinct: one Arrow string array straight away (no distinct values to encode once)
    table: dict[str, Any] = {"patient_id": pa.array([str(v or f"row-{offset + i + 1}") for i, v in enumerate(ids)], type=pa.string())}
    table["errors"] = _error_texts(errors, n)
    table["warnings"] = warning_texts(scorer, parsed, n, usable)
    for outcome, plan in scorer.plan.plans.items():
        scores = plan.predict(rows[outcome]) if len(good) else None
        for name in SCORE_FIELDS:
            column = np.full(n, np.nan)
            if scores is not None:
                column[good] = getattr(scores, name)
            table[f"{outcome}_{name}"] = column
        for name in ("patient_label", "patient_label_reason"):
            column = np.full(n, None, dtype=object)
            if scores is not None:
                column[good] = np.asarray(getattr(scores, name), dtype=object)
            table[f"{outcome}_{name}"] = column
        answer = np.full(n, None, dtype=object)
        answer[good] = plan.model.label_policy.answer
        table[f"{outcome}_answer"] = answer
    return pd.DataFrame({k: v if isinstance(v, np.ndarray) and v.dtype.kind == "f" else _text_column(v) for k, v in table.items()})


def _text_column(values: Any) -> pd.Series:
    """A text column of the table: Arrow strings (UTF-8, null for missing), whatever its cells (no type inference).

    Written to Parquet without a conversion, and with one type whether or not
    any row has a value (a column of nulls is still a string column).
    """
    import pandas as pd
    import pyarrow as pa

    if not isinstance(values, pa.Array):  # each distinct text encoded once, then taken for its rows (labels, reasons repeat)
        codes, distinct = pd.factorize(np.asarray(values, dtype=object))  # None: code -1
        texts = pa.array(np.asarray(distinct, dtype=object), type=pa.string())
        values = texts.take(pa.array(codes, mask=codes < 0)) if len(texts) else pa.nulls(len(codes), type=pa.string())
    return pd.Series(pd.arrays.ArrowExtensionArray(values), copy=False)


def text_values(column: pd.Series) -> list[Any]:
    """A text column's cells as Python values (None for missing)."""
    return arrow_text(column).to_pylist()


def arrow_text(column: pd.Series):
    """A text column as one Arrow string array (zero copy when it is one chunk)."""
    import pyarrow as pa

    array = pa.array(column.array)  # an Arrow-backed column gives its own arrays
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def score_table_in_blocks(
    scorer: Scorer, columns: dict[str, Any], n: int, block: int = TABLE_BLOCK, workers: int | None = None, row: Any = None
) -> pd.DataFrame:
    """:func:`score_table` a block of rows at a time (bounded memory; one progress update per block).

    ``row(i)``: row ``i`` of the file as given (a JSON file's patient objects; see :func:`validate_columns`).

    ``workers`` blocks are scored at once (default: the scorer's batch threads,
    see :meth:`Scorer.batch_threads`): one block's Python holds the GIL while
    another's Arrow kernels, NumPy, compiled walk, ``ndtr`` and quantiles run
    without it. A row's answer does not depend on the other rows:
    the table is the same with any block size and any number of workers.
    """
    import pandas as pd

    parts = list(scored_blocks(scorer, columns, n, block, workers, row))
    return pd.concat(parts, ignore_index=True) if len(parts) != 1 else parts[0] if parts else score_table(scorer, columns, 0)


def scored_blocks(
    scorer: Scorer, columns: dict[str, Any], n: int, block: int = TABLE_BLOCK, workers: int | None = None, row: Any = None
) -> Iterator[pd.DataFrame]:
    """The blocks of :func:`score_table_in_blocks`, each as soon as it and the blocks before it are scored (in file order)."""
    from core.progress import task_progress

    if workers is None:
        workers = scorer.threads
    starts = list(range(0, n, block))
    with task_progress(n, "scoring", unit="patient") as progress:

        def one(start: int) -> pd.DataFrame:
            stop = min(n, start + block)
            given = None if row is None else lambda i: row(start + i)
            return score_table(scorer, {c: v[start:stop] for c, v in columns.items()}, stop - start, given, offset=start)

        if workers <= 1 or len(starts) <= 1:
            for start in starts:
                part = one(start)
                progress.update(min(n, start + block) - start)
                yield part
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(workers, len(starts))) as pool:
                for start, part in zip(starts, pool.map(one, starts), strict=True):  # in file order
                    progress.update(min(n, start + block) - start)
                    yield part


def _error_texts(errors: dict[int, list[Any]], n: int) -> np.ndarray:
    """Each row's errors as the response's JSON text (None without errors; equal lists written once)."""
    out = np.full(n, None, dtype=object)
    written: dict[tuple, str] = {}
    for i, items in errors.items():
        if not items:
            continue
        key = tuple((type(x), *x.__dict__.values()) for x in items)
        text = written.get(key)
        if text is None:
            text = written[key] = json.dumps([x.model_dump(mode="json") for x in items], ensure_ascii=False, separators=(",", ":"))
        out[i] = text
    return out


def warning_texts(scorer: Scorer, parsed: dict[str, Any], n: int, usable: np.ndarray):
    """Each usable row's warnings as the JSON text of the API's ``warnings`` list (null for the other rows): an Arrow string array.

    Every outcome's warning items (:func:`features.plan.warning_items`),
    a warning another outcome already gave the row dropped, as
    :meth:`core.runtime.plan.ScoringPlan.warnings` merges them (outcomes with
    the same feature pipeline on the same parse give the same items: once); each item's
    JSON object in order in the rows it concerns. Each distinct list is written
    once and Arrow takes it for its rows: no Python string per row (10^5
    simulated patients carry about 48 MB of warnings in some 22,000 distinct lists).
    """
    items = []
    done: set[tuple[str, int]] = set()
    for outcome, plan in scorer.plan.plans.items():
        batch = parsed[outcome]
        if (plan.pipeline_key, id(batch)) in done:  # the same pipeline on the same parse: the same items, each already given
            continue
        done.add((plan.pipeline_key, id(batch)))
        for item in plan.features.warning_items(batch.columns, n, batch.raw):
            rows = item.rows & usable
            for earlier in items:  # the same (code, field, message) for a row: given once
                if earlier.code == item.code and earlier.field == item.field:
                    rows &= ~(earlier.rows & _same_message(earlier.message, item.message, n))
            if rows.any():
                items.append(type(item)(item.code, item.field, rows, item.message))
    import pandas as pd
    import pyarrow as pa

    # Rows with the same warnings share one text: each row's combination of (item, message) is a row of codes (0: the
    # item does not concern it), each distinct combination's JSON list is written once, then taken for its rows by Arrow.
    codes = np.zeros((n, len(items)), dtype=np.int32, order="F")  # written and read column by column
    fragments: list[list[str]] = []
    for j, item in enumerate(items):
        head = '{"code":' + json.dumps(item.code, ensure_ascii=False) + ',"field":' + json.dumps(item.field, ensure_ascii=False) + ',"message":'
        if isinstance(item.message, str):
            codes[item.rows, j] = 1
            fragments.append([head + json.dumps(item.message, ensure_ascii=False) + "}"])
            continue
        index = np.flatnonzero(item.rows)
        message, seen = pd.factorize(item.message[index])  # each distinct message once, in order of first appearance
        codes[index, j] = 1 + message.astype(np.int32)
        fragments.append([head + json.dumps(m, ensure_ascii=False) + "}" for m in seen])
    inverse = _row_codes(codes)
    first = np.empty(int(inverse.max()) + 1 if n else 0, dtype=np.intp)
    first[inverse[::-1]] = np.arange(n - 1, -1, -1)  # each combination's first row
    combinations = codes[first]
    lists: list[list[str]] = [[] for _ in range(len(combinations))]
    for k, j in zip(*np.nonzero(combinations), strict=True):  # row-major: each combination's items in order
        lists[k].append(fragments[j][combinations[k, j] - 1])
    texts = pa.array(["[" + ",".join(parts) + "]" for parts in lists], type=pa.string())
    return texts.take(pa.array(inverse.astype(np.int32), mask=~np.asarray(usable, dtype=bool)))


def _row_codes(codes: np.ndarray) -> np.ndarray:
    """A dense code (0, 1, ...) per row of ``codes`` (n, k): rows with equal values share one, in order of first appearance.

    Each row is hashed to one 64-bit number (a product with fixed odd weights, wrapping) and the numbers factorized
    once; a check that every row equals the first row of its code catches a collision, which falls back to factorizing
    column by column (exact either way).
    """
    import pandas as pd

    if codes.shape[1]:
        weights = np.random.default_rng(20261206).integers(1, 2**63 - 1, size=codes.shape[1], dtype=np.int64) | 1
        with np.errstate(over="ignore"):
            hashed = codes.astype(np.int64) @ weights  # int64 arithmetic wraps
        key = pd.factorize(hashed)[0]
        first = np.empty(int(key.max()) + 1 if len(key) else 0, dtype=np.intp)
        first[key[::-1]] = np.arange(len(key) - 1, -1, -1)
        if np.array_equal(codes[first][key], codes):
            return key.astype(np.int64)
    return _row_codes_by_column(codes)


def _row_codes_by_column(codes: np.ndarray) -> np.ndarray:
    """:func:`_row_codes` exactly, whatever the hashes: the codes so far and the next column factorized as one number."""
    import pandas as pd

    key = np.zeros(len(codes), dtype=np.int64)
    for j in range(codes.shape[1]):
        # key < n and codes < n + 1 (a column's distinct values), so the pair fits in int64 before it is densified again
        key = pd.factorize(key * (int(codes[:, j].max(initial=0)) + 1) + codes[:, j])[0].astype(np.int64)
    return key


def _same_message(a: Any, b: Any, n: int) -> np.ndarray:
    if isinstance(a, str) and isinstance(b, str):
        return np.full(n, a == b)
    return np.asarray(np.broadcast_to(np.asarray(a, dtype=object), (n,)) == np.broadcast_to(np.asarray(b, dtype=object), (n,)), dtype=bool)


# Writing -----------------------------------------------------------------------------------------
def write_table(table: pd.DataFrame, out: Path, scorer: Scorer) -> None:
    """Parquet (the models and their answers' shared parts in the file's metadata), JSON lines (one object per
    patient), or for any other name (``.json``) the ``POST /predict`` JSON (:func:`predict_json_chunks`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".pq"):
        write_chunks(out, _jsonl_chunks(table) if suffix == ".jsonl" else predict_json_chunks(table, scorer))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pydantic import BaseModel

    def plain(key: str, value: Any) -> tuple[str, Any]:
        if key == "wording":  # an event to prevent: its risk is 1 - p_response on each arm (as the API's `event` field says)
            return "event_to_prevent", value.event
        return key, value.model_dump(mode="json") if isinstance(value, BaseModel) else value

    shared = {o: dict(plain(k, v) for k, v in fixed.items()) for o, fixed in scorer._fixed.items()}
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = {**(arrow.schema.metadata or {}), b"responders": json.dumps({"outcomes": shared, "simulated_training_data": scorer.simulated}).encode()}
    pq.write_table(arrow.replace_schema_metadata(meta), out)


def write_chunks(out: Path, chunks: Iterable[Any]) -> None:
    """Write the chunks to ``out`` in order, each while the next is made (one writer thread; making a chunk
    is mostly Arrow's joins, writing it the kernel's copy: neither holds the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    with out.open("wb") as fh, ThreadPoolExecutor(1) as writer:
        pending = None
        for chunk in chunks:
            if pending is not None:
                pending.result()  # one chunk in flight at a time (bounded memory; an error stops the loop)
            pending = writer.submit(fh.write, chunk)
        if pending is not None:
            pending.result()


def jsonl_of_blocks(blocks: Iterable[pd.DataFrame], last_scored: list[float]) -> Iterator[Any]:
    """The JSON lines of scored blocks as they come (``responders predict --out FILE.jsonl``): a block's lines are
    joined and written while later blocks are scored. ``last_scored`` gets the clock time the last block arrived."""
    for part in blocks:
        last_scored[:] = [time.perf_counter()]
        yield from _jsonl_chunks(part)


JSONL_CHUNK = 20_000  # rows per piece of JSON-lines text


def _jsonl(table: pd.DataFrame) -> str:
    return b"".join(_jsonl_chunks(table)).decode("utf-8")


def _jsonl_chunks(table: pd.DataFrame):
    """One JSON object per row, a chunk of rows at a time; numbers as Python writes a float (the shortest text that reads back the same).

    Each column's value texts are made once per column (a float by ``repr``,
    other values once per distinct value); Arrow's element-wise join then puts
    each row's line together, and the joined array's bytes are the chunk.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = [json.dumps(c) + ":" for c in table.columns]
    for start in range(0, len(table), JSONL_CHUNK):
        part = table.iloc[start : start + JSONL_CHUNK]
        pieces: list[Any] = []
        before = "{"  # the text between two columns' values: a closing quote, a comma, the next key and an opening quote
        for key, column in zip(keys, part.columns, strict=True):
            quoted = False
            if column in ("errors", "warnings"):  # already JSON text
                texts = pc.fill_null(arrow_text(part[column]), "null")
            elif part[column].dtype.kind == "f":
                texts = float_texts(part[column].to_numpy())
            else:
                texts = arrow_text(part[column])
                encoded = texts.dictionary_encode()  # labels, reasons and answers repeat: each distinct text checked once
                quoted = texts.null_count == 0 and not _needs_escapes(encoded.dictionary)  # the quotes go between the values
                texts = texts if quoted else json_texts(encoded)
            pieces += [pa.scalar(before + key + ('"' if quoted else "")), texts]
            before = ('"' if quoted else "") + ","
        if not len(part):
            continue
        lines = pc.binary_join_element_wise(*pieces, pa.scalar(before[:-1] + "}\n"), "")
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
        first, last = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
        yield memoryview(lines.buffers()[2])[first:last]  # UTF-8, not copied (the view keeps Arrow's buffer alive)


def float_texts(values: np.ndarray):
    """Each float as Python's ``repr`` writes it (``null`` for NaN), as an Arrow string array.

    Arrow's cast writes the same shortest digits that read back the same
    number, but in its own notation for integral values (``1`` for ``1.0``),
    below 1e-4 (positional where Python uses an exponent) and from about 1e10
    (an exponent where Python writes the digits): cells outside
    [1e-4, 1e9) in magnitude, integral ones and NaN are written by Python
    (scores are probabilities and differences of them: a few cells at most).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    values = np.asarray(values, dtype=np.float64)
    texts = pc.cast(pa.array(values), pa.string())
    with np.errstate(invalid="ignore"):
        magnitude = np.abs(values)
        python = ~((magnitude >= 1e-4) & (magnitude < 1e9) & (values != np.floor(values)))  # NaN: True
    if python.any():
        texts = pc.replace_with_mask(texts, pa.array(python), pa.array(["null" if v != v else repr(v) for v in values[python].tolist()], type=pa.string()))
    return texts


def json_texts(column):
    """Each cell of an Arrow string array (or its dictionary encoding) as its JSON text (``null`` for missing); each
    distinct value encoded once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = column if pa.types.is_dictionary(column.type) else column.dictionary_encode()
    if len(encoded.dictionary) and not _needs_escapes(encoded.dictionary):  # nothing to escape: quoted
        distinct = pc.binary_join_element_wise('"', encoded.dictionary, '"', "")
    else:
        distinct = pa.array([json.dumps(v, ensure_ascii=False) for v in encoded.dictionary.to_pylist()], type=pa.string())
    return pc.fill_null(distinct.take(encoded.indices), "null")


_JSON_ESCAPED = r'["\\\x00-\x1f]'  # what json.dumps(ensure_ascii=False) escapes in a string (RE2 syntax)


def _needs_escapes(column) -> bool:
    """Whether any cell of an Arrow string array has a character JSON escapes (a quote, a backslash, a control character)."""
    import pyarrow.compute as pc

    return bool(pc.any(pc.match_substring_regex(column, _JSON_ESCAPED)).as_py())


# The POST /predict JSON --------------------------------------------------------------------------
_MARK = "@@responders:{}@@"  # a place in the response's JSON text that each patient fills
_MARKED = re.compile(r'"@@responders:([^@"]+)@@"')


def predict_json_chunks(table: pd.DataFrame, scorer: Scorer):
    """The ``POST /predict`` JSON of a scored table (:func:`score_table`), as UTF-8 pieces: byte for byte the text
    ``PredictResponse.model_dump_json(indent=2)`` gives for the same patients (what ``responders predict`` printed).

    pydantic writes the response once for a patient whose varying values are
    marks (:func:`_json_templates`): the text between the marks is what every
    patient shares (estimand, rules, evidence, model, population). Each
    patient's values are written by pydantic's own serialiser
    (``pydantic_core.to_json``: its float and string text), a column at a time
    (the sentence of ``summary`` per patient, as the API makes it); Arrow
    joins each patient's text, a chunk of :data:`JSONL_CHUNK` patients at a time.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    from pydantic_core import to_json

    n = len(table)
    scored = table["warnings"].notna().to_numpy() if n else np.zeros(0, dtype=bool)  # warnings: null exactly when not scored
    head, tail, good, bad = _json_templates(scorer, n_scored=int(scored.sum()), n_failed=int(n - scored.sum()))
    if not n:
        yield (head + '"results": []' + tail).encode()
        return
    yield (head + '"results": [\n').encode()
    outcomes = list(scorer.plan.plans)
    strings: dict[Any, str] = {None: "null"}

    def text(value: Any) -> str:  # a string (or None) as pydantic writes it, each distinct value once
        found = strings.get(value)
        if found is None:
            found = strings[value] = to_json(value).decode()
        return found

    nested: dict[tuple[str, str], str] = {}

    def pretty(compact: str | None, indent: str) -> str:  # a list (warnings, errors) as pydantic indents it at this depth
        key = (compact or "[]", indent)
        found = nested.get(key)
        if found is None:
            found = nested[key] = to_json(json.loads(key[0]), indent=2).decode().replace("\n", "\n" + indent)
        return found

    def floats(values: np.ndarray) -> list[str]:
        return to_json(values.tolist(), inf_nan_mode="null").decode()[1:-1].split(",") if len(values) else []

    for start in range(0, n, JSONL_CHUNK):
        part = table.iloc[start : start + JSONL_CHUNK]
        ok = scored[start : start + JSONL_CHUNK]
        last = start + len(part) == n
        joined: dict[bool, tuple[memoryview, np.ndarray]] = {}  # scored and unscored patients' texts, each set joined by Arrow
        for flag, (literals, keys) in ((True, good), (False, bad)):
            rows = np.flatnonzero(ok == flag)
            if not len(rows):
                continue
            sub = part.iloc[rows]
            values = {key: _column_texts(key, sub, scorer, outcomes, text, pretty, floats, indent) for key, indent in keys}
            pieces: list[Any] = []
            for literal, (key, _) in zip(literals, keys, strict=False):
                given = values[key]
                pieces += [pa.scalar(literal), given if isinstance(given, pa.Array) else pa.array(given, type=pa.string())]
            ends = np.full(len(rows), literals[-1] + ",\n", dtype=object)
            if last and rows[-1] == len(part) - 1:
                ends[-1] = literals[-1]  # the last patient of the file: no comma
            pieces.append(pa.array(ends, type=pa.string()))
            lines = pc.binary_join_element_wise(*pieces, "")
            offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset : lines.offset + len(lines) + 1]
            joined[flag] = (memoryview(lines.buffers()[2]), offsets)
        runs = np.r_[0, np.flatnonzero(np.diff(ok.astype(np.int8))) + 1, len(ok)]  # file order: runs of scored or unscored patients
        taken = {True: 0, False: 0}
        out = []
        for first, stop in zip(runs[:-1], runs[1:], strict=True):
            flag = bool(ok[first])
            data, offsets = joined[flag]
            k = taken[flag]
            out.append(data[offsets[k] : offsets[k + stop - first]])
            taken[flag] = k + stop - first
        yield b"".join(out)  # UTF-8
    yield ("\n  ]" + tail).encode()


def _column_texts(key: str, rows: pd.DataFrame, scorer: Scorer, outcomes: list[str], text, pretty, floats, indent: str):
    """One marked value of the response for each of ``rows``, as JSON text (a list, or an Arrow string array)."""
    if key == "id":
        return [text(v) for v in text_values(rows["patient_id"])]
    if key in ("warnings", "errors"):  # each distinct list indented once, then taken for every row (an Arrow array)
        import pyarrow as pa
        import pyarrow.compute as pc

        encoded = pc.dictionary_encode(pc.fill_null(arrow_text(rows[key]), "[]"))
        return pa.array([pretty(v, indent) for v in encoded.dictionary.to_pylist()], type=pa.string()).take(encoded.indices)
    j, name = key.split(".", 1)
    outcome = outcomes[int(j)]
    if name in SCORE_FIELDS:
        return floats(rows[f"{outcome}_{name}"].to_numpy(dtype=np.float64))
    if name in ("patient_label", "patient_label_reason"):
        return [text(v) for v in text_values(rows[f"{outcome}_{name}"])]
    from serving.scoring import _event_risk

    fixed = scorer._fixed[outcome]
    wording, level, kind = fixed["wording"], fixed["level"], fixed["kind"]
    numbers = zip(*(rows[f"{outcome}_{f}"].tolist() for f in SCORE_FIELDS), strict=True)
    if name == "summary":
        return [text(wording.sentence(p1, p0, b, low, high, level, kind, *fixed["names"])) for p1, p0, b, low, high in numbers]
    if not wording.prevents:  # name == "event"
        return ["null"] * len(rows)
    return [_event_risk(wording, *values, level, kind).model_dump_json(indent=2).replace("\n", "\n" + indent) for values in numbers]


def _json_templates(scorer: Scorer, n_scored: int, n_failed: int) -> tuple[str, str, tuple, tuple]:
    """The response's text around its results, and a scored and an unscored patient's text split at their marks.

    Each patient template: (the literal texts, the marks between them as
    (key, indentation of the mark's line)); literal ``k`` comes before mark ``k``, the last after the last mark.
    pydantic writes every part from models validated as the API validates them (a marked value is put in
    afterwards with ``model_copy``, so that its type is not checked).
    """
    from serving import schemas as S

    outcomes = list(scorer.plan.plans)
    mark = _MARK.format
    predictions = {}
    for j, (outcome, plan) in enumerate(scorer.plan.plans.items()):
        fixed = scorer._fixed[outcome]
        interval = S.Interval(lower=0.0, upper=0.0, level=fixed["level"], kind=fixed["kind"])
        valid = S.OutcomePrediction(
            p_response_treated=0.0, p_response_control=0.0, benefit=0.0, benefit_interval=interval,
            answer=plan.model.label_policy.answer, estimand=fixed["estimand"], patient_label=None, patient_label_reason="",
            comparison=fixed["comparison"], population=fixed["population"], label_rule=fixed["label_rule"],
            responder_rule=fixed["responder_rule"], evidence=fixed["evidence"], model=fixed["model"],
        )  # fmt: skip
        marks = {f: mark(f"{j}.{f}") for f in ("p_response_treated", "p_response_control", "benefit", "summary", "event", "patient_label", "patient_label_reason")}
        bounds = {"lower": mark(f"{j}.benefit_lower"), "upper": mark(f"{j}.benefit_upper")}
        predictions[outcome] = valid.model_copy(update={**marks, "benefit_interval": interval.model_copy(update=bounds)})
    frame = S.PredictResponse(results=[], n_scored=n_scored, n_failed=n_failed, models=scorer.refs, simulated_training_data=scorer.simulated)
    whole = frame.model_dump_json(indent=2)
    head, tail = whole.split('"results": []', 1)
    patients = (
        S.PatientPrediction(patient_id="").model_copy(update={"patient_id": mark("id"), "predictions": predictions, "warnings": mark("warnings")}),
        S.PatientPrediction(patient_id="").model_copy(update={"patient_id": mark("id"), "errors": mark("errors")}),
    )
    templates = []
    for patient in patients:
        full = frame.model_copy(update={"results": [patient]}).model_dump_json(indent=2, warnings=False)
        body = full[full.index('"results": [\n') + len('"results": [\n') : full.rindex("\n  ]" + tail)]
        parts = _MARKED.split(body)
        literals, keys = parts[0::2], parts[1::2]
        if len(set(keys)) != len(keys) or len(keys) != (2 + 9 * len(outcomes) if patient.predictions is not None else 2):
            raise RuntimeError(f"the response template's marks are not each found once: {keys}")
        lines = [literal.rsplit("\n", 1)[-1] for literal in literals[:-1]]  # the line each mark is on
        templates.append((literals, tuple((key, line[: len(line) - len(line.lstrip(" "))]) for key, line in zip(keys, lines, strict=True))))
    return head, tail, templates[0], templates[1]


# The command ------------------------------------------------------------------------------------
def _reusing_memory_pool() -> None:
    """Arrow allocates through the C library's malloc for the rest of the command, not its bundled jemalloc pool.

    Each block of a file makes Arrow buffers of the same sizes again; with the
    jemalloc pool they came as fresh pages (a page fault for every 4 KiB touched),
    with the system allocator the freed ones are reused. On 10^5 simulated
    patients scoring took 1.5-2.2 s with jemalloc and 0.9 s with the system pool
    (the same output; the serving benchmark measures the command).
    """
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())


def score_file_to_table(
    path: str | Path, out: str | Path | None, spec: str | None = None, tracking_uri: str | None = None
) -> dict[str, float]:
    """``responders predict``: read, score column by column and write; the wall and CPU seconds of each step (no patient data).

    ``out``: a Parquet or JSON-lines table, or ``.json`` (or None: standard
    output) for the ``POST /predict`` JSON (:func:`predict_json_chunks`). A
    JSON input file's patients are checked as sent (:func:`validate_columns`).
    """
    import itertools
    import logging
    import os
    import sys

    from core.spec import load_spec
    from serving.scoring import DEFAULT_MAX_BATCH, Scorer, read_patients, resolve_champions

    log = logging.getLogger("responders.serving")
    _reusing_memory_pool()
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}  # CPU seconds of the process (every thread) per step: what the step costs, whatever else runs
    start, clock = time.perf_counter(), time.process_time()

    def done(step: str) -> None:
        nonlocal start, clock
        times[step], cpu[step] = time.perf_counter() - start, time.process_time() - clock
        start, clock = time.perf_counter(), time.process_time()

    dataset_spec = load_spec(spec)
    max_batch = int(os.environ.get("RESPONDERS_MAX_BATCH", DEFAULT_MAX_BATCH))
    scorer = Scorer(dataset_spec, resolve_champions(dataset_spec, tracking_uri, scoring_only=True), max_batch=max_batch)
    scorer.batch_threads(os.cpu_count() or 1)
    done("load")
    row = None
    if Path(path).suffix.lower() == ".json":
        rows = read_patients(path, dataset_spec)
        columns, n, row = {c: [r.get(c) for r in rows] for c in dict.fromkeys(k for r in rows for k in r)}, len(rows), rows.__getitem__
    else:
        columns, n = read_columns(path, dataset_spec)
    done("read")
    if out is not None and Path(out).suffix.lower() == ".jsonl":
        # Streamed: each block's lines written while later blocks are scored. "score" is the time until the last
        # block was scored (with the writing of the blocks before it), "write" what remained after.
        last_scored: list[float] = []
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_chunks(Path(out), jsonl_of_blocks(scored_blocks(scorer, columns, n, row=row), last_scored))
        split = last_scored[0] if last_scored else time.perf_counter()
        times["score"], times["write"] = split - start, time.perf_counter() - split
        now = time.process_time()
        cpu["score"], cpu["write"] = now - clock, 0.0  # one CPU clock for both: they ran at once
        times["patients"] = float(n)
        times |= {f"cpu_{step}": seconds for step, seconds in cpu.items()}
        _log_steps(log, times, cpu, n)
        return times
    table = score_table_in_blocks(scorer, columns, n, row=row)
    done("score")
    if out is None:  # printed, as the text of typer.echo (a stream without a byte buffer gets text)
        sys.stdout.flush()
        stream = getattr(sys.stdout, "buffer", None)
        for chunk in itertools.chain(predict_json_chunks(table, scorer), [b"\n"]):
            stream.write(chunk) if stream is not None else sys.stdout.write(chunk.decode("utf-8"))
        sys.stdout.flush()
        if stream is not None:
            stream.flush()
    else:
        write_table(table, Path(out), scorer)
    done("write")
    times["patients"] = float(len(table))
    times |= {f"cpu_{step}": seconds for step, seconds in cpu.items()}
    _log_steps(log, times, cpu, len(table))
    return times


def _log_steps(log: Any, times: dict[str, float], cpu: dict[str, float], n: int) -> None:
    """The steps' wall and CPU seconds (no patient data); benchmarks/serving.py reads these two lines."""
    log.info("predict: %d patients; load %.2f s, read %.2f s, score %.2f s, write %.2f s", n, times["load"], times["read"], times["score"], times["write"])
    log.info("predict CPU seconds (all threads): load %.2f, read %.2f, score %.2f, write %.2f", cpu["load"], cpu["read"], cpu["score"], cpu["write"])
