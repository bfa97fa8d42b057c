"""A served model compiled for scoring alone, stored beside the artefact: the same answers without scikit-learn.

A :class:`~core.runtime.artefact.ResponderModel` holds the fitted
scikit-learn pipeline and the candidate objects (for the MLflow pyfunc path,
the reports and SHAP), so unpickling it imports scikit-learn and SciPy, which
takes longer than scoring 10^5 patients. :class:`ScoringModel` is what scoring a
file needs of it: the compiled :class:`~core.runtime.plan.OutcomePlan` (the
feature pipeline's NumPy cores, the champion's arrays) with the answer, label
rule, evidence and metadata. Training stores it beside the artefact
(:data:`SCORING_FILE`) when it logs the model; ``responders predict`` loads it
when it is there (:func:`serving.scoring.resolve_champions`), the artefact
otherwise. The plan is the one the service compiles from the same artefact,
so the numbers are the same floats (tests/test_scoring_plan.py).

What the stored plan imports depends on the champion: an arm-only or BCF
champion's arrays need NumPy (and numba for BCF's walk); a linear or LightGBM
champion keeps its candidate objects, which import scikit-learn or LightGBM as
before. It does not explain: SHAP needs the candidate, which the artefact has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.labelling import LabelPolicy
from core.runtime.artefact import FORMAT_VERSION, Evidence
from core.spec import DatasetSpec
from features.cores import FeatureInfo

if TYPE_CHECKING:
    from core.runtime.artefact import ResponderModel
    from core.runtime.plan import OutcomePlan

SCORING_FILE = "scoring.joblib"  # beside the artefact (responder.joblib) in a logged model's artifacts


@dataclass
class ScoringModel:
    """What :class:`~serving.scoring.Scorer` reads of a champion, with its plan compiled and no fitted pipeline or candidate."""

    spec: DatasetSpec
    outcome: str
    candidate_name: str
    label_policy: LabelPolicy
    evidence: Evidence
    interval_level: float
    average_effect: dict[str, Any]
    metadata: dict[str, Any]
    scoring_plan: OutcomePlan = field(repr=False)
    format_version: int = FORMAT_VERSION

    def plan(self) -> OutcomePlan:
        return self.scoring_plan

    def feature_info(self) -> dict[str, FeatureInfo]:
        return self.scoring_plan.features.info

    @property
    def candidate(self) -> Any:
        raise AttributeError(
            f"the stored scoring plan of {self.candidate_name} ({SCORING_FILE}) has no candidate to explain with: load the model's artefact"
        )


def compile_model(model: ResponderModel) -> ScoringModel:
    """``model`` compiled for scoring: its own plan, compiled afresh, pointing at the scoring model instead of the artefact."""
    from core.runtime.plan import OutcomePlan

    plan = OutcomePlan(model)
    scoring = ScoringModel(
        spec=model.spec, outcome=model.outcome, candidate_name=model.candidate_name, label_policy=model.label_policy,
        evidence=model.evidence, interval_level=model.interval_level, average_effect=dict(model.average_effect),
        metadata=dict(model.metadata), scoring_plan=plan, format_version=model.format_version,
    )  # fmt: skip
    plan.model = scoring
    return scoring


def load_scoring_model(path: Any) -> ScoringModel:
    """Unpickle a stored :class:`ScoringModel`; its format is checked as the artefact's (:func:`~core.runtime.artefact.load_artefact`)."""
    from core.runtime.artefact import load_artefact

    model = load_artefact(path)
    if not isinstance(model, ScoringModel):
        raise TypeError(f"{path} holds a {type(model).__name__}, not a stored scoring plan")
    return model
