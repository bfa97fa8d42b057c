"""The deployable model: fitted feature pipeline + chosen candidate + interval ensemble + metadata.

A :class:`ResponderModel` is what MLflow stores (inside a pyfunc wrapper) and
what serving and the reports load. It takes raw patient rows in the data
contract (labs as report text, optional ``<lab>_unit`` columns) and returns,
for one outcome, both probabilities, the benefit with its interval and a label
with its reason from the model's own :class:`~training.labelling.LabelPolicy`.

Intervals: the model's own uncertainty (posterior draws of the arm-only and
BCF models, or a percentile interval over bootstrap refits for the others),
widened in quadrature by ``z * heterogeneity_sd``, the stated allowance for
benefit that varies with what the trial did not measure (see
:class:`~training.config.IntervalConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from scipy.stats import norm
from sklearn.pipeline import Pipeline

from features.pipeline import InputWarning, feature_info, input_warnings, lab_issues
from features.transformers import FeatureInfo
from training.candidates import BenefitCandidate, BootstrapEnsemble, Explanation
from training.labelling import LabelPolicy
from training.spec import DatasetSpec

PREDICTION_COLUMNS = [
    "p_response_treated",
    "p_response_control",
    "benefit",
    "benefit_lower",
    "benefit_upper",
    "label",
    "label_reason",
]


@dataclass
class Evidence:
    """The heterogeneity verdict recorded at training time."""

    tested: bool
    subgroup_evidence: bool
    p_value: float | None
    p_adjusted: float | None
    statistic: float | None
    alpha: float
    permutations: int
    verdict: str
    method: str = "permutation"

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class ResponderModel:
    spec: DatasetSpec
    outcome: str
    pipeline: Pipeline
    candidate: BenefitCandidate
    ensemble: BootstrapEnsemble | None  # None when the candidate has posterior draws
    label_policy: LabelPolicy
    evidence: Evidence
    interval_level: float = 0.95
    heterogeneity_sd: float = 0.0
    average_effect: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def candidate_name(self) -> str:
        return self.candidate.name

    def input_columns(self) -> list[str]:
        return [self.spec.id_column, *self.spec.feature_input_columns()]

    def features(self, raw: pd.DataFrame) -> pd.DataFrame:
        return self.pipeline.transform(raw)

    def feature_info(self) -> dict[str, FeatureInfo]:
        return feature_info(self.pipeline, self.spec)

    def predict(self, raw: pd.DataFrame) -> pd.DataFrame:
        """Both probabilities, benefit, its interval and the label, one row per patient."""
        F = self.features(raw)
        p1, p0 = self.candidate.predict_arms(F)
        benefit = p1 - p0
        lower, upper = self.interval(F, benefit)
        labels, reasons = self.label_policy.label(benefit)
        return pd.DataFrame(
            {
                "p_response_treated": p1,
                "p_response_control": p0,
                "benefit": benefit,
                "benefit_lower": lower,
                "benefit_upper": upper,
                "label": labels,
                "label_reason": reasons,
            },
            index=raw.index,
        )

    def model_interval(self, F: pd.DataFrame, benefit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The interval from the model's own uncertainty alone (before the unmeasured-heterogeneity allowance)."""
        return model_interval(self.candidate, self.ensemble, F, benefit, self.interval_level)

    def interval(self, F: pd.DataFrame, benefit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lower, upper = self.model_interval(F, benefit)
        return widen(benefit, lower, upper, self.heterogeneity_sd, self.interval_level)

    def explain(self, raw: pd.DataFrame) -> tuple[Explanation, pd.DataFrame]:
        """SHAP contributions (probability points) and the engineered feature values they refer to."""
        F = self.features(raw)
        return self.candidate.explain(F), F

    def warnings(self, raw: pd.DataFrame) -> list[list[InputWarning]]:
        return input_warnings(self.pipeline, self.spec, raw)

    def lab_issues(self, raw: pd.DataFrame):
        return lab_issues(self.pipeline, raw)

    def example_input(self) -> pd.DataFrame:
        """A synthetic 'typical patient' from training medians and modes: no real patient's data.

        Parts of the pipeline a spec does not use (no labs, no categorical
        covariates) are simply absent.
        """
        from features.pipeline import fitted_parts

        parse = self.pipeline.named_steps["parse"]
        parts = fitted_parts(self.pipeline.named_steps["impute"])
        row: dict[str, Any] = {self.spec.id_column: "example-patient"}
        if "numeric" in parts:
            num_imputer, num_cols = parts["numeric"]
            for column, value in zip(num_cols, num_imputer.statistics_, strict=True):
                row[column] = float(round(value, 1))
        if "labs" in parts:
            lab_imputer, lab_cols = parts["labs"]
            for analyte, value in zip(lab_cols, lab_imputer.statistics_, strict=True):
                lab = parse.catalog_[analyte]
                text = f"1:{int(value)}" if lab.kind == "titre" and value >= 40 else "negative" if lab.kind == "titre" else f"{value:.3g}"
                row[self.spec.labs[analyte].column] = text
        if "categorical" in parts:
            imputer, cols = parts["categorical"]
            for column, value in zip(cols, imputer.statistics_, strict=True):
                row[column] = str(value)
        return pd.DataFrame([row])[[c for c in self.input_columns() if c in row]]


def model_interval(
    candidate: BenefitCandidate, ensemble: BootstrapEnsemble | None, F: pd.DataFrame, benefit: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed interval of the posterior draws, or the median-centred bootstrap interval, containing ``benefit``."""
    if candidate.has_draws:
        draws = candidate.benefit_draws(F)
        tail = (1 - level) / 2
        lower, upper = np.quantile(draws, [tail, 1 - tail], axis=1)
        return np.minimum(lower, benefit), np.maximum(upper, benefit)
    if ensemble is None:
        raise ValueError(f"{candidate.name} needs a bootstrap ensemble for its interval")
    return ensemble.interval(F, benefit)


def widen(benefit: np.ndarray, lower: np.ndarray, upper: np.ndarray, sd: float, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Add the unmeasured-heterogeneity allowance ``z * sd`` to each half-width in quadrature, within [-1, 1].

    Exact for a normal model uncertainty plus an independent normal deviation;
    keeps the asymmetry of the model's own interval.
    """
    if sd <= 0:
        return lower, upper
    z = float(norm.ppf(0.5 + level / 2))
    low = benefit - np.sqrt((benefit - lower) ** 2 + (z * sd) ** 2)
    high = benefit + np.sqrt((upper - benefit) ** 2 + (z * sd) ** 2)
    return np.clip(low, -1.0, 1.0), np.clip(high, -1.0, 1.0)


def predictions_schema():
    from mlflow.types import ColSpec, Schema

    return Schema(
        [ColSpec("double", c) for c in PREDICTION_COLUMNS[:-2]] + [ColSpec("string", "label"), ColSpec("string", "label_reason")]
    )


def input_schema(model: ResponderModel):
    """Model signature input: the spec's baseline columns, typed loosely enough for an ordinary data frame.

    A trial file read with ``pd.read_csv`` gives whole-number columns as int64
    (MLflow will not cast int64 to double), labs as numbers or report text
    (``<0.3``, ``1:320``) depending on the file, category codes as numbers or
    text and an all-empty unit column as float NaN. Every column is therefore
    ``Any`` (MLflow's AnyType): MLflow checks that the required columns are
    present and drops unknown ones, and the model's own pipeline does the real
    validation (numbers, units, plausible ranges, codes), as for ``responders
    predict`` and the REST API. Required columns are the spec's required ones.
    """
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    spec = model.spec
    required = set(spec.required_columns())
    columns = [spec.id_column, *spec.feature_input_columns()]
    columns += [f"{c}_unit" for c in spec.lab_columns()]
    return Schema([ColSpec(AnyType(), column, required=column in required and column != spec.id_column) for column in columns])


class ResponderPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc around a :class:`ResponderModel` stored as a joblib artifact.

    ``params={"output": "predictions"}`` (default) returns the prediction
    columns; ``"contributions"`` returns SHAP contributions (probability
    points) to the benefit and to P(responder | naltrexone), one row per
    patient and feature.
    """

    def load_context(self, context):
        import joblib

        self.model: ResponderModel = joblib.load(context.artifacts["responder"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        raw = _as_frame(model_input)
        output = (params or {}).get("output", "predictions")
        if output == "contributions":
            explanation, _ = self.model.explain(raw)
            rows = []
            for i in range(len(raw)):
                for j, name in enumerate(explanation.features):
                    rows.append(
                        {
                            "row": i,
                            "feature": name,
                            "benefit": explanation.benefit.values[i, j],
                            "p_response_treated": explanation.p_treated.values[i, j],
                        }
                    )
            return pd.DataFrame(rows)
        return self.model.predict(raw).reset_index(drop=True)


def _as_frame(model_input: Any) -> pd.DataFrame:
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    return frame.reset_index(drop=True)
