"""The arm-only floor: each arm's smoothed response rate, the same answer for every patient."""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.candidates.base import BenefitCandidate, Contributions, Explanation, Scoring


class ArmOnly(BenefitCandidate):
    """The floor: each arm's smoothed response rate, the same answer for every patient.

    ``p = (responders + 0.5) / (n + 1)`` per arm. Its draws are Jeffreys
    posterior draws of the two rates (Beta(r + 1/2, n - r + 1/2)), so its
    interval is the uncertainty of the trial's average difference.
    """

    name = "arm_only"
    same_for_everyone = True
    models_effect_modification = False
    label = "Arm-only floor (each arm's response rate; no patient differences)"
    has_draws = True

    def __init__(self, n_draws: int = 1000, random_state: int = 0):
        self.n_draws = n_draws
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray):
        self.features_ = list(X.columns)
        t, y = np.asarray(t).astype(int), np.asarray(y).astype(float)
        r1, n1 = float(y[t == 1].sum()), float((t == 1).sum())
        r0, n0 = float(y[t == 0].sum()), float((t == 0).sum())
        self.p_treated_ = (r1 + 0.5) / (n1 + 1.0)
        self.p_control_ = (r0 + 0.5) / (n0 + 1.0)
        rng = np.random.default_rng(self.random_state)
        self.draws_ = rng.beta(r1 + 0.5, n1 - r1 + 0.5, self.n_draws) - rng.beta(r0 + 0.5, n0 - r0 + 0.5, self.n_draws)
        return self

    def scoring(self) -> Scoring:
        return Scoring("constant", {"p_treated": float(self.p_treated_), "p_control": float(self.p_control_), "draws": self.draws_})

    def predict_arms(self, X) -> tuple[np.ndarray, np.ndarray]:
        n = len(X)
        return np.full(n, self.p_treated_), np.full(n, self.p_control_)

    def benefit_draws(self, X) -> np.ndarray:
        return np.broadcast_to(self.draws_, (len(X), len(self.draws_)))

    def _explain(self, X: pd.DataFrame, arms: tuple[np.ndarray, np.ndarray] | None = None) -> Explanation:
        n, d = len(X), len(self.features_)
        zeros = np.zeros((n, d))
        p1 = Contributions(zeros, np.full(n, self.p_treated_), np.full(n, self.p_treated_))
        benefit = np.full(n, self.p_treated_ - self.p_control_)
        return Explanation(self.features_, p1, Contributions(zeros.copy(), benefit, benefit))
