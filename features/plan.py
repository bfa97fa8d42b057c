"""The fitted feature pipeline compiled for scoring, and the input warnings it gives, without scikit-learn.

:class:`FeaturePlan` holds the fitted transformers' NumPy cores
(``features.cores``) and runs them on columns of plain arrays: raw cells ->
parsed values -> imputed columns -> features, parsing each raw value once, so
that several outcomes' plans can share one parse of a request. It is made from
a fitted pipeline by :func:`features.pipeline.compile_pipeline` (equal to
``pipeline.transform`` cell by cell: tests/test_scoring_plan.py) and can be
stored and loaded without importing scikit-learn (``core.runtime.compiled``).

The input warnings (imputed, below the detection limit, outside the training
range, unseen category) are read from the plan's parser and imputers: per
patient (:func:`warnings_from_parsed`) or as masks over a batch
(:func:`warning_items`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.catalog import Analyte
from features.cores import (
    CategoricalFill,
    FeatureInfo,
    LabParserCore,
    MedianImputerCore,
    OneHotLevels,
    missing_code,
    missing_codes,
)
from features.labs import SQRT2, LabValueError, is_missing, parse_lab_value

DatasetSpec = Any  # a core.spec.DatasetSpec (features sits below core)
Part = tuple[str, Any, list[str], list[str]]  # (name, core or "passthrough", input columns, output names)


@dataclass(eq=False, repr=False)
class FeaturePlan:
    """A fitted feature pipeline's cores: raw columns -> parsed values -> imputed columns -> features.

    Every step runs a fitted transformer's NumPy core (``parse_columns``,
    ``fill``, ``compute``, ``source_shares``); scikit-learn's stock steps are
    their fitted attributes (the categorical imputer's fill codes, the one-hot
    encoder's levels: :class:`~features.cores.CategoricalFill`,
    :class:`~features.cores.OneHotLevels`). ``impute_parts`` and
    ``feature_parts``: (name, core or ``"passthrough"``, input columns, output
    names) in the pipeline's order; ``names``: the pipeline's output features;
    ``info``: what each feature means.
    """

    spec: DatasetSpec
    parser: LabParserCore
    impute_parts: list[Part]
    feature_parts: list[Part]
    names: list[str]
    info: dict[str, FeatureInfo]

    @property
    def imputers(self) -> dict[str, tuple[Any, list[str]]]:
        """Impute part name -> (core, input columns): what the warnings read (absent parts are absent)."""
        return {name: (core, inputs) for name, core, inputs, _ in self.impute_parts}

    def parse(self, columns: Mapping[str, Sequence[Any]], n: int, rows: Sequence[Any] | None = None):
        """Raw columns (absent ones missing) -> the parser's output columns and the unusable cells."""
        return self.parser.parse_columns(columns, n, rows)

    def impute(self, parsed: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """The impute step on parsed columns: imputed values, missing indicators and flags, by name."""
        return self._run(self.impute_parts, parsed, n)

    def features(self, imputed: Mapping[str, np.ndarray], n: int, order: Sequence[str] | None = None) -> np.ndarray:
        """The engineered feature matrix (n, d), columns in ``order`` (default: the pipeline's output order)."""
        out = self._run(self.feature_parts, imputed, n)
        return _stack([out[name] for name in (order or self.names)], n)

    def warnings(self, parsed: Mapping[str, np.ndarray], n: int, raw: Mapping[str, Sequence[Any]] | None = None) -> list[list[InputWarning]]:
        return warnings_from_parsed(self, parsed, n, raw)

    def warning_items(self, parsed: Mapping[str, np.ndarray], n: int, raw: Mapping[str, Sequence[Any]] | None = None) -> list[WarningItem]:
        return warning_items(self, parsed, n, raw)

    def sources(self, imputed: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
        """Which input each output feature comes from, per row for composites (``features.pipeline.feature_sources``)."""
        composites: dict[str, dict[str, np.ndarray]] = {}
        for _, core, columns, _ in self.feature_parts:
            if hasattr(core, "source_shares"):
                composites.update(core.source_shares({c: imputed[c] for c in columns}))
        return {name: composites[name] if name in composites else {meta.source or name: 1.0} for name, meta in self.info.items()}

    @staticmethod
    def _run(parts: list[Part], columns: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for _, core, inputs, names in parts:
            if isinstance(core, str):  # passthrough
                out.update({c: columns[c] for c in inputs})
            elif isinstance(core, MedianImputerCore):
                filled = core.fill(_stack([columns[c] for c in inputs], n))
                out.update({name: filled[:, j] for j, name in enumerate(names)})
            elif isinstance(core, CategoricalFill):
                out.update({name: core.fill(columns[c], j) for j, (name, c) in enumerate(zip(names, inputs, strict=True))})
            elif isinstance(core, OneHotLevels):
                out.update(core.encode([columns[c] for c in inputs], names))
            else:
                out.update(core.compute({c: columns[c] for c in inputs}))
        return out


def _stack(columns: list[Any], n: int) -> np.ndarray:
    """Columns as an (n, k) float array (``np.column_stack`` costs more than the arithmetic for one patient)."""
    out = np.empty((n, len(columns)))
    for j, column in enumerate(columns):
        out[:, j] = column
    return out


@dataclass(frozen=True)
class InputWarning:
    """Something a clinician should know about one patient's input."""

    code: str  # imputed, below_detection_limit, outside_training_range, unseen_category
    field: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class _Flagged:
    """One input column with a missing or out-of-range value in the batch, and what its warnings say about it."""

    kind: str  # "lab" or "numeric"
    column: str
    j: int
    values: np.ndarray  # (n, columns) of its imputer part
    outside: np.ndarray
    missing: np.ndarray
    label: str
    unit: str
    field: str
    low: float
    high: float
    fill: float
    shown: str  # the imputed value as a warning writes it


def _flagged_columns(spec: DatasetSpec, catalog, transformers: dict, parsed: Mapping[str, np.ndarray], n: int):
    """Every lab and numeric column with a missing or out-of-training-range value (most batches: none).

    The one place both warning builders (:func:`warnings_from_parsed`, :func:`warning_items`) read
    a column's label, unit, request field and imputed value from.
    """
    for part, kind in (("labs", "lab"), ("numeric", "numeric")):
        if part not in transformers:
            continue
        imputer, columns = transformers[part]
        values = _stack([parsed[c] for c in columns], n)
        outside = imputer.outside(values)
        missing = np.isnan(values)
        for j in np.flatnonzero(outside.any(axis=0) | missing.any(axis=0)):
            column = columns[j]
            if kind == "lab":
                lab = catalog[column]
                label, unit, field = lab.label, lab.unit, spec.labs[column].column
            else:
                label = _covariate_label(spec, column)
                unit, field = _covariate_unit(spec, column), column
            low, high, fill = imputer.min_[j], imputer.max_[j], imputer.statistics_[j]
            shown = f"1:{fill:g}" if kind == "lab" and catalog[column].kind == "titre" else f"{fill:.3g} {unit}".rstrip()
            yield _Flagged(kind, column, int(j), values, outside, missing, label, unit, field, low, high, fill, shown)


def warnings_from_parsed(
    plan: FeaturePlan, parsed: Mapping[str, np.ndarray], n: int, raw: Mapping[str, Sequence[Any]] | None = None
) -> list[list[InputWarning]]:
    """Per row, the input warnings of the parser's output columns (``LabParserCore.parse_columns``); ``features.pipeline.input_warnings`` on a frame.

    ``raw``: the input columns as given; a censored lab result (``negative``, ``<x``) is then outside
    the training range only when every value it stands for is (without ``raw``, its number is checked).
    """
    spec, parse = plan.spec, plan.parser
    catalog = parse.catalog_
    transformers = plan.imputers
    warnings: list[list[InputWarning]] = [[] for _ in range(n)]

    for c in _flagged_columns(spec, catalog, transformers, parsed, n):
        kind, column, j, values, outside, missing = c.kind, c.column, c.j, c.values, c.outside, c.missing
        label, unit, field, low, high, shown = c.label, c.unit, c.field, c.low, c.high, c.shown
        for i in np.nonzero(missing[:, j])[0]:
            warnings[i].append(InputWarning("imputed", field, f"{label} not given: imputed with the training median {shown}"))
        for i in np.nonzero(outside[:, j])[0]:
            value = values[i, j]
            if kind == "lab" and raw is not None and _censored_within(catalog[column], _raw_cell(raw, spec, column, i), low, high):
                continue
            warnings[i].append(
                InputWarning(
                    "outside_training_range",
                    field,
                    f"{label} {value:.3g} {unit} is outside the training range {low:.3g}-{high:.3g}; "
                    "the prediction extrapolates",
                )
            )
    for analyte in spec.labs:
        lab = catalog[analyte]
        flag = f"{analyte}_below_lod"
        if lab.lod is None or flag not in parsed:
            continue
        for i in np.nonzero(np.asarray(parsed[flag]) > 0)[0]:
            warnings[i].append(
                InputWarning(
                    "below_detection_limit",
                    spec.labs[analyte].column,
                    f"{lab.label} below the detection limit ({lab.lod:g} {lab.unit}): counted as {parsed[analyte][i]:.3g} "
                    f"{lab.unit}, the value the model uses for every result below this limit",
                )
            )
    for column, label, names, known, imputed in _categorical_checks(spec, transformers, parse):
        for i, value in enumerate(parsed[column]):
            if missing_code(value):
                warnings[i].append(InputWarning("imputed", column, imputed))
            elif value not in known:
                warnings[i].append(InputWarning("unseen_category", column, f"{label} {names.get(value, value)!r} was not seen in training"))
    return warnings


def _categorical_checks(spec: DatasetSpec, transformers: dict[str, Any], parse: Any):
    """Per fitted categorical column, what both warning builders (per patient, batch masks) check a value against:
    (column, its label, code -> name, the levels seen in training, the text of an imputed value)."""
    if "categorical" not in transformers:
        return
    imputer, columns = transformers["categorical"]
    seen = getattr(parse, "levels_seen_", {})
    for column, fill in zip(columns, imputer.statistics_, strict=True):
        names = spec.covariates[column].level_names() if column in spec.covariates else {}
        label = _covariate_label(spec, column)
        yield column, label, names, set(seen.get(column, names)), f"{label} not given: imputed as {names.get(str(fill), fill)!r}"


@dataclass
class WarningItem:
    """One kind of input warning for a whole batch: the rows it concerns and its message (one text, or one per row)."""

    code: str
    field: str
    rows: np.ndarray  # (n,) bool
    message: str | np.ndarray  # a text for every row, or an (n,) object array (None outside ``rows``)


def warning_items(
    plan: FeaturePlan, parsed: Mapping[str, np.ndarray], n: int, raw: Mapping[str, Sequence[Any]] | None = None
) -> list[WarningItem]:
    """:func:`warnings_from_parsed` as masks over the batch: a row's warnings are the items whose ``rows`` hold it, in order.

    The same checks and texts with array operations; Python runs only for the
    rows a value-dependent message concerns (a value outside the training
    range, below the detection limit) and once per distinct unseen category.
    For a file of 10^5 patients (``responders predict``) instead of a list of
    objects per patient; tests/test_scoring_plan.py checks both give the same warnings.
    """
    spec, parse = plan.spec, plan.parser
    catalog = parse.catalog_
    transformers = plan.imputers
    items: list[WarningItem] = []

    for c in _flagged_columns(spec, catalog, transformers, parsed, n):
        kind, column, j, values, outside, missing = c.kind, c.column, c.j, c.values, c.outside, c.missing
        label, unit, field, low, high, shown = c.label, c.unit, c.field, c.low, c.high, c.shown
        items.append(WarningItem("imputed", field, missing[:, j].copy(), f"{label} not given: imputed with the training median {shown}"))
        rows = outside[:, j].copy()
        if kind == "lab" and raw is not None:
            within: dict[Any, bool] = {}  # per distinct cell as given (report text such as "<10" repeats)
            for i in np.flatnonzero(rows):
                cell = _raw_cell(raw, spec, column, i)
                try:
                    key = (type(cell[0]), *cell)
                    censored = within[key] if key in within else within.setdefault(key, _censored_within(catalog[column], cell, low, high))
                except TypeError:  # an unhashable cell: on its own
                    censored = _censored_within(catalog[column], cell, low, high)
                if censored:
                    rows[i] = False
        message = _per_value(
            values[:, j], rows, lambda value, label=label, unit=unit, low=low, high=high: f"{label} {value:.3g} {unit} is outside the training range {low:.3g}-{high:.3g}; the prediction extrapolates"
        )
        items.append(WarningItem("outside_training_range", field, rows, message))
    for analyte in spec.labs:
        lab = catalog[analyte]
        flag = f"{analyte}_below_lod"
        if lab.lod is None or flag not in parsed:
            continue
        rows = np.asarray(parsed[flag]) > 0
        message = _per_value(
            np.asarray(parsed[analyte], dtype=float), rows,
            lambda value, lab=lab: (
                f"{lab.label} below the detection limit ({lab.lod:g} {lab.unit}): counted as {value:.3g} "
                f"{lab.unit}, the value the model uses for every result below this limit"
            ),
        )  # fmt: skip
        items.append(WarningItem("below_detection_limit", spec.labs[analyte].column, rows, message))
    for column, label, names, known, imputed in _categorical_checks(spec, transformers, parse):
        values = np.asarray(parsed[column], dtype=object)
        missing = np.fromiter((missing_code(v) for v in values), dtype=bool, count=n) if n < 256 else missing_codes(values)
        unseen = ~missing & ~pd.Series(values, dtype=object).isin(known).to_numpy()
        message = np.full(n, None, dtype=object)
        texts = {}
        for i in np.flatnonzero(unseen):
            value = values[i]
            if value not in texts:
                texts[value] = f"{label} {names.get(value, value)!r} was not seen in training"
            message[i] = texts[value]
        # A row is missing or unseen, never both: two items in a row give the per-row loop's one warning.
        items.append(WarningItem("imputed", column, missing, imputed))
        items.append(WarningItem("unseen_category", column, unseen, message))
    return items


def _per_value(values: np.ndarray, rows: np.ndarray, text) -> np.ndarray:
    """``text(value)`` in the rows ``rows`` holds (None elsewhere): written once per distinct value (bit for bit, so -0.0 is its own)."""
    message = np.full(len(values), None, dtype=object)
    index = np.flatnonzero(rows)
    if len(index):
        chosen = np.ascontiguousarray(values[index], dtype=np.float64)
        inverse, bits = pd.factorize(chosen.view(np.int64))  # hashed (not sorted), bit for bit
        message[index] = np.asarray([text(v) for v in np.asarray(bits, dtype=np.int64).view(np.float64)], dtype=object)[inverse]
    return message


def _raw_cell(raw: Mapping[str, Sequence[Any]], spec: DatasetSpec, analyte: str, i: int) -> tuple[object, str | None]:
    """The lab cell of row ``i`` as given (report text or number) and its unit, from the raw input columns."""
    lab = spec.labs[analyte]
    value = raw[lab.column][i] if lab.column in raw else None
    unit = lab.unit
    unit_column = f"{lab.column}_unit"
    if unit_column in raw and not is_missing(raw[unit_column][i]):
        unit = str(raw[unit_column][i]).strip()
    return value, unit


def _censored_within(analyte: Analyte, cell: tuple[object, str | None], low: float, high: float) -> bool:
    """Whether a censored result (``negative``, ``<x``, ``positive``, ``>x``) is compatible with the training range.

    A qualitative or censored result says only that the true value lies in an
    interval ("negative": below the positivity cut-off; ``<x``: below x); the
    number standing for it is a convention, not a measurement, so the result is
    outside the range the models saw only when that whole interval is.
    """
    raw, unit = cell
    try:
        result = parse_lab_value(raw, analyte, unit)
    except LabValueError:
        return False
    if result.censored == "negative":
        bound = analyte.reference_dilution if analyte.kind == "titre" else analyte.positive_at
        interval = (0.0, float(bound) if bound is not None else result.value)
    elif result.censored == "below_lod":
        interval = (0.0, result.value * SQRT2)
    elif result.censored in ("positive", "above"):
        interval = (result.value, np.inf)
    else:
        return False
    return interval[0] <= high and interval[1] >= low


def _covariate_label(spec: DatasetSpec, column: str) -> str:
    if column in spec.covariates:
        return spec.covariates[column].label or column
    if column in spec.baseline_score_columns():
        return spec.baseline_label(column)
    return column


def _covariate_unit(spec: DatasetSpec, column: str) -> str:
    if column in spec.covariates:
        return spec.covariates[column].unit
    for outcome in spec.outcomes.values():
        if outcome.baseline == column:
            return outcome.unit
    return ""

