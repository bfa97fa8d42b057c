"""T-learner: one LightGBM classifier per arm."""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.candidates.base import (
    BenefitCandidate,
    Explanation,
    Scoring,
    _difference,
    _logit_to_probability,
    _matrix,
    _proba,
)
from core.candidates.boosting import _fit_lgbm_classifier, _lgbm_raw_contributions, _scoring_part
from core.config import CandidatesConfig, LightGBMParams


class TLearner(BenefitCandidate):
    """One LightGBM classifier per arm."""

    name = "t_learner"
    label = "T-learner (LightGBM per arm)"

    @classmethod
    def from_config(cls, config: CandidatesConfig, treated_fraction: float, seed: int, final: bool = False) -> TLearner:
        return cls(lightgbm=config.t_learner.lightgbm, random_state=seed)

    def __init__(self, lightgbm: LightGBMParams | None = None, random_state: int = 0):
        self.lightgbm = lightgbm
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray):
        params = self.lightgbm or LightGBMParams()
        self.features_ = list(X.columns)
        A = _matrix(X, self.features_)
        t, y = np.asarray(t).astype(bool), np.asarray(y)
        self.treated_ = _fit_lgbm_classifier(A[t], y[t], params, self.random_state, self.features_)
        self.control_ = _fit_lgbm_classifier(A[~t], y[~t], params, self.random_state + 1, self.features_)
        return self

    def scoring(self) -> Scoring:
        return Scoring("trees", {"treated": _scoring_part(self.treated_), "other": _scoring_part(self.control_), "other_is": "control"})

    def predict_arms(self, X) -> tuple[np.ndarray, np.ndarray]:
        A = _matrix(X, self.features_)
        return _proba(self.treated_, A), _proba(self.control_, A)

    def _explain(self, X: pd.DataFrame, arms: tuple[np.ndarray, np.ndarray] | None = None) -> Explanation:
        X = _matrix(X, self.features_)
        p1 = _logit_to_probability(*_lgbm_raw_contributions(self.treated_, X))
        p0 = _logit_to_probability(*_lgbm_raw_contributions(self.control_, X))
        return Explanation(self.features_, p1, _difference(p1, p0))
