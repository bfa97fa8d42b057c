"""The candidates by name: one line per model; the order is simplest first (the one-SE rules and ties prefer the earlier)."""

from __future__ import annotations

from core.candidates.arm_only import ArmOnly
from core.candidates.base import BenefitCandidate
from core.candidates.bcf import BayesianCausalForest
from core.candidates.dr_learner import DRLearner
from core.candidates.interaction_logistic import InteractionLogistic
from core.candidates.risk_model import RiskModel
from core.candidates.t_learner import TLearner
from core.config import CandidatesConfig

# One line per model, simplest first: the one-SE rules and ties prefer the earlier candidate.
MODELS: tuple[type[BenefitCandidate], ...] = (
    ArmOnly,
    RiskModel,
    BayesianCausalForest,
    InteractionLogistic,
    TLearner,
    DRLearner,
)

CANDIDATES: dict[str, type[BenefitCandidate]] = {model.name: model for model in MODELS}
CANDIDATE_ORDER = tuple(CANDIDATES)
# The shrinkage candidate with posterior draws, which the selection rule and the heterogeneity test single out.
BCF = BayesianCausalForest.name
FLOOR = ArmOnly.name


def make_candidate(name: str, config: CandidatesConfig, treated_fraction: float, seed: int, final: bool = False) -> BenefitCandidate:
    """A fresh candidate; ``final`` asks for the served model's settings (e.g. all posterior draws).

    ``config`` should be resolved for the trial's size (``TrainConfig.resolved``); an ``auto`` left
    in it gets the small-trial value.
    """
    try:
        model = CANDIDATES[name]
    except KeyError:
        raise ValueError(f"unknown candidate {name!r}") from None
    return model.from_config(config, treated_fraction, seed, final)


def candidate_label(name: str) -> str:
    return CANDIDATES[name].label
