"""DR-learner: doubly robust pseudo-outcomes regressed on the features with LightGBM."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from core.candidates.base import (
    BenefitCandidate,
    Contributions,
    Explanation,
    Scoring,
    _logit_to_probability,
    _matrix,
    _proba,
    _rescale,
)
from core.candidates.boosting import _fit_lgbm_classifier, _lgbm_raw_contributions, _scoring_part, fit_lgbm
from core.config import CandidatesConfig, DRLearnerParams, LightGBMParams


class DRLearner(BenefitCandidate):
    """Doubly robust learner: cross-fitted outcome models, known randomisation ratio, LightGBM final stage."""

    name = "dr_learner"
    label = "DR-learner (cross-fitted, known randomisation, LightGBM final stage)"

    @classmethod
    def from_config(cls, config: CandidatesConfig, treated_fraction: float, seed: int, final: bool = False) -> DRLearner:
        params = config.dr_learner
        return cls(
            nuisance=params.nuisance,
            final=params.final,
            crossfit_folds=params.crossfit_folds,
            treated_fraction=treated_fraction,
            random_state=seed,
        )

    def __init__(
        self,
        nuisance: LightGBMParams | None = None,
        final: LightGBMParams | None = None,
        crossfit_folds: int = 2,
        treated_fraction: float = 0.5,
        random_state: int = 0,
    ):
        self.nuisance = nuisance
        self.final = final
        self.crossfit_folds = crossfit_folds
        self.treated_fraction = treated_fraction
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray):
        nuisance = self.nuisance or DRLearnerParams().nuisance  # default.yaml's candidates.dr_learner
        final = self.final or DRLearnerParams().final
        self.features_ = features = list(X.columns)
        A = _matrix(X, features)
        t = np.asarray(t).astype(int)
        y = np.asarray(y).astype(float)
        e = self.treated_fraction
        mu1, mu0 = np.zeros(len(y)), np.zeros(len(y))
        strata = 2 * t + y.astype(int)
        counts = np.bincount(strata)
        split_on = strata if counts[counts > 0].min() >= self.crossfit_folds else t
        folds = StratifiedKFold(n_splits=self.crossfit_folds, shuffle=True, random_state=self.random_state)
        for k, (train, test) in enumerate(folds.split(A, split_on)):
            Atr, ttr, ytr = A[train], t[train], y[train]
            m1 = _fit_lgbm_classifier(Atr[ttr == 1], ytr[ttr == 1], nuisance, self.random_state + 10 + k, features)
            m0 = _fit_lgbm_classifier(Atr[ttr == 0], ytr[ttr == 0], nuisance, self.random_state + 20 + k, features)
            mu1[test] = m1.predict_proba(A[test])[:, 1]
            mu0[test] = m0.predict_proba(A[test])[:, 1]
        self.pseudo_outcome_ = mu1 - mu0 + t * (y - mu1) / e - (1 - t) * (y - mu0) / (1 - e)
        self.final_ = fit_lgbm(A, self.pseudo_outcome_, final, self.random_state + 30, features, objective="regression")
        self.treated_ = _fit_lgbm_classifier(A[t == 1], y[t == 1].astype(int), nuisance, self.random_state + 40, features)
        return self

    def _tau(self, X: np.ndarray) -> np.ndarray:
        return self.final_.booster_.predict(X)

    def scoring(self) -> Scoring:
        return Scoring("trees", {"treated": _scoring_part(self.treated_), "other": _scoring_part(self.final_), "other_is": "effect"})

    def predict_arms(self, X) -> tuple[np.ndarray, np.ndarray]:
        X = _matrix(X, self.features_)
        p1 = _proba(self.treated_, X)
        p0 = np.clip(p1 - self._tau(X), 0.0, 1.0)
        return p1, p0

    def _explain(self, X: pd.DataFrame, arms: tuple[np.ndarray, np.ndarray] | None = None) -> Explanation:
        X = _matrix(X, self.features_)
        p1 = _logit_to_probability(*_lgbm_raw_contributions(self.treated_, X))
        contrib = self.final_.booster_.predict(X, pred_contrib=True)
        phi, base = contrib[:, :-1], contrib[:, -1]
        p1_pred, p0_pred = self.predict_arms(X) if arms is None else arms
        benefit = p1_pred - p0_pred  # equals tau unless p0 was clipped into [0, 1]
        return Explanation(self.features_, p1, Contributions(_rescale(phi, base, benefit), base, benefit))
