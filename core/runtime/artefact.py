"""The deployable model: fitted feature pipeline + chosen candidate + interval ensemble + metadata.

A :class:`ResponderModel` is what MLflow stores (inside a pyfunc wrapper) and
what serving and the reports load. Training builds it from this module (one
definition for the job that fits it and the runtime that serves it); the
service and ``responders predict`` run its compiled :meth:`ResponderModel.plan`
(:mod:`core.runtime.plan`), while :meth:`ResponderModel.predict`, the pyfunc
path that ``mlflow models serve`` runs, goes through the scikit-learn pipeline
and the candidate objects themselves: the reference the plan is tested against. It takes raw patient rows in the data
contract (labs as report text, optional ``<lab>_unit`` columns) and returns,
for one outcome, both probabilities, the benefit with its interval, which
answer (estimand) they are, and the population and patient labels with their
reasons from the model's own :class:`~core.labelling.LabelPolicy`.

Intervals are for the estimand served (the conditional average, risk-based or
trial average benefit): the model's own uncertainty, from posterior draws
(BCF: credible intervals), the trial average's Miettinen-Nurminen interval
(the arm-only floor) or a percentile interval over bootstrap refits (the other
candidates: confidence intervals). Nothing is added for one
patient's own deviation from that average, which no trial identifies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.labelling import LabelPolicy
from core.runtime.intervals import posterior_interval, with_allowance
from core.spec import DatasetSpec
from features.cores import FeatureInfo
from features.plan import InputWarning

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from core.candidates import BenefitCandidate, BootstrapEnsemble, Explanation
    from core.runtime.plan import OutcomePlan

PREDICTION_COLUMNS = [
    "p_response_treated",
    "p_response_control",
    "benefit",
    "benefit_lower",
    "benefit_upper",
    "answer",
    "patient_label",
    "patient_label_reason",
    "population_label",
    "population_label_reason",
]
TEXT_COLUMNS = PREDICTION_COLUMNS[5:]
# The artefact's format. 2 = answers (estimands) with population and patient labels, no interval allowance;
# 3 = the same objects under ``core`` (core.runtime.artefact, core.candidates, core.spec, core.config, core.labelling),
# no pickle shims; 4 = the arm-only floor serves the trial's own rates and Miettinen-Nurminen interval (it served
# smoothed rates and Jeffreys draws, which differed from the trial's average effect beside them); 5 = a conditional
# answer may carry a calibration allowance in its interval (code reading format 4 would serve it without). A model pickled in
# another format is refused at load with one line (retrain), never served
# half-understood; a pickle whose classes no longer exist (format 2 named serving.runtime and training.*) is
# refused with the same line.
FORMAT_VERSION = 5
# MLflow "models from code": this file is stored with each logged model and run on load.
PYFUNC_ENTRY = Path(__file__).with_name("pyfunc_entry.py")


class ArtefactFormatError(ValueError):
    """A stored model written in a format this code does not read."""


def _retrain(found: object) -> ArtefactFormatError:
    return ArtefactFormatError(
        f"model artefact format {found}, this code reads format {FORMAT_VERSION}: retrain with `make train` "
        "(or `responders train`) to register a model in the current format"
    )


def check_format(model: ResponderModel) -> ResponderModel:
    """The model itself, or :class:`ArtefactFormatError` naming both formats and what to do."""
    found = model.__dict__.get("format_version", 1)  # the class default would hide an older pickle
    if found != FORMAT_VERSION:
        raise _retrain(found)
    return model


def load_artefact(path: str | Path) -> ResponderModel:
    """Unpickle a stored :class:`ResponderModel` and check its format.

    A pickle naming classes this code no longer has (an older format's module
    paths) gets the same one-line "retrain" error as a recorded older format.
    """
    import joblib

    try:
        model = joblib.load(path)
    except (ModuleNotFoundError, AttributeError) as err:  # a class path of another format
        raise _retrain(f"< {FORMAT_VERSION} ({err})") from None
    return check_format(model)


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
    average_effect: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # The conditional answer's out-of-fold calibration error (risk difference), added to its interval; 0: none (the
    # other answers, small trials). metadata["calibration_allowance"] says how it was measured.
    calibration_allowance: float = 0.0

    @property
    def candidate_name(self) -> str:
        return self.candidate.name

    def plan(self) -> OutcomePlan:
        """The compiled scoring plan of this model (compiled on first use, not stored with the model)."""
        plan = self.__dict__.get("_plan")
        if plan is None:
            from core.runtime.plan import OutcomePlan

            plan = self.__dict__["_plan"] = OutcomePlan(self)
        return plan

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_plan", None)
        return state

    def input_columns(self) -> list[str]:
        return [self.spec.id_column, *self.spec.feature_input_columns()]

    def features(self, raw: pd.DataFrame) -> pd.DataFrame:
        return self.pipeline.transform(raw)

    def feature_info(self) -> dict[str, FeatureInfo]:
        from features.pipeline import feature_info

        return feature_info(self.pipeline, self.spec)

    def predict(self, raw: pd.DataFrame) -> pd.DataFrame:
        """Both probabilities, benefit, its interval, the answer and both labels, one row per patient."""
        F = self.features(raw)
        p1, p0 = self.candidate.predict_arms(F)
        benefit = p1 - p0
        lower, upper = self.interval(F, benefit)
        return prediction_frame(self.label_policy, p1, p0, benefit, lower, upper, raw.index)

    def interval(self, F: pd.DataFrame, benefit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The interval for the served estimand: the model's own uncertainty (posterior draws or bootstrap refits),
        with the calibration allowance where one was measured."""
        lower, upper = model_interval(self.candidate, self.ensemble, F, benefit, self.interval_level)
        return with_allowance(benefit, lower, upper, self.calibration_allowance, self.interval_level)

    model_interval = interval  # one interval: nothing is added for a patient's own deviation

    def explain(self, raw: pd.DataFrame) -> tuple[Explanation, pd.DataFrame]:
        """SHAP contributions (probability points) and the engineered feature values they refer to."""
        F = self.features(raw)
        return self.candidate.explain(F), F

    def warnings(self, raw: pd.DataFrame) -> list[list[InputWarning]]:
        from features.pipeline import input_warnings

        return input_warnings(self.pipeline, self.spec, raw)

    def lab_issues(self, raw: pd.DataFrame):
        from features.pipeline import lab_issues

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


def prediction_frame(policy: LabelPolicy, p1, p0, benefit, lower, upper, index=None) -> pd.DataFrame:
    """The prediction columns (:data:`PREDICTION_COLUMNS`) of a batch, labels read from the policy."""
    labels = policy.label(lower, upper)
    n = len(benefit)
    return pd.DataFrame(
        {
            "p_response_treated": p1,
            "p_response_control": p0,
            "benefit": benefit,
            "benefit_lower": lower,
            "benefit_upper": upper,
            "answer": [policy.answer] * n,
            "patient_label": labels.patient_label,
            "patient_label_reason": labels.patient_reason,
            "population_label": [labels.population_label] * n,
            "population_label_reason": [labels.population_reason] * n,
        },
        index=index,
    )


def model_interval(
    candidate: BenefitCandidate, ensemble: BootstrapEnsemble | None, F: pd.DataFrame, benefit: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """The floor's closed-form interval, the equal-tailed interval of the posterior draws, or the median-centred
    bootstrap interval; each contains ``benefit``."""
    if candidate.closed_form_interval:
        low, high = candidate.closed_interval(level)
        benefit = np.asarray(benefit, dtype=float)
        return np.minimum(np.full(len(benefit), low), benefit), np.maximum(np.full(len(benefit), high), benefit)
    if candidate.has_draws:
        return posterior_interval(candidate.benefit_draws(F), benefit, level)
    if ensemble is None:
        raise ValueError(f"{candidate.name} needs a bootstrap ensemble for its interval")
    return ensemble.interval(F, benefit)


def predictions_schema():
    from mlflow.types import ColSpec, Schema

    return Schema(
        [ColSpec("double", c) for c in PREDICTION_COLUMNS[:5]]
        + [ColSpec("string", c, required=c not in ("patient_label", "patient_label_reason")) for c in TEXT_COLUMNS]
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


__all__ = ["PREDICTION_COLUMNS", "Evidence", "ResponderModel", "input_schema", "model_interval", "prediction_frame", "predictions_schema"]


def __getattr__(name: str) -> Any:
    """``ResponderPyfunc`` on first use (MLflow's pyfunc wrapper, :mod:`core.runtime.pyfunc_model`).

    Every stored model's ``pyfunc_entry.py`` imports it from here; scoring
    (the API, ``responders predict``) never needs it, and importing MLflow
    took 0.7 s of their start-up.
    """
    if name == "ResponderPyfunc":
        import importlib

        # By name: the wrapper depends on this module, not the other way round; this is only the old address.
        return importlib.import_module("core.runtime.pyfunc_model").ResponderPyfunc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
