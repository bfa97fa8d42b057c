"""scikit-learn transformers for inflammation, autoantibody and symptom features.

Conventions (scikit-learn's developer guide): ``__init__`` stores parameters
only, learned state ends in ``_``, every transformer has
``get_feature_names_out`` and returns pandas frames, nothing global. The domain
transformers need named columns (they are assembled by
:func:`features.pipeline.build_feature_pipeline`); the generic numeric ones
(:class:`MedianImputer`) accept any numeric array and pass scikit-learn's
estimator checks.

Each transformer's arithmetic is its NumPy core (``features.cores``: ``parse_columns``,
``fill``, ``compute``, ``source_shares`` on a mapping of column name -> array):
its pandas ``transform`` calls that core, and so does the compiled scoring plan
(``features.plan.FeaturePlan``), which holds the fitted cores alone (``core()``)
and skips scikit-learn's per-call validation and pandas for a single patient.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from features.cores import (
    INDEX_MARKERS,
    AutoantibodyCore,
    InflammationCore,
    LabFeaturesCore,
    LabParseError,
    LabParserCore,
    MedianImputerCore,
    SymptomCore,
    _catalog,
    _floats,
    _level_key,
    _upper_reference,
)


class LabParser(LabParserCore, TransformerMixin, BaseEstimator):
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

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        frame, issues = self.parse(X)
        if issues:
            raise LabParseError(issues)
        return frame


class MedianImputer(MedianImputerCore, TransformerMixin, BaseEstimator):
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

    def out_of_range(self, X) -> np.ndarray:
        """Boolean mask of observed values outside the training range."""
        check_is_fitted(self, "statistics_")
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan", reset=False)
        return self.outside(X)

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


class InflammationFeatures(InflammationCore, TransformerMixin, BaseEstimator):
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

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(self.compute(X), index=X.index)


class AutoantibodyFeatures(AutoantibodyCore, TransformerMixin, BaseEstimator):
    """Positivity flags at catalog cut-offs, ANA log2 titre, autoantibody burden, anti-SGC index, autoantibody index.

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
        # The composite index is scaled on training data only, as the inflammation index is; transform reuses these.
        levels = self._levels(X)
        self.index_analytes_ = [a for a in self.analytes if np.isfinite(levels[a]).any()]
        self.index_mean_ = {a: float(np.nanmean(levels[a])) for a in self.index_analytes_}
        self.index_scale_ = {a: float(np.nanstd(levels[a])) or 1.0 for a in self.index_analytes_}
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(self.compute(X), index=X.index)


class LabFeatures(LabFeaturesCore, TransformerMixin, BaseEstimator):
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


class SymptomFeatures(SymptomCore, TransformerMixin, BaseEstimator):
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

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(self.compute(X), index=X.index)
