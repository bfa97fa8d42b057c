"""The fitted feature transformers' NumPy cores, without scikit-learn.

Each transformer of the feature pipeline (``features.transformers``) is a
scikit-learn estimator whose arithmetic lives in a core class here: parsing
(``parse_columns``), imputation (``fill``, ``outside``), features
(``compute``) and SHAP credit (``source_shares``), on a mapping of column name
-> array. The estimator adds ``fit``, ``transform`` and scikit-learn's checks;
:meth:`detached <Detachable.core>` copies a fitted estimator's state into its
core, which is what the compiled scoring plan (``features.plan.FeaturePlan``)
holds. A plan can therefore be stored and loaded, and a file of patients scored
(``responders predict``), without importing scikit-learn or SciPy, which took
longer than scoring 10^5 patients. One implementation, three callers:
``transform``, the service's plan, the stored plan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.catalog import Analyte, LabCatalog, load_catalog
from features.codes import level_key as _level_key
from features.labs import LabIssue, is_missing, parse_lab_cells, text_array

# Markers that make up the composite inflammation index and the count above
# reference (IL-10 is anti-inflammatory and lymphocytes fall in inflammation,
# so both stay out of the index).
INDEX_MARKERS = ("crp", "esr", "il6", "il8", "tnfa", "il1b", "neutrophils")
CRP_BANDS = (1.0, 3.0, 10.0)  # mg/L: < 1 low, 1-3 average, 3-10 high, > 10 acute (AHA/CDC)
EPS = 1e-9


class NotFittedError(ValueError, AttributeError):
    """A core used before its estimator was fitted (the bases of scikit-learn's ``NotFittedError``)."""


def _fitted(core: Any, attribute: str) -> None:
    if not hasattr(core, attribute):
        raise NotFittedError(f"this {type(core).__name__} is not fitted yet: fit the feature pipeline first")


class Detachable:
    """A core class's link to its estimator: ``estimator.core()`` is the fitted state in the core class alone."""

    def core(self) -> Any:
        """This fitted estimator's state as an instance of its core class (no scikit-learn class in its pickle)."""
        cls = next(c for c in type(self).__mro__ if c.__module__ == __name__ and c is not Detachable and issubclass(c, Detachable))
        out = object.__new__(cls)
        out.__dict__.update(self.__dict__)
        return out


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


def _upper_reference(analyte: Analyte, age: np.ndarray | None, female: np.ndarray | None) -> np.ndarray | float:
    """Upper reference limit; ESR uses Miller's age/sex rule where age and sex are known."""
    if analyte.reference_rule == "westergren_age_sex" and age is not None and female is not None:
        rule = np.where(female, (age + 10.0) / 2.0, age / 2.0)
        return np.where(np.isfinite(rule), rule, analyte.upper_reference)
    return analyte.upper_reference if analyte.upper_reference is not None else np.inf


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


class LabParserCore(Detachable):
    """The core of :class:`features.transformers.LabParser`: raw cells -> canonical lab values, flags and typed covariates."""

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
        _fitted(self, "catalog_")
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

    def get_feature_names_out(self, input_features=None):
        names = list(self.numeric) + list(self.categorical) + [a for a, _, _ in self.labs]
        names += [f"{a}_below_lod" for a, _, _ in self.labs]
        return np.asarray(names, dtype=object)


class MedianImputerCore(Detachable):
    """The core of :class:`features.transformers.MedianImputer`: fill with the training medians, flag the training range."""

    def fill(self, X: np.ndarray) -> np.ndarray:
        """The core of :meth:`transform` on a float array in the fitted column order (filled in place)."""
        missing = np.isnan(X)
        X[missing] = np.take(self.statistics_, np.nonzero(missing)[1])
        if self.add_indicator:
            X = np.hstack([X, missing.astype(np.float64)])
        return X

    def outside(self, X: np.ndarray) -> np.ndarray:
        """The core of :meth:`out_of_range` on a float array in the fitted column order."""
        with np.errstate(invalid="ignore"):
            return (X < self.min_) | (X > self.max_)


class InflammationCore(Detachable):
    """The core of :class:`features.transformers.InflammationFeatures`."""

    def _logs(self, X: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {f"{a}_log": np.log(np.maximum(_floats(X, a), EPS)) for a in self.analytes}

    def _age_sex(self, X: Mapping[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
        age = _floats(X, self.age) if self.age and self.age in X else None
        female = np.asarray(X[self.sex], dtype=object).astype(str) == str(self.female) if self.sex and self.sex in X else None
        return age, female

    def source_shares(self, X: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
        """For each composite feature, each source lab's share of its deviation from the training average."""
        _fitted(self, "log_mean_")
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

    def compute(self, X: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The core of :meth:`transform`: input columns (a frame or a mapping of arrays) -> feature arrays."""
        _fitted(self, "index_mean_")
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
        _fitted(self, "index_mean_")
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
        _fitted(self, "index_mean_")
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


class AutoantibodyCore(Detachable):
    """The core of :class:`features.transformers.AutoantibodyFeatures`."""

    def source_shares(self, X: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
        """The burden's credit split by each antibody's positivity against its training rate; the index's by each standardised level."""
        _fitted(self, "positive_rate_")
        parts = {
            a: (_floats(X, a) >= self.catalog_[a].positive_at) - self.positive_rate_[a] for a in self.positive_analytes_
        }
        out = {"autoantibody_burden": shares(parts)} if parts else {}
        if self._index_analytes():
            levels = self._levels(X)
            out["autoantibody_index"] = shares({a: (levels[a] - self.index_mean_[a]) / self.index_scale_[a] for a in self._index_analytes()})
        return out

    def _level_name(self, a: str) -> str:
        """The name of analyte ``a``'s continuous feature (its level on the scale it is read on)."""
        return f"{a}_log2_titre" if self.catalog_[a].kind == "titre" else "anti_sgc_index" if a == "anti_sgc" else f"{a}_log"

    def _levels(self, X: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Each analyte's continuous feature: log2 titre steps, the anti-SGC binding index, or the natural log."""
        out = {}
        for a in self.analytes:
            lab, values = self.catalog_[a], _floats(X, a)
            if lab.kind == "titre":
                out[a] = np.log2(np.maximum(values, EPS) / lab.reference_dilution)
            elif a == "anti_sgc":
                out[a] = values
            else:
                out[a] = np.log(np.maximum(values, EPS))
        return out

    def compute(self, X: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The core of :meth:`transform`: input columns (a frame or a mapping of arrays) -> feature arrays."""
        _fitted(self, "positive_analytes_")
        levels = self._levels(X)
        out: dict[str, np.ndarray] = {self._level_name(a): levels[a] for a in self.analytes}
        for a in self.positive_analytes_:
            out[f"{a}_positive"] = (_floats(X, a) >= self.catalog_[a].positive_at).astype(float)
        if self.positive_analytes_:
            out["autoantibody_burden"] = np.sum([out[f"{a}_positive"] for a in self.positive_analytes_], axis=0)
        if self._index_analytes():
            z = [(levels[a] - self.index_mean_[a]) / self.index_scale_[a] for a in self._index_analytes()]
            out["autoantibody_index"] = np.mean(np.column_stack(z), axis=1)
        return out

    def _index_analytes(self) -> list[str]:
        """The analytes of the autoantibody index (none in a pipeline fitted before the index existed)."""
        return getattr(self, "index_analytes_", [])

    def get_feature_names_out(self, input_features=None):
        _fitted(self, "positive_analytes_")
        names = [self._level_name(a) for a in self.analytes]
        names += [f"{a}_positive" for a in self.positive_analytes_]
        if self.positive_analytes_:
            names.append("autoantibody_burden")
        if self._index_analytes():
            names.append("autoantibody_index")
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
            if name == "autoantibody_index":
                labels = ", ".join(self.catalog_[a].label for a in self._index_analytes())
                text = f"Composite autoantibody index: mean z-score of the levels of {labels} (scaled on training data; not cut at positivity)"
                info.append(FeatureInfo(name, text, "z", None, "autoantibody", "Autoantibody index"))
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


class LabFeaturesCore(Detachable):
    """The core of :class:`features.transformers.LabFeatures`."""

    def compute(self, X: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The core of :meth:`transform`: input columns (a frame or a mapping of arrays) -> feature arrays."""
        _fitted(self, "catalog_")
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
        _fitted(self, "catalog_")
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


class SymptomCore(Detachable):
    """The core of :class:`features.transformers.SymptomFeatures`."""

    def source_shares(self, X: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
        """Cognitive dominance (memory minus pain) split between its two scores."""
        _fitted(self, "mean_")
        if not (self.memory and self.pain):
            return {}
        memory = _floats(X, self.memory) - self.mean_[self.memory]
        pain = _floats(X, self.pain) - self.mean_[self.pain]
        return {"cognitive_dominance": shares({self.memory: memory, self.pain: -pain})}

    def compute(self, X: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The core of :meth:`transform`: input columns (a frame or a mapping of arrays) -> feature arrays."""
        _fitted(self, "n_features_in_")
        out = {c: _floats(X, c) for c in self.scores}
        if self.memory and self.pain:
            out["cognitive_dominance"] = _floats(X, self.memory) - _floats(X, self.pain)
        return out

    def get_feature_names_out(self, input_features=None):
        names = list(self.scores)
        if self.memory and self.pain:
            names.append("cognitive_dominance")
        return np.asarray(names, dtype=object)


class CategoricalFill:
    """scikit-learn's fitted ``SimpleImputer(strategy="most_frequent")`` on code columns: each column's fill code."""

    def __init__(self, statistics: Sequence[Any]):
        self.statistics_ = np.asarray(statistics, dtype=object)

    def fill(self, values: np.ndarray, j: int) -> np.ndarray:
        """Column ``j``'s codes with the missing ones (None, NaN) replaced by its fill code."""
        out = np.asarray(values, dtype=object).copy()
        out[missing_codes(out) if len(out) >= 256 else [missing_code(v) for v in out]] = self.statistics_[j]
        return out


class OneHotLevels:
    """scikit-learn's fitted ``OneHotEncoder`` (dense, unknown levels as all zeros): its levels and dropped level per column."""

    def __init__(self, categories: Sequence[Sequence[Any]], drop_idx: Sequence[Any] | None):
        self.categories_ = [np.asarray(c, dtype=object) for c in categories]
        self.drop_idx_ = None if drop_idx is None else list(drop_idx)

    def encode(self, columns: list[np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """``OneHotEncoder.transform`` from the fitted categories and dropped levels, by output name."""
        out, k = {}, 0
        for j, (values, levels) in enumerate(zip(columns, self.categories_, strict=True)):
            dropped = self.drop_idx_[j] if self.drop_idx_ is not None else None
            values = np.asarray(values, dtype=object)
            for i, level in enumerate(levels):
                if dropped is not None and i == dropped:
                    continue
                out[names[k]] = (values == level).astype(float)
                k += 1
        return out


def missing_code(value: Any) -> bool:
    """A missing category code: None or a float NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def missing_codes(values: np.ndarray) -> np.ndarray:
    """:func:`missing_code` over an object array."""
    missing = pd.isna(values)
    if not missing.any():
        return missing
    kinds = np.fromiter((v is None or isinstance(v, float) for v in values[missing]), dtype=bool, count=int(missing.sum()))
    out = np.zeros(len(values), dtype=bool)
    out[np.flatnonzero(missing)[kinds]] = True
    return out
