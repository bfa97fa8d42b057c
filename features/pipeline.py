"""One function builds the feature pipeline for a dataset spec; training fits it, serving reuses it.

The fitted pipeline is the single object that turns a raw patient row (labs as
report text, optional units) into model features, so training, serving and the
reports cannot drift apart. Helpers here read it back: feature descriptions for
clinicians, per-row warnings (imputed, below detection limit, outside the
training range, unseen category) and per-row lab errors.

:class:`FeaturePlan` is the same fitted pipeline compiled for scoring: it runs
each fitted transformer's NumPy core (``features.transformers``) on columns of
plain arrays, parsing each raw value once, and reads scikit-learn's own fitted
steps (the categorical imputer, the one-hot encoder) from their fitted
attributes; the tests check it against ``pipeline.transform`` cell by cell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

from features.catalog import Analyte, load_catalog
from features.labs import SQRT2, LabIssue, LabValueError, is_missing, parse_lab_value
from features.transformers import (
    AutoantibodyFeatures,
    FeatureInfo,
    InflammationFeatures,
    LabFeatures,
    LabParser,
    MedianImputer,
    SymptomFeatures,
)

# A ``core.spec.DatasetSpec``: features sits below core (core's artefact holds a fitted feature pipeline),
# so it takes the spec as an argument and never imports it, not even for type checking.
DatasetSpec = Any


def build_feature_pipeline(spec: DatasetSpec, catalog_path: str | None = None) -> Pipeline:
    """The unfitted feature pipeline for ``spec``: parse labs -> impute -> engineer features.

    Every step is present only when the spec gives it inputs: a trial without
    labs has no lab imputer, inflammation or autoantibody features and no
    missing-lab indicators, rather than empty or constant ones.
    """
    catalog = spec.lab_catalog(load_catalog(catalog_path))
    spec.check_catalog(catalog)
    declared = tuple(spec.analytes.values())
    analytes = list(spec.labs)
    inflammation = [a for a in analytes if catalog[a].group == "inflammation"]
    autoantibody = [a for a in analytes if catalog[a].group == "autoantibody"]
    ungrouped = [a for a in analytes if catalog[a].group is None]
    with_lod = [a for a in analytes if catalog[a].lod is not None]
    baselines = spec.baseline_score_columns()
    numeric = baselines + [c for c in spec.numeric_covariates() if c not in baselines]
    categorical = spec.categorical_covariates()
    clash = set(analytes) & set(numeric + categorical)
    if clash:
        raise ValueError(f"covariate names clash with lab analyte keys: {sorted(clash)}")

    parse = LabParser(
        labs=tuple((a, lab.column, lab.unit) for a, lab in spec.labs.items()),
        numeric=tuple(numeric),
        categorical=tuple(categorical),
        catalog_path=catalog_path,
        declared=declared,
    )
    # A ColumnTransformer silently skips a part with no columns (it is never fitted), so parts are
    # added only when they have inputs; readers look parts up by name and treat absence as "none".
    impute_parts: list[tuple[str, Any, list[str]]] = []
    if analytes:
        impute_parts.append(("labs", MedianImputer(add_indicator=True), analytes))
    if numeric:
        impute_parts.append(("numeric", MedianImputer(add_indicator=False), numeric))
    if categorical:
        impute_parts.append(("categorical", SimpleImputer(strategy="most_frequent"), categorical))
    if with_lod:
        impute_parts.append(("flags", "passthrough", [f"{a}_below_lod" for a in with_lod]))
    impute = ColumnTransformer(impute_parts, verbose_feature_names_out=False)

    roles = spec.roles
    context = [c for c in (roles.age, roles.sex) if c]
    dominance = spec.cognitive_dominance
    symptom_inputs = list(dict.fromkeys(baselines + ([dominance.memory, dominance.pain] if dominance else [])))
    feature_parts: list[tuple[str, Any, list[str]]] = []
    if inflammation:
        feature_parts.append(
            (
                "inflammation",
                InflammationFeatures(
                    analytes=tuple(inflammation), age=roles.age, sex=roles.sex, female=roles.female, catalog_path=catalog_path,
                    declared=declared,
                ),
                inflammation + context,
            )
        )
    if autoantibody:
        feature_parts.append(
            ("autoantibody", AutoantibodyFeatures(analytes=tuple(autoantibody), catalog_path=catalog_path, declared=declared), autoantibody)
        )
    if ungrouped:
        feature_parts.append(("other_labs", LabFeatures(analytes=tuple(ungrouped), catalog_path=catalog_path, declared=declared), ungrouped))
    if symptom_inputs:
        feature_parts.append(
            (
                "symptoms",
                SymptomFeatures(
                    scores=tuple(baselines),
                    memory=dominance.memory if dominance else None,
                    pain=dominance.pain if dominance else None,
                ),
                symptom_inputs,
            )
        )
    other_numeric = [c for c in numeric if c not in baselines]
    if other_numeric:
        feature_parts.append(("covariates", "passthrough", other_numeric))
    if categorical:
        # The spec's levels fix the categories (reference level first), so a binary covariate is one
        # 0/1 indicator of its other level and every model sees the same columns, whatever a fold holds.
        levels = [spec.covariates[c].encoding_order() for c in categorical]
        feature_parts.append(
            (
                "categorical",
                OneHotEncoder(categories=levels, drop="if_binary", handle_unknown="ignore", sparse_output=False),
                categorical,
            )
        )
    flags = [f"{a}_below_lod" for a in with_lod] + [f"{a}_missing" for a in analytes]
    if flags:
        feature_parts.append(("flags", "passthrough", flags))
    features = ColumnTransformer(feature_parts, verbose_feature_names_out=False)

    pipeline = Pipeline([("parse", parse), ("impute", impute), ("features", features)])
    return pipeline.set_output(transform="pandas")


def fitted_parts(column_transformer: ColumnTransformer) -> dict[str, tuple[Any, list[str]]]:
    """Name -> (fitted transformer, its input columns) of a fitted ColumnTransformer (absent parts are absent)."""
    return {name: (est, list(cols)) for name, est, cols in column_transformer.transformers_ if name != "remainder"}


def categorical_levels(pipeline: Pipeline, spec: DatasetSpec) -> dict[str, tuple[list[str], list[str]]]:
    """Column -> (all level codes, the codes that have an indicator) of the fitted one-hot encoder."""
    parts = fitted_parts(pipeline.named_steps["features"])
    if "categorical" not in parts:
        return {}
    encoder, columns = parts["categorical"]
    out = {}
    for j, (column, levels) in enumerate(zip(columns, encoder.categories_, strict=True)):
        dropped = encoder.drop_idx_[j] if encoder.drop_idx_ is not None else None
        shown = [str(level) for k, level in enumerate(levels) if dropped is None or k != dropped]
        out[column] = ([str(level) for level in levels], shown)
    return out


def feature_info(pipeline: Pipeline, spec: DatasetSpec) -> dict[str, FeatureInfo]:
    """Readable description, unit and source of every output feature of a fitted pipeline."""
    parse: LabParser = pipeline.named_steps["parse"]
    catalog = parse.catalog_
    features: ColumnTransformer = pipeline.named_steps["features"]
    info: dict[str, FeatureInfo] = {}
    for transformer, _ in fitted_parts(features).values():
        if hasattr(transformer, "feature_info"):
            info.update({f.name: f for f in transformer.feature_info()})
    for column, (levels, shown) in categorical_levels(pipeline, spec).items():
        cov = spec.covariates[column]
        label = cov.label or column
        names = cov.level_names()
        reference = f" (vs {names.get(levels[0], levels[0])})" if len(levels) == 2 else ""
        for level in shown:
            info[f"{column}_{level}"] = FeatureInfo(
                f"{column}_{level}",
                f"{label}: {names.get(level, level)}{reference} (1 = yes)",
                "0/1",
                column,
                "covariate",
                f"{label}: {names.get(level, level)}",
            )
    for column in spec.baseline_score_columns():
        outcome = spec.baseline_outcome(column)
        label = spec.baseline_label(column)
        short = label if outcome.baseline_label else label.split(" (")[0]
        info[column] = FeatureInfo(column, label, outcome.unit, column, "symptom", short)
    if spec.cognitive_dominance is not None:
        info["cognitive_dominance"] = FeatureInfo(
            "cognitive_dominance",
            "Cognitive dominance: baseline memory problems minus pain (points; > 0 memory dominates)",
            "points",
            None,
            "symptom",
            "Cognitive dominance (memory minus pain)",
        )
    for column, cov in spec.covariates.items():
        if cov.kind == "numeric":
            group = "symptom" if column.endswith("_baseline") else "covariate"
            info[column] = FeatureInfo(column, cov.label or column, cov.unit, column, group, (cov.label or column).split(" (")[0])
    for analyte in spec.labs:
        lab = catalog[analyte]
        info[f"{analyte}_missing"] = FeatureInfo(
            f"{analyte}_missing", f"{lab.label} not measured, imputed (1 = yes)", "0/1", analyte, "data quality", f"{lab.label} missing"
        )
        if lab.lod is not None:
            info[f"{analyte}_below_lod"] = FeatureInfo(
                f"{analyte}_below_lod",
                f"{lab.label} below the detection limit ({lab.lod:g} {lab.unit}; 1 = yes)",
                "0/1",
                analyte,
                "data quality",
                f"{lab.label} below detection",
            )
    names = list(pipeline.get_feature_names_out())
    missing = [n for n in names if n not in info]
    if missing:
        raise RuntimeError(f"features without a description: {missing}")
    return {n: info[n] for n in names}


def feature_sources(pipeline: Pipeline, spec: DatasetSpec, X: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Which input each output feature comes from, for explanations with one driver per input.

    Returns, per feature, ``{source: share}``: share 1.0 for a feature with one
    source (a lab's log value, its flags and band; a covariate; the levels of a
    categorical), and per-row arrays for composite features (the inflammation
    index, markers above reference, ratios, autoantibody burden, cognitive
    dominance), whose SHAP credit is split by each input's part of the
    composite's deviation from its training average. Sources are analyte keys
    for labs and column names otherwise.
    """
    return sources_from_imputed(pipeline, feature_info(pipeline, spec), pipeline[:-1].transform(X))


def sources_from_imputed(pipeline: Pipeline, info: dict[str, FeatureInfo], imputed: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The core of :func:`feature_sources`, on the imputed columns (a frame or a mapping of arrays)."""
    composites: dict[str, dict[str, np.ndarray]] = {}
    for _, transformer, columns in pipeline.named_steps["features"].transformers_:
        if hasattr(transformer, "source_shares"):
            composites.update(transformer.source_shares({c: imputed[c] for c in columns}))
    out: dict[str, dict[str, Any]] = {}
    for name, meta in info.items():
        if name in composites:
            out[name] = composites[name]
        else:
            out[name] = {meta.source or name: 1.0}
    return out


@dataclass(frozen=True)
class InputWarning:
    """Something a clinician should know about one patient's input."""

    code: str  # imputed, below_detection_limit, outside_training_range, unseen_category
    field: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def lab_issues(pipeline: Pipeline, X: pd.DataFrame) -> dict[Any, list[LabIssue]]:
    """Lab cells that cannot be used, grouped by row label (rows absent have none)."""
    _, issues = pipeline.named_steps["parse"].parse(X)
    grouped: dict[Any, list[LabIssue]] = {}
    for issue in issues:
        grouped.setdefault(issue.row, []).append(issue)
    return grouped


def input_warnings(pipeline: Pipeline, spec: DatasetSpec, X: pd.DataFrame) -> list[list[InputWarning]]:
    """Per row: imputed values, values below detection limit, outside the training range, unseen categories."""
    parsed, _ = pipeline.named_steps["parse"].parse(X)
    raw = {c: X[c].to_numpy(dtype=object) for c in X.columns}
    return warnings_from_parsed(pipeline, spec, {c: parsed[c].to_numpy() for c in parsed.columns}, len(X), raw)


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
    pipeline: Pipeline, spec: DatasetSpec, parsed: Mapping[str, np.ndarray], n: int, raw: Mapping[str, Sequence[Any]] | None = None
) -> list[list[InputWarning]]:
    """The core of :func:`input_warnings`, on the parser's output columns (``LabParser.parse_columns``).

    ``raw``: the input columns as given; a censored lab result (``negative``, ``<x``) is then outside
    the training range only when every value it stands for is (without ``raw``, its number is checked).
    """
    parse: LabParser = pipeline.named_steps["parse"]
    catalog = parse.catalog_
    transformers = fitted_parts(pipeline.named_steps["impute"])
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
            if _missing_code(value):
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
    pipeline: Pipeline, spec: DatasetSpec, parsed: Mapping[str, np.ndarray], n: int, raw: Mapping[str, Sequence[Any]] | None = None
) -> list[WarningItem]:
    """:func:`warnings_from_parsed` as masks over the batch: a row's warnings are the items whose ``rows`` hold it, in order.

    The same checks and texts with array operations; Python runs only for the
    rows a value-dependent message concerns (a value outside the training
    range, below the detection limit) and once per distinct unseen category.
    For a file of 10^5 patients (``responders predict``) instead of a list of
    objects per patient; tests/test_scoring_plan.py checks both give the same warnings.
    """
    parse: LabParser = pipeline.named_steps["parse"]
    catalog = parse.catalog_
    transformers = fitted_parts(pipeline.named_steps["impute"])
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
        missing = np.fromiter((_missing_code(v) for v in values), dtype=bool, count=n) if n < 256 else _missing_codes(values)
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


def _missing_codes(values: np.ndarray) -> np.ndarray:
    """:func:`_missing_code` over an object array: None, or a float NaN."""
    missing = pd.isna(values)
    if not missing.any():
        return missing
    kinds = np.fromiter((v is None or isinstance(v, float) for v in values[missing]), dtype=bool, count=int(missing.sum()))
    out = np.zeros(len(values), dtype=bool)
    out[np.flatnonzero(missing)[kinds]] = True
    return out


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


def _missing_code(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


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


class FeaturePlan:
    """A fitted feature pipeline compiled for scoring: raw columns -> parsed values -> imputed columns -> features.

    Every step runs the fitted transformer's own NumPy core (``parse_columns``,
    ``fill``, ``compute``, ``source_shares``); scikit-learn's stock steps are
    read from their fitted attributes: the categorical ``SimpleImputer``
    (``statistics_``) and the ``OneHotEncoder`` (``categories_``, ``drop_idx_``,
    unknown levels as all zeros). ``transform`` equals ``pipeline.transform``
    (tests/test_scoring_plan.py). Parsing is separate, so that several
    outcomes' plans can share one parse of a request.
    """

    def __init__(self, pipeline: Pipeline, spec: DatasetSpec):
        self.pipeline = pipeline
        self.spec = spec
        self.parser: LabParser = pipeline.named_steps["parse"]
        self.impute_parts = [self._part(name, est, cols) for name, est, cols in pipeline.named_steps["impute"].transformers_ if name != "remainder"]
        self.feature_parts = [self._part(name, est, cols) for name, est, cols in pipeline.named_steps["features"].transformers_ if name != "remainder"]
        self.names = [str(n) for n in pipeline.get_feature_names_out()]
        self.info = feature_info(pipeline, spec)

    @staticmethod
    def _part(name: str, est: Any, columns: Sequence[str]) -> tuple[str, Any, list[str], list[str]]:
        columns = list(columns)
        if isinstance(est, FunctionTransformer) and est.func is None:
            est = "passthrough"  # a fitted ColumnTransformer stands an identity FunctionTransformer in for "passthrough"
        if isinstance(est, str):
            if est != "passthrough":
                raise ValueError(f"cannot compile pipeline part {name!r}: {est!r}")
            return name, est, columns, columns
        if not isinstance(est, (MedianImputer, SimpleImputer, OneHotEncoder)) and not hasattr(est, "compute"):
            raise ValueError(f"cannot compile pipeline part {name!r}: {type(est).__name__} has no NumPy core")
        return name, est, columns, [str(c) for c in est.get_feature_names_out(columns)]

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
        return warnings_from_parsed(self.pipeline, self.spec, parsed, n, raw)

    def warning_items(self, parsed: Mapping[str, np.ndarray], n: int, raw: Mapping[str, Sequence[Any]] | None = None) -> list[WarningItem]:
        return warning_items(self.pipeline, self.spec, parsed, n, raw)

    def sources(self, imputed: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
        return sources_from_imputed(self.pipeline, self.info, imputed)

    @staticmethod
    def _run(parts, columns: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for _, est, inputs, names in parts:
            if isinstance(est, str):  # passthrough
                out.update({c: columns[c] for c in inputs})
            elif isinstance(est, MedianImputer):
                filled = est.fill(_stack([columns[c] for c in inputs], n))
                out.update({name: filled[:, j] for j, name in enumerate(names)})
            elif isinstance(est, SimpleImputer):
                out.update({name: _fill_codes(columns[c], fill) for name, c, fill in zip(names, inputs, est.statistics_, strict=True)})
            elif isinstance(est, OneHotEncoder):
                out.update(_one_hot(est, [columns[c] for c in inputs], names))
            else:
                out.update(est.compute({c: columns[c] for c in inputs}))
        return out


def _stack(columns: list[Any], n: int) -> np.ndarray:
    """Columns as an (n, k) float array (``np.column_stack`` costs more than the arithmetic for one patient)."""
    out = np.empty((n, len(columns)))
    for j, column in enumerate(columns):
        out[:, j] = column
    return out


def _fill_codes(values: np.ndarray, fill: Any) -> np.ndarray:
    """``SimpleImputer(strategy="most_frequent")`` on one object column: missing codes (NaN) become ``fill``."""
    out = np.asarray(values, dtype=object).copy()
    out[_missing_codes(out) if len(out) >= 256 else [_missing_code(v) for v in out]] = fill
    return out


def _one_hot(encoder: OneHotEncoder, columns: list[np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """``OneHotEncoder.transform`` (dense, ``handle_unknown="ignore"``) from its fitted categories and dropped levels."""
    out, k = {}, 0
    for j, (values, levels) in enumerate(zip(columns, encoder.categories_, strict=True)):
        dropped = encoder.drop_idx_[j] if encoder.drop_idx_ is not None else None
        values = np.asarray(values, dtype=object)
        for i, level in enumerate(levels):
            if dropped is not None and i == dropped:
                continue
            out[names[k]] = (values == level).astype(float)
            k += 1
    return out
