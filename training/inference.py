"""What every heterogeneity test returns, and the p-value rules they share.

- :class:`PermutationResult`: the statistic, its null values and p-value, and
  which test and null produced them.
- :func:`sequential_p_value` / :func:`sequential_null`: Besag & Clifford's
  sequential Monte-Carlo p-value (Biometrika 1991;78:301-304): null statistics
  run in a fixed order and stop once ``h`` of them reach the observed one
  (``p = h / L`` after ``L``), otherwise after ``B``
  (``p = (1 + #{T_null >= T_obs}) / (1 + B)``); valid at every stopping point.
- :func:`min_p_value` / :func:`curtailed_null`: two or more statistics on the
  same null trials joined by the min-p combination, with curtailed sampling
  (stop once the verdict at ``alpha`` cannot change).
- :func:`holm`: Holm's step-down adjustment across the job's outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.progress import task_progress
from training.executor import Executor

STATISTIC_LABELS = {
    "beyond_risk": "best Qini-weighted RATE for benefit beyond the risk model",
    "rate": "best Qini-weighted RATE over candidates",
    "bcf_spread": "SD across patients of BCF's posterior-mean treatment effect (probit scale) beyond a cubic in its prognosis on control",
    "bcf_spread_modifiers": "-log10 of the smaller Monte-Carlo p-value of two statistics on the same null trials: the SD across "
    "patients of BCF's posterior-mean treatment effect (probit scale) beyond a cubic in its prognosis on control, and the "
    "probit likelihood-ratio statistic of arm x the prespecified modifiers",
    "bcf_held_out": "z of the held-out slope of doubly-robust benefit on BCF's posterior-mean treatment effect (probit scale) "
    "beyond a cubic in its prognosis on control",
}


@dataclass
class PermutationResult:
    """The heterogeneity test's result (``method`` says which test; ``null`` holds permuted statistics)."""

    statistic: float
    per_candidate: dict[str, float]
    null: np.ndarray
    p_value: float
    kind: str = "rate"
    method: str = "permutation"
    permutations_run: int = 0
    stopped_early: bool = False
    details: dict = field(default_factory=dict)
    # A combined test (kind bcf_spread_modifiers): every null trial's statistics (null trials x statistics, in the
    # order of ``null``) and the observed ones; ``null`` then holds the combination's values.
    null_components: np.ndarray | None = None
    observed_components: np.ndarray | None = None

    @property
    def label(self) -> str:
        """What the statistic measures, for plots and reports."""
        text = STATISTIC_LABELS[self.kind]
        return f"{text} (split-sample, z)" if self.method == "split_rate" else text

    @property
    def tested(self) -> bool:
        return bool(np.isfinite(self.p_value))


def sequential_p_value(null: np.ndarray, observed: float, h: int, budget: int) -> tuple[float, int]:
    """Besag-Clifford p-value from permuted statistics in their fixed order: (p, permutations used)."""
    hits = np.cumsum(null >= observed - 1e-12)
    if h > 0:
        reached = np.nonzero(hits >= h)[0]
        if len(reached):
            used = int(reached[0]) + 1
            return h / used, used
    used = min(len(null), budget)
    return float((1 + hits[used - 1]) / (1 + used)) if used else float("nan"), used


def sequential_null(fn, seeds: list[int], observed: float, h: int, executor: Executor, shared, label: str, unit: str, desc: str):
    """Null statistics ``fn(seed, shared)`` in the seeds' order until Besag-Clifford's rule stops: (null, p, used).

    Batches keep the workers busy while the sequential rule can stop at the
    first batch that reaches ``h``; one progress counter runs over the budget.
    """
    budget = len(seeds)
    null: list[float] = []
    batch = max(8, 4 * getattr(executor, "workers", 2))
    with task_progress(budget, label, unit) as bar:
        while len(null) < budget:
            chunk = seeds[len(null) : len(null) + batch]
            null += executor.map(fn, chunk, desc=desc, shared=shared, progress=bar)
            if h and np.sum(np.asarray(null) >= observed - 1e-12) >= h:
                break
    p_value, used = sequential_p_value(np.asarray(null), observed, h, budget)
    return np.asarray(null[:used]), p_value, used


def min_p_value(statistics: np.ndarray) -> float:
    """The min-p combination's p-value from a Monte-Carlo set: row 0 the observed trial, the others null trials.

    ``statistics``: (1 + L) x J, larger is more extreme in every column. Each
    trial's p-value for each statistic is its rank among all 1 + L trials
    (``#{i: T_ij >= T_0j} / (1 + L)``, itself counted); its combined value is the
    smallest of them; the p-value is the observed combined value's rank among
    every trial's (``#{i: m_i <= m_0} / (1 + L)``). Under the null the 1 + L
    trials are exchangeable, so the rank is uniform: an exact test of the
    combination, and never below the smallest marginal p-value.
    """
    combined = marginal_p_values(statistics).min(axis=1)
    return float(np.sum(combined <= combined[0] + 1e-12) / len(combined))


def marginal_p_values(statistics: np.ndarray) -> np.ndarray:
    """Each trial's Monte-Carlo p-value for each statistic: its rank among all rows (``#{i: T_ij >= T_kj} / rows``)."""
    T = np.asarray(statistics, dtype=float)
    total = T.shape[0]
    marginal = np.empty_like(T)
    for j in range(T.shape[1]):
        ordered = np.sort(T[:, j])
        # How many trials reach each trial's value (ties count as reaching it).
        marginal[:, j] = (total - np.searchsorted(ordered, T[:, j] - 1e-12, side="left")) / total
    return marginal


def curtailed_p_value(null: np.ndarray, observed: np.ndarray, alpha: float, budget: int) -> tuple[float, int]:
    """The min-p combination over at most ``budget`` null trials in their fixed order, curtailed: (p, null trials used).

    Running stops at the first null trial after which every statistic has been
    reached so often that the observed min-p, and so the combined p-value,
    must exceed ``alpha`` whatever the remaining null trials give
    (``1 + min_j #{T_ij >= T_0j} > alpha (1 + budget)``). A curtailed test's
    verdict at any level up to ``alpha`` is the verdict of the whole budget;
    its p-value is that of the null trials run (above ``alpha``).
    """
    null = np.asarray(null, dtype=float).reshape(len(null), -1)
    observed = np.asarray(observed, dtype=float).reshape(1, -1)
    stop = _curtailed_stop(null, observed, alpha, budget)
    used = stop if stop is not None else min(len(null), budget)
    if not used:
        return float("nan"), 0
    return min_p_value(np.vstack([observed, null[:used]])), used


def _curtailed_stop(null: np.ndarray, observed: np.ndarray, alpha: float, budget: int) -> int | None:
    """How many of ``null``'s trials the curtailed rule runs, or None when it has not stopped within them."""
    null = np.asarray(null, dtype=float).reshape(len(null), -1)
    hits = np.cumsum(null >= np.asarray(observed, dtype=float).reshape(1, -1) - 1e-12, axis=0).min(axis=1)
    reached = np.nonzero(1 + hits > alpha * (1 + budget) + 1e-12)[0]
    return int(reached[0]) + 1 if len(reached) else None


def curtailed_null(fn, seeds: list[int], observed: np.ndarray, alpha: float, executor: Executor, shared, label: str, unit: str, desc: str):
    """Null statistics ``fn(seed, shared)`` (one row each) in the seeds' order until the curtailed rule stops: (null, p, used)."""
    budget = len(seeds)
    rows: list = []
    batch = max(8, 4 * getattr(executor, "workers", 2))
    with task_progress(budget, label, unit) as bar:
        while len(rows) < budget:
            chunk = seeds[len(rows) : len(rows) + batch]
            rows += executor.map(fn, chunk, desc=desc, shared=shared, progress=bar)
            if _curtailed_stop(np.asarray(rows), observed, alpha, budget) is not None:
                break
    null = np.asarray(rows, dtype=float).reshape(len(rows), -1)
    p_value, used = curtailed_p_value(null, observed, alpha, budget)
    return null[:used], p_value, used


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment across outcomes (NaN p-values are left out)."""
    tested = sorted(((p, k) for k, p in p_values.items() if not np.isnan(p)))
    m = len(tested)
    adjusted: dict[str, float] = {k: float("nan") for k in p_values}
    running = 0.0
    for i, (p, key) in enumerate(tested):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[key] = running
    return adjusted
