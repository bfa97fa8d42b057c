"""Bootstrap interval ensembles: the candidate refitted on stratified resamples."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import clone

from core.candidates.base import BenefitCandidate, _matrix
from core.runtime.intervals import bootstrap_interval


class BootstrapEnsemble:
    """Benefit intervals: the candidate refitted on bootstrap resamples (stratified by arm).

    The point estimate stays the full-data fit's; the interval reflects
    model-fitting uncertainty given the fitted feature pipeline.
    """

    def __init__(self, candidate: BenefitCandidate, n_models: int = 100, level: float = 0.95, seed: int = 0, penalty: str = "reselect"):
        self.candidate = candidate
        self.n_models = n_models
        self.level = level
        self.seed = seed
        self.penalty = penalty

    def template(self) -> BenefitCandidate:
        """The settings every refit starts from: the candidate's, or with ``penalty="keep"`` its chosen penalty only."""
        chosen = getattr(self.candidate, "C_", None)
        if self.penalty == "keep" and hasattr(self.candidate, "Cs") and chosen is not None and np.isfinite(chosen):
            return clone(self.candidate).set_params(Cs=(float(chosen),))
        return self.candidate

    def resamples(self, t: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """(rows, random_state) of every refit, in order: the resamples are drawn here, the refits anywhere."""
        rng = np.random.default_rng(self.seed)
        t = np.asarray(t).astype(int)
        arms = [np.nonzero(t == a)[0] for a in (0, 1)]
        return [
            (np.concatenate([rng.choice(idx, size=len(idx), replace=True) for idx in arms]), self.seed + 1000 + b)
            for b in range(self.n_models)
        ]

    @staticmethod
    def refit(candidate: BenefitCandidate, X: pd.DataFrame, t: np.ndarray, y: np.ndarray, rows: np.ndarray, seed: int) -> BenefitCandidate:
        """One refit of ``candidate``'s settings on ``rows`` (a resample) with ``random_state=seed``."""
        model = clone(candidate).set_params(random_state=seed)
        return model.fit(X.iloc[rows].reset_index(drop=True), np.asarray(t).astype(int)[rows], np.asarray(y)[rows])

    def fit(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray, models: list[BenefitCandidate] | None = None):
        """Refit on every resample; ``models`` are refits already made elsewhere (e.g. in the worker pool) from :meth:`resamples`."""
        if models is not None:
            if len(models) != self.n_models:
                raise ValueError(f"expected {self.n_models} refits, got {len(models)}")
            self.models_ = list(models)
            return self
        template = self.template()
        self.models_ = [self.refit(template, X, t, y, rows, seed) for rows, seed in self.resamples(t)]
        return self

    def interval(self, X: pd.DataFrame, point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Median-centred percentile interval of the refits around the point estimate (``core.runtime.intervals``)."""
        A = _matrix(X, self.candidate.features_)  # once, not once per refit
        return bootstrap_interval(np.column_stack([m.predict_benefit(A) for m in self.models_]), point, self.level)
