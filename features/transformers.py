"""scikit-learn transformers for inflammation, autoantibody and symptom features.

Conventions (scikit-learn's developer guide): ``__init__`` stores parameters
only, learned state ends in ``_``, every transformer has
``get_feature_names_out`` and returns pandas frames, nothing global. The domain
transformers need named columns (they are assembled by
:func:`features.pipeline.build_feature_pipeline`); the generic numeric ones
(:class:`MedianImputer`) accept any numeric array and pass scikit-learn's
estimator checks.

Each transformer's arithmetic is a NumPy core on a mapping of column name ->
array (``parse_columns``, ``fill``, ``compute``, ``source_shares``): its pandas
``transform`` calls that core, and so does the compiled scoring plan
(``features.pipeline.FeaturePlan``), which skips scikit-learn's per-call
validation and pandas for a single patient. One implementation, two callers.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from features.catalog import Analyte, LabCatalog, load_catalog
from features.codes import level_key as _level_key
from features.labs import LabIssue, is_missing, parse_lab_cells, text_array

# Markers that make up the composite inflammation index and the count above
# reference (IL-10 is anti-inflammatory and lymphocytes fall in inflammation,
# so both stay out of the index).
INDEX_MARKERS = ("crp", "esr", "il6", "il8", "tnfa", "il1b", "neutrophils")
CRP_BANDS = (1.0, 3.0, 10.0)  # mg/L: < 1 low, 1-3 average, 3-10 high, > 10 acute (AHA/CDC)
EPS = 1e-9


@dataclass(frozen=True)
class FeatureInfo:
    """What a feature means, for clinicians: shown in the API and the reports."""

    name: str
    description: str
    unit: str = ""
    source: str | None = None  # the input column (or analyte) the feature is derived from
    group: str = "other"  # inflammation, autoantibody, lab (a lab in no group), symptom, covariate, data quality
    label: str = ""  # short name for sentences ("Inflammation index"); empty: use the description

    @property
    def short(self) -> str:
        return self.label or self.description


def shares(parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each source's share of a composite feature's deviation from its training average, per row.

    ``parts`` maps each source to its additive part of the deviation (e.g. a
    marker's z-score divided by the number of markers); shares sum to 1 per
    row. Where the parts cancel (the composite sits at its average), the
    sources share equally: the composite then contributes almost nothing.
    """
    names = list(parts)
    matrix = np.column_stack([np.asarray(parts[k], dtype=float) for k in names])
    total = matrix.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(np.abs(total)[:, None] > 1e-9, matrix / total[:, None], 1.0 / len(names))
    return {name: out[:, j] for j, name in enumerate(names)}


def _row_number(row: Any) -> str:
    """A row as people and ``responders validate`` count them: data rows from 1 (a position 0 is row 1)."""
    return str(int(row) + 1) if isinstance(row, (int, np.integer)) else repr(row)


class LabParseError(ValueError):
    """One or more input cells (labs, numeric covariates) could not be used; ``issues`` names each row, column and value.

    Rows are counted from 1, as ``responders validate`` counts data rows (the header not counted).
    """

    def __init__(self, issues: list[LabIssue]):
        self.issues = issues
        shown = "; ".join(f"row {_row_number(i.row)}: {i.message()}" for i in issues[:10])
        more = f" (and {len(issues) - 10} more)" if len(issues) > 10 else ""
        super().__init__(f"{len(issues)} input value(s) cannot be used (rows counted from 1): {shown}{more}")


def _catalog(path: str | None, declared: Sequence[Analyte] = ()) -> LabCatalog:
    """The catalog at ``path`` (None: the packaged one) with a trial's declared analytes added."""
    return load_catalog(path).extended({a.key: a for a in declared or ()})


def _floats(columns: Mapping[str, Any], name: str) -> np.ndarray:
    """A column as a float array, from a DataFrame or a mapping of arrays."""
    return np.asarray(columns[name], dtype=float)


class LabParser(TransformerMixin, BaseEstimator):
    """Raw trial rows -> canonical lab values, below-LOD flags and typed covariates.

    Parameters
    ----------
    labs : tuple of (analyte, column, unit)
        Lab columns of the dataset spec; ``unit`` None means the catalog's
        canonical unit. A ``<column>_unit`` input column, when present, gives a
        unit per row.
    numeric : tuple of str
        Numeric input columns (coerced to float; non-numbers become missing).
    categorical : tuple of str
        Categorical input columns, as canonical level codes (text; the number 1,
        the text "1" and "1.0" are the same code, see ``core.spec.level_key``).
    catalog_path : str or None
        Lab catalog YAML; None uses the packaged catalog.
    declared : tuple of Analyte
        Labs the trial's spec declares (added to the catalog).
    """

    def __init__(self, labs=(), numeric=(), categorical=(), catalog_path=None, declared=()):
        self.labs = labs
        self.numeric = numeric
        self.categorical = categorical
        self.catalog_path = catalog_path
        self.declared = declared

    def fit(self, X: pd.DataFrame, y=None):
        self.catalog_ = _catalog(self.catalog_path, self.declared)
        missing = [a for a, _, _ in self.labs if a not in self.catalog_]
        if missing:
            raise ValueError(f"labs missing from the catalog: {missing}")
        self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        # Which codes training saw: a level the spec allows but training never saw gets a warning at prediction.
        self.levels_seen_ = {
            column: sorted({c for c in map(_level_key, X[column]) if c is not None}) if column in X.columns else []
            for column in self.categorical
        }
        return self

    def input_columns(self) -> list[str]:
        """The raw columns the parser reads (a lab's ``<column>_unit`` included)."""
        columns = [*self.numeric, *self.categorical]
        for _, column, _ in self.labs:
            columns += [column, f"{column}_unit"]
        return columns

    def parse(self, X: pd.DataFrame) -> tuple[pd.DataFrame, list[LabIssue]]:
        """Parse without raising: returns the frame (bad cells as NaN) and the issues."""
        columns = {c: X[c] if c in self.numeric else X[c].to_numpy(dtype=object) for c in self.input_columns() if c in X.columns}
        out, issues = self.parse_columns(columns, len(X), X.index)
        return pd.DataFrame(out, index=X.index), issues

    def parse_columns(
        self, columns: Mapping[str, Sequence[Any]], n: int, rows: Sequence[Any] | None = None
    ) -> tuple[dict[str, np.ndarray], list[LabIssue]]:
        """The parser's core: raw columns (absent ones are missing) -> parsed arrays and the issues.

        ``rows`` names the rows in the issues (a frame's index; default positions).
        Output order: numeric, categorical, labs, then each lab's below-LOD flag.
        """
        check_is_fitted(self, "catalog_")
        rows = rows if rows is not None else range(n)
        out: dict[str, np.ndarray] = {}
        issues: list[LabIssue] = []
        for column in self.numeric:
            if column not in columns:
                out[column] = np.full(n, np.nan)
                continue
            values = columns[column]
            out[column], bad = _numbers(values)
            cells = values.to_numpy(dtype=object) if isinstance(values, pd.Series) else values
            issues.extend(LabIssue(rows[i], column, column, cells[i], "not a number") for i in bad)
        for column in self.categorical:
            values = columns[column] if column in columns else [None] * n
            codes = _level_keys(values)
            out[column] = np.array([np.nan if c is None else c for c in codes], dtype=object)
        flags: dict[str, np.ndarray] = {}
        for analyte, column, unit in self.labs:
            if column in columns:
                value, below_lod, found = parse_lab_cells(
                    columns[column], self.catalog_[analyte], column, unit, columns.get(f"{column}_unit"), rows
                )
                issues.extend(found)
                out[analyte], flags[f"{analyte}_below_lod"] = value, below_lod
            else:
                out[analyte], flags[f"{analyte}_below_lod"] = np.full(n, np.nan), np.zeros(n)
        return {**out, **flags}, issues

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        frame, issues = self.parse(X)
        if issues:
            raise LabParseError(issues)
        return frame

    def get_feature_names_out(self, input_features=None):
        names = list(self.numeric) + list(self.categorical) + [a for a, _, _ in self.labs]
        names += [f"{a}_below_lod" for a, _, _ in self.labs]
        return np.asarray(names, dtype=object)


def _level_keys(values: Sequence[Any]) -> list[str | None]:
    """``_level_key`` of every cell; a long column of text is keyed once per distinct text (Arrow's dictionary encoding)."""
    arr = text_array(values)
    if arr is None:
        return [_level_key(v) for v in values]
    encoded = arr.dictionary_encode()
    keys = [_level_key(v) for v in encoded.dictionary.to_pylist()]
    index = encoded.indices.fill_null(len(keys)).to_numpy(zero_copy_only=False)  # a missing cell: the None after the keys
    return np.asarray([*keys, None], dtype=object)[index].tolist()


def _numbers(values: pd.Series | Sequence[Any]) -> tuple[np.ndarray, list[int]]:
    """Floats from numbers or numeric text (decimal comma allowed); positions of cells that are not numbers."""
    if isinstance(values, pd.Series):
        if values.dtype.kind in "iufb":
            return values.to_numpy(dtype=float, na_value=np.nan), []
        values = values.to_numpy(dtype=object)
    cells = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    if cells.dtype.kind in "iufb":
        return cells.astype(float), []
    if all(v is None or (isinstance(v, (float, int, np.floating, np.integer)) and not isinstance(v, (bool, np.bool_))) for v in cells):
        return np.array([np.nan if v is None else float(v) for v in cells], dtype=float), []  # numbers already (JSON, Parquet)
    text = pd.Series(cells, dtype=object).map(lambda v: v.strip().replace(",", ".") if isinstance(v, str) else v)
    numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    bad = [i for i, (raw, number) in enumerate(zip(cells, numbers, strict=True)) if np.isnan(number) and not is_missing(raw)]
    return numbers, bad


class MedianImputer(TransformerMixin, BaseEstimator):
    """Median imputation learned on training data, with optional missingness indicators.

    Also learns each column's training range, so callers can flag values
    outside what the model saw (:meth:`out_of_range`).

    Parameters
    ----------
    add_indicator : bool
        Append a ``<name>_missing`` 0/1 column for every input column.
    """

    def __init__(self, add_indicator=True):
        self.add_indicator = add_indicator

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan", reset=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column has no median
            median = np.nanmedian(X, axis=0)
            self.min_ = np.nanmin(X, axis=0)
            self.max_ = np.nanmax(X, axis=0)
        self.statistics_ = np.where(np.isnan(median), 0.0, median)
        return self

    def transform(self, X):
        check_is_fitted(self, "statistics_")
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan", reset=False, copy=True)
        return self.fill(X)

    def fill(self, X: np.ndarray) -> np.ndarray:
        """The core of :meth:`transform` on a float array in the fitted column order (filled in place)."""
        missing = np.isnan(X)
        X[missing] = np.take(self.statistics_, np.nonzero(missing)[1])
        if self.add_indicator:
            X = np.hstack([X, missing.astype(np.float64)])
        return X

    def out_of_range(self, X) -> np.ndarray:
        """Boolean mask of observed values outside the training range."""
        check_is_fitted(self, "statistics_")
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan", reset=False)
        return self.outside(X)

    def outside(self, X: np.ndarray) -> np.ndarray:
        """The core of :meth:`out_of_range` on a float array in the fitted column order."""
        with np.errstate(invalid="ignore"):
            return (X < self.min_) | (X > self.max_)

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "statistics_")
        if input_features is None:
            input_features = getattr(self, "feature_names_in_", None)
        if input_features is None:
            input_features = [f"x{i}" for i in range(self.n_features_in_)]
        names = [str(f) for f in input_features]
        if self.add_indicator:
            names += [f"{f}_missing" for f in names]
        return np.asarray(names, dtype=object)


def _upper_reference(analyte: Analyte, age: np.ndarray | None, female: np.ndarray | None) -> np.ndarray | float:
    """Upper reference limit; ESR uses Miller's age/sex rule where age and sex are known."""
    if analyte.reference_rule == "westergren_age_sex" and age is not None and female is not None:
        rule = np.where(female, (age + 10.0) / 2.0, age / 2.0)
        return np.where(np.isfinite(rule), rule, analyte.upper_reference)
    return analyte.upper_reference if analyte.upper_reference is not None else np.inf


class InflammationFeatures(TransformerMixin, BaseEstimator):
    """Log markers, CRP risk bands, ESR against its age/sex limit, ratios, a composite index.

    Parameters
    ----------
    analytes : tuple of str
        Inflammation analytes present (catalog keys), as columns of the input.
    age, sex : str or None
        Input columns for the ESR age/sex-adjusted upper limit.
    female : str or None
        Level of ``sex`` meaning female.
    catalog_path : str or None
        Lab catalog YAML; None uses the packaged catalog.
    declared : tuple of Analyte
        Labs the trial's spec declares (added to the catalog).
    """

    def __init__(self, analytes=(), age=None, sex=None, female=None, catalog_path=None, declared=()):
        self.analytes = analytes
        self.age = age
        self.sex = sex
        self.female = female
        self.catalog_path = catalog_path
        self.declared = declared

    def _logs(self, X: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {f"{a}_log": np.log(np.maximum(_floats(X, a), EPS)) for a in self.analytes}

    def fit(self, X: pd.DataFrame, y=None):
        self.catalog_ = _catalog(self.catalog_path, self.declared)
        self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        self.index_markers_ = [a for a in INDEX_MARKERS if a in self.analytes]
        logs = self._logs(X)
        # The composite index is scaled on training data only; transform reuses these.
        self.index_mean_ = {a: float(np.nanmean(logs[f"{a}_log"])) for a in self.index_markers_}
        self.index_scale_ = {a: float(np.nanstd(logs[f"{a}_log"])) or 1.0 for a in self.index_markers_}
        # Training averages of the composite features' parts, for splitting a composite's SHAP credit.
        self.log_mean_ = {a: float(np.nanmean(logs[f"{a}_log"])) for a in self.analytes}
        age, female = self._age_sex(X)
        self.above_rate_ = {
            a: float(np.mean(_floats(X, a) > _upper_reference(self.catalog_[a], age, female)))
            for a in self.index_markers_
        }
        return self

    def _age_sex(self, X: Mapping[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
        age = _floats(X, self.age) if self.age and self.age in X else None
        female = np.asarray(X[self.sex], dtype=object).astype(str) == str(self.female) if self.sex and self.sex in X else None
        return age, female

    def source_shares(self, X: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
        """For each composite feature, each source lab's share of its deviation from the training average."""
        check_is_fitted(self, "log_mean_")
        logs = self._logs(X)
        dev = {a: logs[f"{a}_log"] - self.log_mean_[a] for a in self.analytes}
        have = set(self.analytes)
        out: dict[str, dict[str, np.ndarray]] = {}
        if {"il6", "il10"} <= have:
            out["il6_il10_ratio_log"] = shares({"il6": dev["il6"], "il10": -dev["il10"]})
        if {"neutrophils", "lymphocytes"} <= have:
            out["nlr"] = shares({"neutrophils": dev["neutrophils"], "lymphocytes": -dev["lymphocytes"]})
        if self.index_markers_:
            out["inflammation_index"] = shares({a: dev[a] / self.index_scale_[a] for a in self.index_markers_})
            age, female = self._age_sex(X)
            out["markers_above_reference"] = shares(
                {
                    a: (_floats(X, a) > _upper_reference(self.catalog_[a], age, female)) - self.above_rate_[a]
                    for a in self.index_markers_
                }
            )
        return out

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(self.compute(X), index=X.index)

    def compute(self, X: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The core of :meth:`transform`: input columns (a frame or a mapping of arrays) -> feature arrays."""
        check_is_fitted(self, "index_mean_")
        out = self._logs(X)
        age, female = self._age_sex(X)
        have = set(self.analytes)
        if "crp" in have:
            out["crp_band"] = np.searchsorted(CRP_BANDS, _floats(X, "crp"), side="right").astype(float)
        if "esr" in have:
            limit = _upper_reference(self.catalog_["esr"], age, female)
            out["esr_uln_ratio"] = _floats(X, "esr") / limit
            out["esr_elevated"] = (out["esr_uln_ratio"] > 1.0).astype(float)
        if {"il6", "il10"} <= have:
            out["il6_il10_ratio_log"] = out["il6_log"] - out["il10_log"]
        if {"neutrophils", "lymphocytes"} <= have:
            out["nlr"] = _floats(X, "neutrophils") / np.maximum(_floats(X, "lymphocytes"), 0.01)
        if self.index_markers_:
            z = [(out[f"{a}_log"] - self.index_mean_[a]) / self.index_scale_[a] for a in self.index_markers_]
            out["inflammation_index"] = np.mean(np.column_stack(z), axis=1)
            above = [_floats(X, a) > _upper_reference(self.catalog_[a], age, female) for a in self.index_markers_]
            out["markers_above_reference"] = np.sum(np.column_stack(above), axis=1).astype(float)
        return out

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "index_mean_")
        have = set(self.analytes)
        names = [f"{a}_log" for a in self.analytes]
        if "crp" in have:
            names.append("crp_band")
        if "esr" in have:
            names += ["esr_uln_ratio", "esr_elevated"]
        if {"il6", "il10"} <= have:
            names.append("il6_il10_ratio_log")
        if {"neutrophils", "lymphocytes"} <= have:
            names.append("nlr")
        if self.index_markers_:
            names += ["inflammation_index", "markers_above_reference"]
        return np.asarray(names, dtype=object)

    def feature_info(self) -> list[FeatureInfo]:
        check_is_fitted(self, "index_mean_")
        info = []
        for a in self.analytes:
            lab = self.catalog_[a]
            info.append(
                FeatureInfo(f"{a}_log", f"{lab.label} (natural log of {lab.unit})", f"log {lab.unit}", a, "inflammation", lab.label)
            )
        known = {
            "crp_band": ("CRP risk band: 0 < 1, 1 = 1-3, 2 = 3-10, 3 > 10 mg/L (acute)", "band", "crp", "CRP band"),
            "esr_uln_ratio": ("ESR relative to its age/sex-adjusted upper limit", "ratio", "esr", "ESR / upper limit"),
            "esr_elevated": ("ESR above its age/sex-adjusted upper limit (1 = yes)", "0/1", "esr", "ESR elevated"),
            "il6_il10_ratio_log": (
                "IL-6 / IL-10 ratio (natural log): pro- vs anti-inflammatory balance", "log ratio", None, "IL-6/IL-10 ratio (log)"
            ),
            "nlr": ("Neutrophil-to-lymphocyte ratio", "ratio", None, "Neutrophil-to-lymphocyte ratio"),
            "inflammation_index": (
                "Composite inflammation index: mean z-score of log "
                + ", ".join(self.catalog_[a].label for a in self.index_markers_)
                + " (scaled on training data)",
                "z",
                None,
                "Inflammation index",
            ),
            "markers_above_reference": (
                "Number of inflammation markers above their upper reference limit", "count", None, "Markers above reference"
            ),
        }
        for name in self.get_feature_names_out()[len(self.analytes):]:
            description, unit, source, label = known[name]
            info.append(FeatureInfo(name, description, unit, source, "inflammation", label))
        return info


class AutoantibodyFeatures(TransformerMixin, BaseEstimator):
    """Positivity flags at catalog cut-offs, ANA log2 titre, autoantibody burden, anti-SGC index.

    Parameters
    ----------
    analytes : tuple of str
        Autoantibody analytes present (catalog keys), as columns of the input.
    catalog_path : str or None
        Lab catalog YAML; None uses the packaged catalog.
    declared : tuple of Analyte
        Labs the trial's spec declares (added to the catalog).
    """

    def __init__(self, analytes=(), catalog_path=None, declared=()):
        self.analytes = analytes
        self.catalog_path = catalog_path
        self.declared = declared

    def fit(self, X: pd.DataFrame, y=None):
        self.catalog_ = _catalog(self.catalog_path, self.declared)
        self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        self.positive_analytes_ = [a for a in self.analytes if self.catalog_[a].positive_at is not None]
        self.positive_rate_ = {a: float(np.mean(_floats(X, a) >= self.catalog_[a].positive_at)) for a in self.positive_analytes_}
        return self

    def source_shares(self, X: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
        """The autoantibody burden's credit split by each antibody's positivity against its training rate."""
        check_is_fitted(self, "positive_rate_")
        if not self.positive_analytes_:
            return {}
        parts = {
            a: (_floats(X, a) >= self.catalog_[a].positive_at) - self.positive_rate_[a] for a in self.positive_analytes_
        }
        return {"autoantibody_burden": shares(parts)}

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(self.compute(X), index=X.index)

    def compute(self, X: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The core of :meth:`transform`: input columns (a frame or a mapping of arrays) -> feature arrays."""
        check_is_fitted(self, "positive_analytes_")
        out: dict[str, np.ndarray] = {}
        for a in self.analytes:
            lab = self.catalog_[a]
            values = _floats(X, a)
            if lab.kind == "titre":
                out[f"{a}_log2_titre"] = np.log2(np.maximum(values, EPS) / lab.reference_dilution)
            elif a == "anti_sgc":
                out["anti_sgc_index"] = values
            else:
                out[f"{a}_log"] = np.log(np.maximum(values, EPS))
        for a in self.positive_analytes_:
            out[f"{a}_positive"] = (_floats(X, a) >= self.catalog_[a].positive_at).astype(float)
        if self.positive_analytes_:
            out["autoantibody_burden"] = np.sum([out[f"{a}_positive"] for a in self.positive_analytes_], axis=0)
        return out

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "positive_analytes_")
        names = []
        for a in self.analytes:
            lab = self.catalog_[a]
            names.append(f"{a}_log2_titre" if lab.kind == "titre" else "anti_sgc_index" if a == "anti_sgc" else f"{a}_log")
        names += [f"{a}_positive" for a in self.positive_analytes_]
        if self.positive_analytes_:
            names.append("autoantibody_burden")
        return np.asarray(names, dtype=object)

    def feature_info(self) -> list[FeatureInfo]:
        info = []
        for name in self.get_feature_names_out():
            if name == "autoantibody_burden":
                labels = ", ".join(self.catalog_[a].label for a in self.positive_analytes_)
                info.append(
                    FeatureInfo(
                        name, f"Autoantibody burden: number positive of {labels}", "count", None, "autoantibody", "Autoantibody burden"
                    )
                )
                continue
            a = name.removesuffix("_log2_titre").removesuffix("_positive").removesuffix("_index").removesuffix("_log")
            lab = self.catalog_[a]
            if name.endswith("_log2_titre"):
                text, unit = f"{lab.label} titre, log2 steps above 1:{lab.reference_dilution}", "log2 dilution"
            elif name.endswith("_positive"):
                cut = f"1:{lab.positive_at:g}" if lab.kind == "titre" else f"{lab.positive_at:g} {lab.unit}"
                text, unit = f"{lab.label} positive (>= {cut}; 1 = yes)", "0/1"
            elif name == "anti_sgc_index":
                text, unit = f"{lab.label} (IgG binding vs healthy-control mean)", lab.unit
            else:
                text, unit = f"{lab.label} (natural log of {lab.unit})", f"log {lab.unit}"
            info.append(FeatureInfo(name, text, unit, a, "autoantibody", lab.label))
        return info


class LabFeatures(TransformerMixin, BaseEstimator):
    """Labs in no feature group (a trial's declared liver panel, say): the value and its reference flags.

    Per analyte: the value in the catalog's canonical unit, ``<key>_above_reference``
    when the catalog gives an upper reference limit and ``<key>_below_reference``
    when it gives a lower one (0/1). The missing and below-detection-limit
    flags come from the pipeline's imputer, as for every lab.

    Parameters
    ----------
    analytes : tuple of str
        Ungrouped analytes present (catalog keys), as columns of the input.
    catalog_path : str or None
        Lab catalog YAML; None uses the packaged catalog.
    declared : tuple of Analyte
        Labs the trial's spec declares (added to the catalog).
    """

    def __init__(self, analytes=(), catalog_path=None, declared=()):
        self.analytes = analytes
        self.catalog_path = catalog_path
        self.declared = declared

    def fit(self, X: pd.DataFrame, y=None):
        self.catalog_ = _catalog(self.catalog_path, self.declared)
        self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(self.compute(X), index=X.index)

    def compute(self, X: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The core of :meth:`transform`: input columns (a frame or a mapping of arrays) -> feature arrays."""
        check_is_fitted(self, "catalog_")
        out: dict[str, np.ndarray] = {}
        for a in self.analytes:
            lab, values = self.catalog_[a], _floats(X, a)
            out[a] = values
            if lab.upper_reference is not None:
                out[f"{a}_above_reference"] = (values > lab.upper_reference).astype(float)
            if lab.lower_reference is not None:
                out[f"{a}_below_reference"] = (values < lab.lower_reference).astype(float)
        return out

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "catalog_")
        names = []
        for a in self.analytes:
            lab = self.catalog_[a]
            names.append(a)
            names += [f"{a}_above_reference"] if lab.upper_reference is not None else []
            names += [f"{a}_below_reference"] if lab.lower_reference is not None else []
        return np.asarray(names, dtype=object)

    def feature_info(self) -> list[FeatureInfo]:
        info = []
        for a in self.analytes:
            lab = self.catalog_[a]
            info.append(FeatureInfo(a, f"{lab.label} ({lab.unit})", lab.unit, a, "lab", lab.label))
            if lab.upper_reference is not None:
                info.append(FeatureInfo(
                    f"{a}_above_reference", f"{lab.label} above its upper reference limit ({lab.upper_reference:g} {lab.unit}; 1 = yes)",
                    "0/1", a, "lab", f"{lab.label} above reference",
                ))
            if lab.lower_reference is not None:
                info.append(FeatureInfo(
                    f"{a}_below_reference", f"{lab.label} below its lower reference limit ({lab.lower_reference:g} {lab.unit}; 1 = yes)",
                    "0/1", a, "lab", f"{lab.label} below reference",
                ))
        return info


class SymptomFeatures(TransformerMixin, BaseEstimator):
    """Baseline symptom scores and cognitive dominance (memory minus pain, points).

    Parameters
    ----------
    scores : tuple of str
        Baseline score columns, passed through.
    memory, pain : str or None
        Columns for cognitive dominance; positive values mean memory problems
        dominate pain.
    """

    def __init__(self, scores=(), memory=None, pain=None):
        self.scores = scores
        self.memory = memory
        self.pain = pain

    def fit(self, X: pd.DataFrame, y=None):
        self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)
        self.mean_ = {c: float(np.nanmean(X[c].to_numpy(dtype=float))) for c in X.columns}
        return self

    def source_shares(self, X: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
        """Cognitive dominance (memory minus pain) split between its two scores."""
        check_is_fitted(self, "mean_")
        if not (self.memory and self.pain):
            return {}
        memory = _floats(X, self.memory) - self.mean_[self.memory]
        pain = _floats(X, self.pain) - self.mean_[self.pain]
        return {"cognitive_dominance": shares({self.memory: memory, self.pain: -pain})}

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(self.compute(X), index=X.index)

    def compute(self, X: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The core of :meth:`transform`: input columns (a frame or a mapping of arrays) -> feature arrays."""
        check_is_fitted(self, "n_features_in_")
        out = {c: _floats(X, c) for c in self.scores}
        if self.memory and self.pain:
            out["cognitive_dominance"] = _floats(X, self.memory) - _floats(X, self.pain)
        return out

    def get_feature_names_out(self, input_features=None):
        names = list(self.scores)
        if self.memory and self.pain:
            names.append("cognitive_dominance")
        return np.asarray(names, dtype=object)
