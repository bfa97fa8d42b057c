"""The typed training configuration (YAML), with small-sample defaults.

Every knob of a training job lives here so that a job is reproducible from
(data, spec, config, seed). ``load_config(None)`` gives the packaged default
(``training/configs/default.yaml``); a user's file overrides any subset of it.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.spec import ResponderRule


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LightGBMParams(_Strict):
    """LightGBM settings; defaults are deliberately shallow and slow-learning for about 100 patients."""

    n_estimators: int = Field(60, ge=1)
    learning_rate: float = Field(0.08, gt=0)
    num_leaves: int = Field(4, ge=2)
    max_depth: int = -1
    min_child_samples: int = Field(10, ge=1)
    subsample: float = Field(0.8, gt=0, le=1)
    subsample_freq: int = 1
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)

    def kwargs(self, seed: int) -> dict:
        # n_jobs=1 and deterministic: the executor parallelises across folds, and the
        # same seed must give the same model on any worker.
        return {
            **self.model_dump(),
            "random_state": seed,
            "n_jobs": 1,
            "deterministic": True,
            "force_col_wise": True,
            "verbose": -1,
        }


class RiskModelParams(_Strict):
    C: float = Field(0.1, gt=0, description="inverse L2 strength of the prognostic (treatment-blinded) model")
    score_folds: int = Field(5, ge=2, description="folds for the cross-fitted risk score the effect model is fitted on")


class InteractionLogisticParams(_Strict):
    Cs: list[float] = Field([0.001, 0.003, 0.01, 0.03, 0.1], min_length=1, description="L2 strengths tried by internal CV")
    cv: int = Field(3, ge=2, description="folds of the internal CV that picks C")
    treatment_scale: float = Field(
        10.0, gt=0, description="the treatment column is multiplied by this, so its penalty is 1/scale^2 of the others"
    )


class TLearnerParams(_Strict):
    lightgbm: LightGBMParams = LightGBMParams()


class DRLearnerParams(_Strict):
    crossfit_folds: int = Field(2, ge=2)
    nuisance: LightGBMParams = LightGBMParams()
    final: LightGBMParams = LightGBMParams(n_estimators=40, min_child_samples=20, num_leaves=3)


class CandidatesConfig(_Strict):
    enabled: list[Literal["risk_model", "interaction_logistic", "t_learner", "dr_learner"]] = [
        "risk_model",
        "interaction_logistic",
        "t_learner",
        "dr_learner",
    ]
    risk_model: RiskModelParams = RiskModelParams()
    interaction_logistic: InteractionLogisticParams = InteractionLogisticParams()
    t_learner: TLearnerParams = TLearnerParams()
    dr_learner: DRLearnerParams = DRLearnerParams()

    @model_validator(mode="after")
    def _risk_model_enabled(self) -> CandidatesConfig:
        if "risk_model" not in self.enabled:
            raise ValueError("the risk model is the honest default without subgroup evidence and cannot be disabled")
        return self


class CVConfig(_Strict):
    folds: int = Field(5, ge=2)
    repeats: int = Field(3, ge=1)
    inner_folds: int = Field(3, ge=2, description="folds of the inner loop that chooses the candidate")


class EvidenceConfig(_Strict):
    permutations: int = Field(199, ge=0, description="0 skips the test (verdict: not tested)")
    alpha: float = Field(0.05, gt=0, lt=1, description="family-wise level after Holm's correction across outcomes")
    rate_bootstrap: int = Field(500, ge=0, description="bootstrap replicates for the RATE (AUTOC) interval")
    statistic: Literal["beyond_risk", "rate"] = Field(
        "beyond_risk",
        description=(
            "beyond_risk: best Qini-weighted RATE of an effect-modelling candidate for the benefit the risk model "
            "does not explain (the claim 'responder subgroup'); rate: best Qini-weighted RATE of any candidate "
            "(also counts the benefit spread that baseline risk alone produces)"
        ),
    )


class IntervalConfig(_Strict):
    """Benefit intervals: percentile interval over bootstrap refits of the chosen candidate."""

    bootstrap_models: int = Field(100, ge=5)
    level: float = Field(0.95, gt=0.5, lt=1)


class LabelRule(_Strict):
    """How a benefit estimate becomes a label; stored with every model, read by the API.

    ``likely_benefit``: the interval's lower bound is above ``likely_lower_above``
    and the estimate is at least ``likely_min_benefit``. ``unlikely_benefit``: the
    upper bound is below ``unlikely_upper_below``. Otherwise ``uncertain``.
    """

    likely_lower_above: float = 0.0
    likely_min_benefit: float = 0.10
    unlikely_upper_below: float = 0.05

    def describe(self) -> str:
        return (
            f"likely_benefit: interval lower bound > {self.likely_lower_above:+.0%} and estimate >= "
            f"{self.likely_min_benefit:.0%}; unlikely_benefit: interval upper bound < {self.unlikely_upper_below:+.0%}; "
            "otherwise uncertain (benefit = active minus control arm probability of a clinically meaningful response)"
        )

    def label(self, benefit, lower, upper):
        """Vectorised labels for arrays of estimates and interval bounds."""
        import numpy as np

        benefit, lower, upper = (np.asarray(a, dtype=float) for a in (benefit, lower, upper))
        likely = (lower > self.likely_lower_above) & (benefit >= self.likely_min_benefit)
        unlikely = upper < self.unlikely_upper_below
        return np.where(likely, "likely_benefit", np.where(unlikely, "unlikely_benefit", "uncertain"))


class GateConfig(_Strict):
    """When a new model may become ``champion``."""

    max_brier_excess: float = Field(
        0.05, ge=0, description="cross-validated Brier score (mean over arms) may exceed the no-information Brier by at most this"
    )
    max_brier_worse_than_champion: float = Field(
        0.01, ge=0, description="not worse than the current champion's candidate on the same evaluation by more than this"
    )


class ExecutorConfig(_Strict):
    kind: Literal["local", "dask"] = "local"
    workers: int | None = Field(None, ge=1, description="local processes (None: one per core)")
    scheduler: str | None = Field(None, description="address of a running Dask scheduler (kind: dask)")


class TrainConfig(_Strict):
    seed: int = 2024
    cv: CVConfig = CVConfig()
    candidates: CandidatesConfig = CandidatesConfig()
    evidence: EvidenceConfig = EvidenceConfig()
    intervals: IntervalConfig = IntervalConfig()
    labels: LabelRule = LabelRule()
    gate: GateConfig = GateConfig()
    executor: ExecutorConfig = ExecutorConfig()
    responder_rules: dict[str, ResponderRule] = Field(
        default_factory=dict, description="per-outcome override of the spec's responder rule (e.g. >= 50%)"
    )
    missing_followup: Literal["non_responder", "exclude"] | None = Field(
        None, description="override of the spec's handling of missing follow-up"
    )

    def digest(self) -> str:
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_config(path: str | Path | None = None, **overrides) -> TrainConfig:
    """The packaged default config, updated by a YAML file and keyword overrides (deep-merged)."""
    data = _default_dict()
    if path is not None:
        data = _merge(data, yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
    if overrides:
        data = _merge(data, overrides)
    return TrainConfig.model_validate(data)


@lru_cache(maxsize=1)
def _default_text() -> str:
    return resources.files("training").joinpath("configs", "default.yaml").read_text(encoding="utf-8")


def _default_dict() -> dict:
    return yaml.safe_load(_default_text()) or {}


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
