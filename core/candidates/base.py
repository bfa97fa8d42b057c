"""The candidate interface (:class:`BenefitCandidate`) and what every candidate shares: explanations, input matrices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from sklearn.base import BaseEstimator
from sklearn.preprocessing import StandardScaler

from core.config import CandidatesConfig

PROB_CLIP = 1e-4


@dataclass
class Contributions:
    """Additive explanation of one output for each row: ``base + values.sum(1) == output``."""

    values: np.ndarray  # (n, d) probability points
    base: np.ndarray  # (n,)
    output: np.ndarray  # (n,)


@dataclass
class Explanation:
    features: list[str]
    p_treated: Contributions
    benefit: Contributions


def _rescale(phi: np.ndarray, base: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Scale contributions so that ``base + sum(phi') == target`` (used for the log-odds -> probability map)."""
    total = phi.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.abs(total) > 1e-12, (target - base) / total, 0.0)
    return phi * ratio[:, None]


def _logit_to_probability(phi_logit: np.ndarray, base_eta: np.ndarray) -> Contributions:
    eta = base_eta + phi_logit.sum(axis=1)
    p, p_base = expit(eta), expit(base_eta)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = eta - base_eta
        ratio = np.where(np.abs(diff) > 1e-9, (p - p_base) / diff, p * (1 - p))
    return Contributions(phi_logit * ratio[:, None], p_base, p)


def _difference(a: Contributions, b: Contributions) -> Contributions:
    return Contributions(a.values - b.values, a.base - b.base, a.output - b.output)


class _ConstantClassifier:
    """Stands in when an arm's training labels have one class (tiny folds): predicts the smoothed rate."""

    def __init__(self, y: np.ndarray):
        self.rate = (float(np.sum(y)) + 0.5) / (len(y) + 1.0)

    def predict_proba(self, X) -> np.ndarray:
        p = np.full(len(X), self.rate)
        return np.column_stack([1 - p, p])

    def raw_contributions(self, X) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((len(X), X.shape[1])), np.full(len(X), logit(self.rate))


def _matrix(X, features: list[str]) -> np.ndarray:
    """Features as a float matrix in training order (a DataFrame is reordered by name; an array is taken as is).

    Prediction works on plain arrays: per-call pandas and scikit-learn input
    checks cost more than the models themselves, and the interval ensemble
    calls a hundred models per request.
    """
    if isinstance(X, pd.DataFrame):
        # Already in training order (the usual case inside a job): skip pandas' reindexing. A copy: with
        # pandas' copy-on-write a single-block frame (a spec with only categorical covariates) gives a
        # read-only view, which stochtree refuses ("array is not writeable").
        same = len(X.columns) == len(features) and all(a == b for a, b in zip(X.columns, features, strict=True))
        return (X if same else X[features]).to_numpy(dtype=float, copy=True)
    return np.asarray(X, dtype=float)


def _scale(X: np.ndarray, scaler: StandardScaler) -> np.ndarray:
    return (X - scaler.mean_) / scaler.scale_


def row_dot(Z: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``Z @ w`` row by row, each row's sum in the same order wherever the row sits in the batch.

    A BLAS matrix-vector product may take a row's sum in another order depending on its position (measured on an
    AMD EPYC host: 232 of 300 rows differed in the last bit between one batch and the rows one at a time), so the
    same patient could get a different float from ``POST /predict`` and from a file scored in blocks.
    """
    return np.einsum("nd,d->n", Z, np.asarray(w, dtype=float))


def _proba(model, X: np.ndarray) -> np.ndarray:
    """P(class 1) from a fitted LightGBM classifier (or the constant stand-in), on an array."""
    if isinstance(model, _ConstantClassifier):
        return model.predict_proba(X)[:, 1]
    return model.booster_.predict(X)



@dataclass(frozen=True)
class Scoring:
    """What the scoring runtime (:mod:`core.runtime.arms`) evaluates for a fitted candidate.

    ``kind`` names one of the runtime's forms, and ``arrays`` holds exactly what that form needs:

    - ``constant``: ``p_treated``, ``p_control`` (floats) and ``counts`` (responders and patients per arm, treated
      then control: the trial average's Miettinen-Nurminen interval at the served level);
    - ``linear``: ``logit P(arm) = c_arm + z @ w_arm`` on standardised features ``z = (x - mean) / scale``:
      ``mean``, ``scale``, ``w1``, ``w0`` (arrays) and ``c1``, ``c0`` (floats);
    - ``trees``: ``treated`` and ``other`` (a LightGBM ``Booster``, or a float for a constant arm), with
      ``other_is`` ``"control"`` (P(control)) or ``"effect"`` (the benefit: P(control) = P(treated) - effect);
    - ``posterior_forest``: ``mu`` and ``tau`` (:class:`core.runtime.forests.TreeArrays`), ``mu_offset``,
      ``tau_offset`` (per draw), ``control_code`` and ``probit_draws`` (the model's own evaluation, for batches).
    """

    kind: str
    arrays: dict[str, Any]


class BenefitCandidate(BaseEstimator):
    """Base class; subclasses implement ``fit``, ``predict_arms`` and ``_explain``.

    Candidates whose fit yields its own uncertainty (posterior draws) set
    ``has_draws`` and implement ``benefit_draws``; a candidate whose interval
    has a closed form (the floor: the trial average's score interval) sets
    ``closed_form_interval`` and implements ``closed_interval``; the others get
    intervals from a :class:`BootstrapEnsemble` of refits (``needs_refits``).
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    has_draws: ClassVar[bool] = False
    closed_form_interval: ClassVar[bool] = False
    # The same answer for every patient (the floor): explanations have no patient drivers.
    same_for_everyone: ClassVar[bool] = False
    # Whether the benefit may vary beyond what baseline risk explains: only such a model can give the conditional answer
    # once the test has established effect modification (the floor and PATH's constant relative effect cannot).
    models_effect_modification: ClassVar[bool] = True

    @classmethod
    def from_config(cls, config: CandidatesConfig, treated_fraction: float, seed: int, final: bool = False) -> BenefitCandidate:
        """A fresh, unfitted model with the config's settings; ``final`` asks for the served model's settings."""
        return cls(random_state=seed)

    def scoring(self) -> Scoring:
        """The fitted model's arrays for the scoring runtime (see :class:`Scoring`)."""
        raise NotImplementedError(f"{self.name} exports no scoring arrays")

    def benefit_draws(self, X) -> np.ndarray:
        """(n, draws) benefit draws carrying the model's uncertainty (candidates with ``has_draws``)."""
        raise NotImplementedError(f"{self.name} has no posterior draws; use a BootstrapEnsemble")

    def closed_interval(self, level: float) -> tuple[float, float]:
        """The one benefit interval of every patient (candidates with ``closed_form_interval``)."""
        raise NotImplementedError(f"{self.name} has no closed-form interval")

    @property
    def needs_refits(self) -> bool:
        """Whether its interval comes from a :class:`BootstrapEnsemble` of refits (no draws, no closed form)."""
        return not (self.has_draws or self.closed_form_interval)

    @property
    def interval_kind(self) -> str:
        """``credible`` (posterior draws) or ``confidence`` (bootstrap refits, or the floor's score interval)."""
        return "credible" if self.has_draws else "confidence"

    def predict_benefit(self, X: pd.DataFrame) -> np.ndarray:
        p1, p0 = self.predict_arms(X)
        return p1 - p0

    def explain(self, X: pd.DataFrame, check: bool = True, arms: tuple[np.ndarray, np.ndarray] | None = None) -> Explanation:
        """Contributions to P(responder | treated) and to the benefit; ``check=False`` skips re-predicting to verify them.

        ``arms``: the served (p_treated, p_control) of these rows when the caller has them (the scoring plan): a
        candidate whose explanation is scaled to its predictions (BCF, DR-learner) then does not predict again.
        """
        explanation = self._explain(X, arms)
        if not check:  # the scoring plan checks the assembled explanation against its own predictions
            return explanation
        p1, p0 = self.predict_arms(X)
        # The explained outputs must be the predictions the service returns.
        np.testing.assert_allclose(explanation.p_treated.output, p1, atol=1e-6)
        np.testing.assert_allclose(explanation.benefit.output, p1 - p0, atol=1e-6)
        return explanation



def stratified_subsample(strata: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted row indices of a random subsample of ``size`` rows, each stratum in proportion (largest remainders)."""
    strata = np.asarray(strata)
    rng = np.random.default_rng([int(seed) % 2**32, size])
    levels, counts = np.unique(strata, return_counts=True)
    quota = counts * size / len(strata)
    take = np.floor(quota).astype(int)
    take[np.argsort(-(quota - take), kind="stable")[: size - take.sum()]] += 1
    rows = [rng.choice(np.nonzero(strata == level)[0], k, replace=False) for level, k in zip(levels, take, strict=True)]
    return np.sort(np.concatenate(rows))
