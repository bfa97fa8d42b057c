"""Bootstrap interval ensembles: the candidate refitted on stratified resamples.

Below ``fraction`` 1 the ensemble is an m-out-of-n bootstrap (Bickel & Sakov
2008) with an estimated rate (Politis, Romano & Wolf 1999, ch. 8): refits on
resamples of ``fraction`` of each arm and of a quarter of that, the rate at
which the refits' spread shrinks measured between the two sizes, and both
sets' spreads carried to the trial's size by it. On a trial of 10^6 patients
that is 2 x 20 refits on 10^5 and 2.5 x 10^4 patients instead of 20 on 10^6.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import clone

from core.candidates.base import BenefitCandidate, _matrix
from core.runtime.intervals import bootstrap_interval, refit_scaling

SMALLER = 4  # the m-out-of-n bootstrap's second size: fraction / SMALLER of each arm
RATE_BOUNDS = (0.0, 0.5)  # no faster than root-n; 0 carries the larger size's spread unchanged (the widest)
RATE_PATIENTS = 2_000  # patients on whom the two sizes' spreads are compared


class BootstrapEnsemble:
    """Benefit intervals: the candidate refitted on bootstrap resamples (stratified by arm).

    The point estimate stays the full-data fit's; the interval reflects
    model-fitting uncertainty given the fitted feature pipeline. ``fraction``
    below 1: ``n_models`` refits at each of two smaller sizes, their spread
    rescaled to the full trial (module docstring).
    """

    def __init__(
        self, candidate: BenefitCandidate, n_models: int = 100, level: float = 0.95, seed: int = 0, penalty: str = "reselect",
        fraction: float = 1.0,
    ):
        self.candidate = candidate
        self.n_models = n_models
        self.level = level
        self.seed = seed
        self.penalty = penalty
        self.fraction = fraction

    def fractions(self) -> list[float]:
        """The resample sizes, as fractions of each arm: [1], or [fraction, fraction / SMALLER]."""
        f = float(self.fraction)
        if not 0 < f <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {f}")
        return [1.0] if f == 1 else [f, f / SMALLER]

    def template(self, fraction: float = 1.0) -> BenefitCandidate:
        """The settings every refit starts from: the candidate's, or with ``penalty="keep"`` its chosen penalty only.

        A kept penalty is scaled by 1 / ``fraction``: scikit-learn's C multiplies
        the summed loss, so the same C on fewer patients is a stronger penalty
        per patient, a different estimator from the one served.
        """
        chosen = getattr(self.candidate, "C_", None)
        if self.penalty == "keep" and hasattr(self.candidate, "Cs") and chosen is not None and np.isfinite(chosen):
            return clone(self.candidate).set_params(Cs=(float(chosen) / fraction,))
        return self.candidate

    def templates(self) -> list[BenefitCandidate]:
        """One template per size (:meth:`fractions`), indexed by a resample's third field."""
        return [self.template(f) for f in self.fractions()]

    def resamples(self, t: np.ndarray) -> list[tuple[np.ndarray, int, int]]:
        """(rows, random_state, size index) of every refit, in order: drawn here, refitted anywhere with ``templates()[size]``."""
        rng = np.random.default_rng(self.seed)
        t = np.asarray(t).astype(int)
        arms = [np.nonzero(t == a)[0] for a in (0, 1)]
        out, b = [], 0
        for k, f in enumerate(self.fractions()):
            for _ in range(self.n_models):
                sizes = [len(idx) if f == 1 else max(2, int(round(f * len(idx)))) for idx in arms]
                rows = np.concatenate([rng.choice(idx, size=m, replace=True) for idx, m in zip(arms, sizes, strict=True)])
                out.append((rows, self.seed + 1000 + b, k))
                b += 1
        return out

    @staticmethod
    def refit(candidate: BenefitCandidate, X: pd.DataFrame, t: np.ndarray, y: np.ndarray, rows: np.ndarray, seed: int) -> BenefitCandidate:
        """One refit of ``candidate``'s settings on ``rows`` (a resample) with ``random_state=seed``."""
        model = clone(candidate).set_params(random_state=seed)
        return model.fit(X.iloc[rows].reset_index(drop=True), np.asarray(t).astype(int)[rows], np.asarray(y)[rows])

    def fit(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray, models: list[BenefitCandidate] | None = None):
        """Refit on every resample; ``models`` are refits already made elsewhere (e.g. in the worker pool) from :meth:`resamples`."""
        sizes = len(self.fractions())
        if models is not None:  # (the resamples are not drawn again: at 10^6 patients that is 160 MB per 20 refits)
            if len(models) != sizes * self.n_models:
                raise ValueError(f"expected {sizes * self.n_models} refits, got {len(models)}")
            self.models_ = list(models)
        else:
            templates = self.templates()
            self.models_ = [self.refit(templates[k], X, t, y, rows, seed) for rows, seed, k in self.resamples(t)]
        self.groups_ = np.repeat(np.arange(sizes), self.n_models)  # the order of resamples()
        self.rate_, self.factors_ = self._rescale(X)
        return self

    def _rescale(self, X: pd.DataFrame) -> tuple[float | None, np.ndarray]:
        """The estimated rate and each refit's factor: its size's spread times (size / n)^rate is the spread at n."""
        fractions = self.fractions()
        if len(fractions) == 1:
            return None, np.ones(len(self.models_))
        rows = np.random.default_rng(self.seed).permutation(len(X))[:RATE_PATIENTS]
        A = _matrix(X.iloc[np.sort(rows)], self.candidate.features_)
        draws = np.column_stack([m.predict_benefit(A) for m in self.models_])
        large, small = (draws[:, self.groups_ == k].std(axis=1, ddof=1) for k in (0, 1))
        ok = (large > 1e-12) & (small > 1e-12)
        # Spread ~ size^-rate: log(small / large) = rate * log(SMALLER); the median over patients. No spread at all
        # (a model whose refits agree everywhere): any rate gives the same zero width.
        rate = float(np.median(np.log(small[ok] / large[ok]) / np.log(SMALLER))) if ok.any() else RATE_BOUNDS[1]
        rate = float(np.clip(rate, *RATE_BOUNDS))
        return rate, np.array([fractions[k] ** rate for k in self.groups_])

    def interval(self, X: pd.DataFrame, point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Median-centred percentile interval of the refits around the point estimate (``core.runtime.intervals``)."""
        A = _matrix(X, self.candidate.features_)  # once, not once per refit
        draws = np.column_stack([m.predict_benefit(A) for m in self.models_])
        return bootstrap_interval(draws, point, self.level, *refit_scaling(self))


def describe_refits(n_models: int, fraction: float) -> str:
    """The ensemble's refits in words (the cohort report, the model card)."""
    if fraction == 1:
        return f"{n_models} bootstrap refits"
    return (
        f"m-out-of-n bootstrap: {n_models} refits on {fraction:.1%} and {n_models} on {fraction / SMALLER:.1%} of each arm, "
        "their spread carried to the whole trial by the rate measured between the two sizes"
    )
