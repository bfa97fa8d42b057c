"""The champion and its interval machinery compiled for scoring: both arms' probabilities and the model's interval.

:func:`compile_arms` reads a fitted candidate (and its bootstrap ensemble) and
returns a plan whose ``predict(F)`` gives, for the feature matrix ``F`` (columns
in the candidate's ``features_`` order), P(response | treated), P(response |
control) and the model's own interval (the served interval):

- ``arm_only``: the two rates and the trial average's Miettinen-Nurminen interval;
- ``risk_model``, ``interaction_logistic``: the champion's own ``predict_arms``
  (a few array operations) and the 100 refits stacked into one set of matrices:
  every refit is ``logit P(arm) = c_arm + ((x - mean) / scale) @ w_arm``;
- ``t_learner``, ``dr_learner``: every booster of the champion and the refits
  flattened into one :class:`~core.runtime.forests.TreeArrays` and walked at
  once for a few patients; for larger batches LightGBM's own ``predict`` per
  booster (the same numbers; the arrays lose to it past a few rows);
- ``bcf``: the posterior forests flattened (200 draws x 150 trees) and walked
  in a compiled loop (:meth:`~core.runtime.forests.TreeArrays.predict_compiled`)
  for one patient or 10^5: stochtree's model (its JSON: seconds to parse, for
  every retained draw, not only the served ones) is never rebuilt for scoring.

Each plan equals the candidate's ``predict_arms`` and the artefact's
``model_interval`` to 1e-12 (tests/test_scoring_plan.py), and the two tree
paths equal each other.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.runtime.forests import TreeArrays, concat_forests, flatten_lightgbm
from core.runtime.intervals import bootstrap_interval, posterior_interval, refit_scaling, trial_average_interval

# Rows x trees up to which walking the flattened arrays beats the libraries' own predict calls: measured on
# 2 cores, 202 LightGBM boosters (12,000 trees) took 0.5 ms for 1 row as arrays against 11 ms through
# Booster.predict, and BCF's 30,000 posterior trees 0.4 ms against stochtree's 1.6 ms; both cross over
# at a few rows.
ARRAY_CELLS = 120_000
# Rows per block in the stacked linear refits (rows x refits x features floats at a time).
LINEAR_BLOCK_CELLS = 2_000_000


def compile_arms(candidate: Any, ensemble: Any, level: float):
    """The plan of a fitted candidate and its ensemble (None for candidates with posterior draws).

    The candidate says which form it takes and hands over its arrays
    (``candidate.scoring()``, :class:`core.candidates.base.Scoring`): nothing
    here knows a model by name or reads its fitted attributes.
    """
    kind = candidate.scoring().kind
    if kind == "constant":
        return ConstantArms(candidate, level)
    if kind == "linear":
        return LinearArms(candidate, _members(candidate, ensemble))
    if kind == "trees":
        return TreeArms(candidate, _members(candidate, ensemble))
    if kind == "posterior_forest":
        return PosteriorForestArms(candidate, level)
    raise ValueError(f"no scoring plan for the form {kind!r} of candidate {candidate.name!r}")


def _members(candidate: Any, ensemble: Any) -> tuple[list[Any], float, tuple]:
    """The bootstrap refits, their level and (groups, factors); none (explanations only, as in some tests) until an interval is asked for."""
    if ensemble is None:
        return [], float("nan"), (None, None)
    return list(ensemble.models_), float(ensemble.level), refit_scaling(ensemble)


def _need_refits(candidate_name: str, refits: int) -> None:
    if refits == 0:
        raise ValueError(f"{candidate_name} needs a bootstrap ensemble for its interval")


class ConstantArms:
    """The arm-only floor: every patient gets the two rates and the trial average's Miettinen-Nurminen interval."""

    uses_features = False  # a batch's feature matrix need not be made for it (only its length is read)

    def __init__(self, candidate: Any, level: float):
        arrays = candidate.scoring().arrays
        self.p1, self.p0 = float(arrays["p_treated"]), float(arrays["p_control"])
        lower, upper = trial_average_interval(arrays["counts"], level)
        benefit = self.p1 - self.p0
        self.lower, self.upper = min(lower, benefit), max(upper, benefit)

    def point(self, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.full(len(F), self.p1), np.full(len(F), self.p0)

    def predict(self, F: np.ndarray) -> tuple[np.ndarray, ...]:
        n = len(F)
        return np.full(n, self.p1), np.full(n, self.p0), np.full(n, self.lower), np.full(n, self.upper)


def linear_form(model: Any) -> tuple[np.ndarray, np.ndarray, float, float]:
    """A fitted linear candidate as ``logit P(arm) = c_arm + z @ w_arm`` on standardised features z: (w1, w0, c1, c0)."""
    scoring = model.scoring()
    if scoring.kind != "linear":
        raise ValueError(f"{model.name} is not a linear candidate")
    a = scoring.arrays
    return np.asarray(a["w1"], dtype=float), np.asarray(a["w0"], dtype=float), float(a["c1"]), float(a["c0"])


class LinearArms:
    """A linear champion and its refits: the refits' parameters stacked, one product for all of them."""

    def __init__(self, candidate: Any, members: tuple[list[Any], float, tuple]):
        refits, self.level, self.scaling = members
        self.candidate = candidate
        forms = [linear_form(m) for m in refits]
        scalers = [m.scoring().arrays for m in refits]
        d = len(candidate.features_)
        self.mean = np.array([s["mean"] for s in scalers]).reshape(-1, d)  # (refits, d)
        self.scale = np.array([s["scale"] for s in scalers]).reshape(-1, d)
        self.w1 = np.array([f[0] for f in forms]).reshape(-1, d)
        self.w0 = np.array([f[1] for f in forms]).reshape(-1, d)
        self.c1 = np.array([f[2] for f in forms])
        self.c0 = np.array([f[3] for f in forms])

    def refit_benefits(self, F: np.ndarray) -> np.ndarray:
        """(n, refits) benefit of every refit."""
        n, d = F.shape
        block = max(1, LINEAR_BLOCK_CELLS // max(1, self.mean.size))
        out = np.empty((n, len(self.c1)))
        for start in range(0, n, block):
            Z = (F[start : start + block, None, :] - self.mean) / self.scale  # each refit has its own scaler
            eta1 = np.einsum("nmd,md->nm", Z, self.w1) + self.c1
            eta0 = np.einsum("nmd,md->nm", Z, self.w0) + self.c0
            out[start : start + block] = _expit(eta1) - _expit(eta0)
        return out

    def point(self, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.candidate.predict_arms(F)

    def predict(self, F: np.ndarray) -> tuple[np.ndarray, ...]:
        _need_refits(self.candidate.name, len(self.c1))
        p1, p0 = self.candidate.predict_arms(F)
        lower, upper = bootstrap_interval(self.refit_benefits(F), p1 - p0, self.level, *self.scaling)
        return p1, p0, lower, upper


class TreeArms:
    """LightGBM T-/DR-learner champion and refits: every booster in one flattened forest (or called one by one)."""

    uses_lightgbm = True  # a serving process caps LightGBM's threads (serving.scoring.Scorer)

    def __init__(self, candidate: Any, members: tuple[list[Any], float, tuple]):
        refits, self.level, self.scaling = members
        self.candidate = candidate
        self.kind = candidate.name
        parts = [m.scoring().arrays for m in (candidate, *refits)]
        self.other_is = parts[0]["other_is"]  # "control": P(control); "effect": the benefit (DR)
        self.boosters: list[Any] = []
        forests: list[TreeArrays] = []
        sigmoid: list[float] = []  # 0 marks a raw (regression) output
        constants: list[float] = []

        def column(part: Any) -> int:
            """Output column of a booster, or -(k + 1) for the k-th constant arm (a float: its smoothed rate)."""
            if isinstance(part, float):
                constants.append(part)
                return -len(constants)
            booster = part
            arrays, objective, scale = flatten_lightgbm(booster)
            self.boosters.append(booster)
            forests.append(arrays)
            sigmoid.append(scale if objective == "binary" else 0.0)
            return len(self.boosters) - 1

        first = [column(p["treated"]) for p in parts]
        other = [column(p["other"]) for p in parts]
        self.forest = concat_forests(forests) if forests else None
        self.sigmoid = np.asarray(sigmoid)
        self.constants = np.asarray(constants)
        n_out = len(self.boosters)
        self.first = np.asarray([c if c >= 0 else n_out - 1 - c for c in first])  # constants after the boosters
        self.other = np.asarray([c if c >= 0 else n_out - 1 - c for c in other])
        self.refits = len(refits)

    def outputs(self, F: np.ndarray) -> np.ndarray:
        """(n, boosters + constants): each booster's prediction (probability or raw regression output)."""
        n = len(F)
        if not self.boosters:
            out = np.empty((n, 0))
        elif self.forest is not None and n * len(self.forest.roots) <= ARRAY_CELLS:
            raw = self.forest.predict(F)
            binary = self.sigmoid > 0
            out = raw.copy()
            out[:, binary] = 1.0 / (1.0 + np.exp(-self.sigmoid[binary] * raw[:, binary]))
        else:
            out = np.column_stack([b.predict(F, num_threads=1) for b in self.boosters])
        return np.column_stack([out, np.broadcast_to(self.constants, (n, len(self.constants)))]) if len(self.constants) else out

    def benefits(self, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p1, p0) of every model, champion first: two (n, models) arrays."""
        out = self.outputs(F)
        p1 = out[:, self.first]
        if self.other_is == "control":
            return p1, out[:, self.other]
        return p1, np.clip(p1 - out[:, self.other], 0.0, 1.0)  # DR: P(control) from the effect model

    def point(self, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.candidate.predict_arms(F)  # two boosters: cheaper than walking every refit's trees

    def predict(self, F: np.ndarray) -> tuple[np.ndarray, ...]:
        _need_refits(self.kind, self.refits)
        p1, p0 = self.benefits(F)
        lower, upper = bootstrap_interval(p1[:, 1:] - p0[:, 1:], p1[:, 0] - p0[:, 0], self.level, *self.scaling)
        return p1[:, 0], p0[:, 0], lower, upper


class PosteriorForestArms:
    """BCF: the posterior draws of both forests, from the flattened arrays in a compiled loop (any batch size)."""

    threads = 1  # rows split over this many threads (``responders predict`` sets it; a serving worker uses one)

    def __init__(self, candidate: Any, level: float):
        self.level = level
        arrays = candidate.scoring().arrays
        self.mu, self.tau = arrays["mu"], arrays["tau"]
        self.mu_offset = float(arrays["mu_offset"])
        self.tau_offset = np.asarray(arrays["tau_offset"], dtype=float)
        self.trees = len(self.mu.roots) + len(self.tau.roots)
        self.control_code = float(arrays["control_code"])

    def probit_draws(self, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, draws) posterior draws of the control arm's probit and of the effect tau (treated: control + tau)."""
        tau = self.tau.predict_compiled(F, self.threads) + self.tau_offset[None, :]
        return self.mu.predict_compiled(F, self.threads) + self.mu_offset + self.control_code * tau, tau

    def point(self, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, tau = self.probit_draws(F)
        return _ndtr(mu + tau).mean(axis=1), _ndtr(mu).mean(axis=1)

    def predict(self, F: np.ndarray) -> tuple[np.ndarray, ...]:
        """Both arms' posterior means and the equal-tailed interval of the benefit draws (:func:`posterior_interval`).

        With ``threads`` > 1 and a large batch the rows are split over that many
        threads, each doing the whole computation for its rows (the compiled walk,
        ``ndtr`` and the quantiles all release the GIL); a row's numbers do not
        depend on the other rows, so they are the same either way.
        """
        parts = max(1, min(int(self.threads), len(F) // PARALLEL_ROWS))
        if parts == 1:
            return self._predict(F)
        from concurrent.futures import ThreadPoolExecutor

        chunks = np.array_split(F, parts * 4)  # several chunks a thread: one slow chunk does not idle the others
        with ThreadPoolExecutor(parts) as pool:
            results = list(pool.map(self._predict, chunks))
        return tuple(np.concatenate(column) for column in zip(*results, strict=True))

    def _predict(self, F: np.ndarray) -> tuple[np.ndarray, ...]:
        tau = self.tau.predict_compiled(F) + self.tau_offset[None, :]
        mu = self.mu.predict_compiled(F) + self.mu_offset + self.control_code * tau
        treated, control = _ndtr(mu + tau), _ndtr(mu)
        p1, p0 = treated.mean(axis=1), control.mean(axis=1)
        return (p1, p0, *posterior_interval(treated - control, p1 - p0, self.level))


def _expit(x: np.ndarray) -> np.ndarray:
    from scipy.special import expit  # SciPy on first use: a stored plan of an arm-only champion never imports it

    return expit(x)


def _ndtr(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(x)


# Rows per thread below which a batch is scored on one thread (thread start-up costs more than it saves).
PARALLEL_ROWS = 2_000


def limit_lightgbm_threads() -> None:
    """Make LightGBM use one OpenMP thread in this process (a serving process answers a few patients at a time).

    LightGBM predicts with every core by default; for one patient the threads
    only wait for each other, and on a loaded 2-core machine one
    ``pred_contrib`` call took 16 ms with the default against 0.03 ms with one
    thread. BentoML's workers, not OpenMP, use the cores. LightGBM's C API has
    the process-wide setting (``LGBM_SetMaxThreads``); its Python package has no
    wrapper for it.
    """
    from core.compat.lightgbm import set_max_threads

    set_max_threads(1)
