"""The library API: fit responder models on a data frame in a notebook, without MLflow.

    from core.spec import load_spec
    from training.estimator import ResponderEstimator
    from training.simulate import simulate

    fitted = ResponderEstimator(load_spec(), {"cv": {"folds": 3}}).fit(simulate("final", 99, 417))
    fitted.predict(patients)             # both probabilities, the benefit, its interval, answer and labels
    fitted.benefit_interval(patients)    # the benefit with its interval only
    fitted.explain(patients)             # SHAP drivers per patient and outcome
    fitted.evaluate()                    # the nested cross-validation results per outcome
    fitted.heterogeneity_test()          # the heterogeneity verdict per outcome (Holm-adjusted)

``fit`` is the fit of the training job (``responders train``,
:func:`training.train.run_training` calls it, then tracks): the data contract,
nested cross-validation, the risk-based (PATH) analysis, the heterogeneity
test, the sensitivity analyses, the answer per outcome and the final fits with
their intervals (:func:`training.steps.fit_trial`). The job then logs MLflow
runs from the fitted results, registers, gates, promotes and reports. Same
data, spec, config and seed: the same models.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from core.config import TrainConfig, load_config
from core.data import DataContractError, ValidationReport, coerce_numeric, frame_digest, validate
from core.runtime.artefact import ResponderModel
from core.runtime.explain import PatientExplanation, explain_patients
from core.spec import DatasetSpec, load_spec
from training.executor import Executor, make_executor
from training.reports.payload import data_provenance
from training.results import OutcomeResult
from training.steps import fit_trial


@dataclass
class FittedResponders:
    """Fitted responder models, one per outcome of the spec, with the evaluation that chose them.

    Keyed by outcome; with three or more arms by ``<comparison>/<outcome>`` (``cbt-vs-cont/weight``), each
    model fitted on its comparison's two arms, Holm across every comparison and outcome.
    """

    spec: DatasetSpec
    config: TrainConfig
    results: dict[str, OutcomeResult]
    validation: Any = None
    models: dict[str, ResponderModel] = field(init=False)

    def __post_init__(self) -> None:
        self.models = {outcome: result.model for outcome, result in self.results.items()}

    def _outcomes(self, outcome: str | None) -> list[str]:
        if outcome is None:
            return list(self.models)
        if outcome not in self.models:
            raise KeyError(f"unknown outcome {outcome!r}; this spec has {', '.join(self.models)}")
        return [outcome]

    def predict(self, patients: pd.DataFrame, outcome: str | None = None) -> pd.DataFrame:
        """One row per patient and outcome: both probabilities, the benefit and its interval, the answer and labels."""
        frames = []
        for name in self._outcomes(outcome):
            predicted = self.models[name].predict(patients.reset_index(drop=True))
            ids = patients[self.spec.id_column].to_numpy() if self.spec.id_column in patients.columns else range(len(patients))
            frames.append(predicted.assign(outcome=name, patient_id=list(ids)))
        out = pd.concat(frames, ignore_index=True)
        return out[["patient_id", "outcome", *[c for c in out.columns if c not in ("patient_id", "outcome")]]]

    def benefit_interval(self, patients: pd.DataFrame, outcome: str | None = None) -> pd.DataFrame:
        """The benefit (P(response | treated) - P(response | control)) and its interval, per patient and outcome."""
        return self.predict(patients, outcome)[["patient_id", "outcome", "benefit", "benefit_lower", "benefit_upper"]]

    effect = benefit_interval

    def explain(self, patients: pd.DataFrame, outcome: str | None = None) -> dict[str, list[PatientExplanation]]:
        """SHAP drivers of benefit and of P(response | treated) per outcome, one explanation per patient."""
        return {name: explain_patients(self.models[name], patients) for name in self._outcomes(outcome)}

    def evaluate(self) -> dict[str, pd.DataFrame]:
        """The nested cross-validation summary per outcome (a row per candidate and for the selection procedure)."""
        return {name: result.cv.summary.copy() for name, result in self.results.items()}

    def heterogeneity_test(self) -> dict[str, dict[str, Any]]:
        """Per outcome: the test's statistic and p-value, Holm-adjusted over the outcomes, and the verdict."""
        out = {}
        for name, result in self.results.items():
            test = result.permutation
            out[name] = {
                "tested": test.tested,
                "method": test.method,
                "statistic": test.statistic,
                "p_value": test.p_value,
                "p_adjusted": result.p_adjusted,
                "evidence": result.evidence,
                "answer": result.answer,
                "champion": result.champion,
            }
        return out


class ResponderEstimator:
    """``ResponderEstimator(spec, config).fit(frame)`` -> :class:`FittedResponders` (no MLflow, no files).

    ``spec``: a :class:`~core.spec.DatasetSpec`, the name of a packaged spec or a
    YAML path (default: the fibromyalgia-LDN spec). ``config``: a
    :class:`~core.config.TrainConfig`, a dictionary of overrides of the defaults
    (``core/configs/default.yaml``) or None for the defaults.
    """

    def __init__(self, spec: DatasetSpec | str | None = None, config: TrainConfig | dict[str, Any] | None = None):
        self.spec = spec if isinstance(spec, DatasetSpec) else load_spec(spec)
        self.config = config if isinstance(config, TrainConfig) else load_config(None, **(config or {}))

    def fit(
        self,
        frame: pd.DataFrame,
        source: str = "<frame>",
        *,
        validation: ValidationReport | None = None,
        provenance: dict[str, Any] | None = None,
        executor: Executor | None = None,
        phase: Callable[..., None] | None = None,
    ) -> FittedResponders:
        """Validate ``frame`` against the data contract (:class:`~core.data.DataContractError` if unusable) and fit.

        The training job (:func:`training.train.run_training`) passes what it already has:
        ``validation`` (the frame was read, validated and coerced by :func:`core.data.load_trial`),
        ``provenance`` (the file's record), its ``executor`` and a ``phase`` callback for
        its progress line and timing. None of them changes a number.
        """
        spec, config = self.spec, self.config
        if validation is None:
            validation = validate(frame, spec, source=source)
            if not validation.ok:
                raise DataContractError(validation)
            frame = coerce_numeric(frame.reset_index(drop=True), spec)
        if provenance is None:
            provenance = data_provenance(frame, source, frame_digest(frame), spec)  # the simulated-data banner's record
        with ExitStack() as stack:
            if executor is None:
                executor = stack.enter_context(make_executor(config.executor.kind, config.executor.workers, config.executor.scheduler))
            results = fit_trial(frame, spec, config, executor, provenance, phase)
        return FittedResponders(spec, config, results, validation)
