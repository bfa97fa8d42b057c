"""Penalised logistic regression with treatment-by-feature interactions."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit, logit

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
from core.candidates.logistic import _log_odds_ratio, fit_logistic_cv, fit_scaler, logistic_solver
from core.config import CandidatesConfig


class InteractionLogistic(BenefitCandidate):
    """Penalised logistic regression with treatment-by-feature interactions.

    The L2 strength is chosen from ``Cs`` by an internal stratified CV on log
    loss (``LogisticRegressionCV``); the treatment column is multiplied by
    ``treatment_scale`` so that the main treatment effect is barely penalised.
    """

    name = "interaction_logistic"
    label = "Penalised logistic regression with treatment interactions"

    @classmethod
    def from_config(cls, config: CandidatesConfig, treated_fraction: float, seed: int, final: bool = False) -> InteractionLogistic:
        params = config.interaction_logistic
        return cls(Cs=tuple(params.Cs), cv=params.cv, treatment_scale=params.treatment_scale, solver=config.solver, random_state=seed)

    def __init__(
        self, Cs=(0.001, 0.003, 0.01, 0.03, 0.1), cv: int = 3, treatment_scale: float = 10.0, solver: str = "liblinear", random_state: int = 0
    ):
        self.Cs = Cs
        self.cv = cv
        self.treatment_scale = treatment_scale
        self.solver = solver
        self.random_state = random_state

    def _design(self, A: np.ndarray, t: np.ndarray) -> np.ndarray:
        """``[z, treatment_scale * t, z * t]`` with ``z`` the scaled ``A``, written into one array.

        The same floats as ``np.column_stack([_scale(A), s * t, _scale(A) * t])``
        without its temporaries: at 10^6 patients those cost about 2 GB.
        """
        n, d = A.shape
        design = np.empty((n, 2 * d + 1))
        Z = design[:, :d]
        np.subtract(A, self.scaler_.mean_, out=Z)
        np.divide(Z, self.scaler_.scale_, out=Z)
        np.multiply(self.treatment_scale, t, out=design[:, d])
        np.multiply(Z, t[:, None], out=design[:, d + 1 :])
        return design

    def fit(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray):
        self.features_ = list(X.columns)
        t, y = np.asarray(t, float), np.asarray(y).astype(int)
        A = _matrix(X, self.features_)
        self.scaler_ = fit_scaler(A)
        d = A.shape[1]
        if len(np.unique(y)) < 2 or min(np.bincount(y)) < self.cv:
            self.main_, self.inter_ = np.zeros(d), np.zeros(d)
            self.intercept_ = float(logit((y[t == 0].sum() + 0.5) / ((t == 0).sum() + 1)))
            self.gamma_ = _log_odds_ratio(t.astype(int), y)
            self.C_ = float("nan")
            return self
        solver = logistic_solver(self.solver, len(y))
        design = self._design(A, t)
        del A  # the design holds the scaled features: the matrix is not needed while the penalty is chosen
        coef, intercept, self.C_ = fit_logistic_cv(design, y, list(self.Cs), self.cv, solver)
        self.main_, self.gamma_, self.inter_ = coef[:d], float(coef[d] * self.treatment_scale), coef[d + 1:]
        self.intercept_ = intercept
        return self

    def scoring(self) -> Scoring:
        # logit P = intercept + z @ main + t * (gamma + z @ inter)
        main, inter = np.asarray(self.main_, dtype=float), np.asarray(self.inter_, dtype=float)
        return Scoring("linear", {
            "mean": self.scaler_.mean_, "scale": self.scaler_.scale_, "w1": main + inter, "w0": main,
            "c1": self.intercept_ + self.gamma_, "c0": self.intercept_,
        })

    def predict_arms(self, X) -> tuple[np.ndarray, np.ndarray]:
        Z = _scale(_matrix(X, self.features_), self.scaler_)
        eta0 = self.intercept_ + row_dot(Z, self.main_)
        eta1 = eta0 + self.gamma_ + row_dot(Z, self.inter_)
        return expit(eta1), expit(eta0)

    def _explain(self, X: pd.DataFrame, arms: tuple[np.ndarray, np.ndarray] | None = None) -> Explanation:
        Z = _scale(_matrix(X, self.features_), self.scaler_)
        p1 = _logit_to_probability(Z * (self.main_ + self.inter_)[None, :], np.full(len(X), self.intercept_ + self.gamma_))
        p0 = _logit_to_probability(Z * self.main_[None, :], np.full(len(X), self.intercept_))
        return Explanation(self.features_, p1, _difference(p1, p0))
