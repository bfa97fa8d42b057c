"""PATH's risk model: a blinded prognostic score plus a constant relative treatment effect."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from core.candidates.base import (
    BenefitCandidate,
    Explanation,
    Scoring,
    _difference,
    _logit_to_probability,
    _matrix,
    _scale,
    row_dot,
)
from core.candidates.logistic import _decision, _log_odds_ratio, fit_logistic, fit_scaler, logistic_solver
from core.config import CandidatesConfig


class RiskModel(BenefitCandidate):
    """Prognostic risk score (blinded to treatment) plus a constant relative treatment effect (PATH).

    The effect model ``logit P = a + b * score + g * t`` is fitted on a
    cross-fitted score, so ``b`` shrinks an over-fitted score towards the
    average (on 100 patients an in-sample score would look far better than it is).
    """

    name = "risk_model"
    label = "Risk model (prognostic score + constant relative effect)"
    models_effect_modification = False  # a constant relative effect: the benefit varies with baseline risk only

    @classmethod
    def from_config(cls, config: CandidatesConfig, treated_fraction: float, seed: int, final: bool = False) -> RiskModel:
        return cls(C=config.risk_model.C, score_folds=config.risk_model.score_folds, solver=config.solver, random_state=seed)

    def __init__(self, C: float = 0.1, score_folds: int = 5, solver: str = "liblinear", random_state: int = 0):
        self.C = C
        self.score_folds = score_folds
        self.solver = solver
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray):
        self.features_ = list(X.columns)
        t, y = np.asarray(t).astype(int), np.asarray(y).astype(int)
        A = _matrix(X, self.features_)
        self.scaler_ = fit_scaler(A)
        Z = _scale(A, self.scaler_)
        if len(np.unique(y)) < 2 or min(np.bincount(y)) < self.score_folds:
            self.coef_, self.intercept_ = np.zeros(Z.shape[1]), 0.0
            self.a_, self.b_ = float(logit((y.sum() + 0.5) / (len(y) + 1))), 0.0
            self.gamma_ = _log_odds_ratio(t, y)
            return self
        solver = logistic_solver(self.solver, len(y))
        self.coef_, self.intercept_ = fit_logistic(Z, y, self.C, solver)
        score = crossfit_score(Z, y, self.C, self.score_folds, self.random_state, solver)
        effect = LogisticRegression(C=1e6, max_iter=2000).fit(np.column_stack([score, t]), y)  # 3 parameters, unpenalised
        self.a_ = float(effect.intercept_[0])
        self.b_, self.gamma_ = (float(v) for v in effect.coef_[0])
        return self

    def _eta(self, X) -> np.ndarray:
        score = row_dot(_scale(_matrix(X, self.features_), self.scaler_), self.coef_) + self.intercept_
        return self.a_ + self.b_ * score

    def scoring(self) -> Scoring:
        # logit P = a + b * (z @ coef + intercept) + gamma * t
        w0 = self.b_ * np.asarray(self.coef_, dtype=float)
        c0 = self.a_ + self.b_ * self.intercept_
        return Scoring("linear", {"mean": self.scaler_.mean_, "scale": self.scaler_.scale_, "w1": w0, "w0": w0, "c1": c0 + self.gamma_, "c0": c0})

    def predict_arms(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        eta0 = self._eta(X)
        return expit(eta0 + self.gamma_), expit(eta0)

    def _explain(self, X: pd.DataFrame, arms: tuple[np.ndarray, np.ndarray] | None = None) -> Explanation:
        Z = _scale(_matrix(X, self.features_), self.scaler_)  # training mean is 0 after scaling
        phi = self.b_ * Z * self.coef_[None, :]
        base0 = np.full(len(X), self.a_ + self.b_ * self.intercept_)
        p1 = _logit_to_probability(phi, base0 + self.gamma_)
        p0 = _logit_to_probability(phi, base0)
        return Explanation(self.features_, p1, _difference(p1, p0))


def crossfit_score(Z: np.ndarray, y: np.ndarray, C: float, folds: int, seed: int, solver: str = "liblinear") -> np.ndarray:
    """The prognostic linear predictor of each patient from a penalised logistic fitted without them (blind to arm).

    The risk model's effect fit and the PATH analysis (:mod:`training.path`)
    both use it, so a patient's risk quarter never comes from a model that saw
    their outcome.
    """
    score = np.zeros(len(y))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(Z, y):
        score[test] = _decision(Z[test], *fit_logistic(Z[train], y[train], C, solver))
    return score
