"""The arm-only floor: each arm's response rate, the same answer for every patient (the trial average)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.candidates.base import BenefitCandidate, Contributions, Explanation, Scoring
from core.runtime.intervals import trial_average_interval


class ArmOnly(BenefitCandidate):
    """The floor: each arm's response rate, the same answer for every patient.

    Served (``trial_average``, the final fit): the trial's own estimates, the
    responder proportion per arm and their difference, with the
    Miettinen-Nurminen score interval (:func:`core.runtime.intervals.trial_average_interval`):
    the numbers of the trial's average effect, so a patient given the average
    answer sees the same rates and difference as the population line beside
    it. In cross-validation the rates are smoothed, ``(responders + 0.5) /
    (n + 1)``, so an arm with no responders in a training fold does not give
    an infinite log-loss on the held-out one.
    """

    name = "arm_only"
    same_for_everyone = True
    models_effect_modification = False
    label = "Arm-only floor (each arm's response rate; no patient differences)"
    closed_form_interval = True

    def __init__(self, trial_average: bool = False, random_state: int = 0):
        self.trial_average = trial_average
        self.random_state = random_state

    @classmethod
    def from_config(cls, config, treated_fraction: float, seed: int, final: bool = False) -> ArmOnly:
        return cls(trial_average=final, random_state=seed)

    def fit(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray):
        self.features_ = list(X.columns)
        t, y = np.asarray(t).astype(int), np.asarray(y).astype(float)
        r1, n1 = int(y[t == 1].sum()), int((t == 1).sum())
        r0, n0 = int(y[t == 0].sum()), int((t == 0).sum())
        self.counts_ = (r1, n1, r0, n0)
        raw = self.trial_average and n1 > 0 and n0 > 0
        self.p_treated_ = r1 / n1 if raw else (r1 + 0.5) / (n1 + 1.0)
        self.p_control_ = r0 / n0 if raw else (r0 + 0.5) / (n0 + 1.0)
        return self

    def closed_interval(self, level: float) -> tuple[float, float]:
        """The trial average's Miettinen-Nurminen interval (every difference its score test does not reject)."""
        return trial_average_interval(self.counts_, level)

    def scoring(self) -> Scoring:
        return Scoring("constant", {"p_treated": float(self.p_treated_), "p_control": float(self.p_control_), "counts": self.counts_})

    def predict_arms(self, X) -> tuple[np.ndarray, np.ndarray]:
        n = len(X)
        return np.full(n, self.p_treated_), np.full(n, self.p_control_)

    def _explain(self, X: pd.DataFrame, arms: tuple[np.ndarray, np.ndarray] | None = None) -> Explanation:
        n, d = len(X), len(self.features_)
        zeros = np.zeros((n, d))
        p1 = Contributions(zeros, np.full(n, self.p_treated_), np.full(n, self.p_treated_))
        benefit = np.full(n, self.p_treated_ - self.p_control_)
        return Explanation(self.features_, p1, Contributions(zeros.copy(), benefit, benefit))
