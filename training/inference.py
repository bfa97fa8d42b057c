"""What every heterogeneity test returns, and the p-value rules they share.

- :class:`PermutationResult`: the statistic, its null values and p-value, and
  which test and null produced them.
- :func:`sequential_p_value` / :func:`sequential_null`: Besag & Clifford's
  sequential Monte-Carlo p-value (Biometrika 1991;78:301-304): null statistics
  run in a fixed order and stop once ``h`` of them reach the observed one
  (``p = h / L`` after ``L``), otherwise after ``B``
  (``p = (1 + #{T_null >= T_obs}) / (1 + B)``); valid at every stopping point.
- :func:`fisher_p_value` / :func:`combined_null`: two or more statistics on
  the same null trials joined by Fisher's combination of their Monte-Carlo
  p-values, with a futility stop (an independent-statistics bound, and
  stochastic curtailment once the whole budget could hardly still reject).
- :func:`holm`: Holm's step-down adjustment across the job's outcomes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from core.progress import task_progress
from training.executor import Executor

STATISTIC_LABELS = {
    "beyond_risk": "best Qini-weighted RATE for benefit beyond the risk model",
    "rate": "best Qini-weighted RATE over candidates",
    "bcf_spread": "SD across patients of BCF's posterior-mean treatment effect (probit scale) beyond a cubic in its prognosis on control",
    "bcf_spread_modifiers": "Fisher's combination (-sum of log Monte-Carlo p-values) of two statistics on the same null trials: "
    "the SD across patients of BCF's posterior-mean treatment effect (probit scale) beyond a cubic in its prognosis on control, "
    "and the probit likelihood-ratio statistic of arm x the prespecified modifiers (its signed root when the spec gives their direction)",
    "bcf_spread_or_modifiers": "SD across patients of BCF's posterior-mean treatment effect (probit scale) beyond a cubic in its "
    "prognosis on control, the first of two statistics: the test's p-value is the smaller of its own and the prespecified "
    "modifiers' (a parametric bootstrap of their probit likelihood-ratio statistic), doubled (Bonferroni)",
    "bcf_spread_modifiers_or_bootstrap": "Fisher's combination (-sum of log Monte-Carlo p-values) of two statistics on the same "
    "null trials (BCF's effect spread beyond a cubic in its prognosis on control, and the prespecified modifiers' probit "
    "likelihood-ratio statistic), the first of two tests: the test's p-value is the smaller of its own and the modifiers' "
    "statistic calibrated by a parametric bootstrap, doubled (Bonferroni)",
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


def fisher_statistics(statistics: np.ndarray) -> np.ndarray:
    """Fisher's combination for every trial of a Monte-Carlo set: ``-sum_j log p_ij`` of its marginal p-values."""
    return -np.log(marginal_p_values(statistics)).sum(axis=1)


def fisher_p_value(statistics: np.ndarray) -> float:
    """The p-value of Fisher's combination from a Monte-Carlo set: row 0 the observed trial, the others null trials.

    ``statistics``: (1 + L) x J, larger is more extreme in every column. Each
    trial's p-value for each statistic is its rank among all 1 + L trials
    (``#{i: T_ij >= T_kj} / (1 + L)``, itself counted); its combined value is
    Fisher's ``-sum_j log p_kj``; the p-value is the observed combined value's
    rank among every trial's. Under the null the 1 + L trials are
    exchangeable, so the rank is uniform: an exact test of the combination
    whatever the statistics' dependence, which only the null trials know.
    """
    combined = fisher_statistics(statistics)
    return float(np.sum(combined >= combined[0] - 1e-12) / len(combined))


def independent_fisher_tail(x: float, k: int) -> float:
    """P(product of k independent uniforms <= x): the p-value Fisher's combination would have with independent statistics."""
    if x >= 1:
        return 1.0
    log = -np.log(x)
    return float(x * sum(log**i / math.factorial(i) for i in range(k)))


# Curtailment of the combined test (:func:`_curtailed`): looked at after 20, 40, 60, ... null trials; stops when the
# chance that the whole budget would still reject is below 0.1%. Looks more often or a larger chance gave up more of
# the whole budget's rejections on simulated Monte-Carlo sets; tests/test_honest_answers.py bounds what it gives up
# (at most 2% of the rejections) and what it runs on alternatives far from rejecting.
CURTAIL_FIRST, CURTAIL_EVERY, CURTAIL_CHANCE = 20, 20, 0.001


def _curtailed(null: np.ndarray, observed: np.ndarray, alpha: float, budget: int) -> int | None:
    """The first look (after 20, 40, ... null trials) at which the whole budget could hardly still reject, or None.

    With ``k`` of the first ``b`` null trials reaching the observed combination (ranks among those ``b + 1``), the
    budget rejects only if at most ``k* = alpha (B + 1) - 1`` of all ``B`` do. The chance of that is the
    beta-binomial probability that the remaining ``B - b`` add at most ``k* - k``, the rate of reaching having a
    uniform prior updated by the ``b`` seen (stochastic curtailment). Stops when it is below
    :data:`CURTAIL_CHANCE`, or once ``k > k*``; either only while the current estimate ``(1 + k) / (1 + b)`` (the
    p-value a stop reports) is above ``alpha``.
    Like every futility stop it only turns rejections into non-rejections: the level stays the whole budget's.
    """
    from scipy.stats import betabinom

    most = int(math.floor(alpha * (budget + 1) + 1e-9)) - 1
    for b in range(CURTAIL_FIRST, min(len(null), budget - 1) + 1, CURTAIL_EVERY):
        combined = fisher_statistics(np.vstack([observed, null[:b]]))
        k = int(np.sum(combined[1:] >= combined[0] - 1e-12))
        if (1 + k) / (1 + b) > alpha and (k > most or betabinom.cdf(most - k, budget - b, k + 1, b - k + 1) < CURTAIL_CHANCE):
            return b
    return None


def _futility_stop(null: np.ndarray, observed: np.ndarray, alpha: float, budget: int) -> int | None:
    """How many of ``null``'s trials the futility rule runs, or None when it has not stopped within them.

    Two stops, the earlier wins: the observed trial's own p-values (which more null trials can only raise) would
    put the combination above ``alpha`` even for independent statistics (:func:`independent_fisher_tail`, looked
    at after every null trial); or the curtailment (:func:`_curtailed`). A pure function of the null trials in
    their order, so a benchmark reads the same stop from stored null trials as the job made while running them.
    """
    null = np.asarray(null, dtype=float).reshape(len(null), -1)
    observed = np.asarray(observed, dtype=float).reshape(1, -1)
    hits = np.cumsum(null >= observed - 1e-12, axis=0)
    product = np.prod((1 + hits) / (1 + budget), axis=1)  # the observed p-values can only grow with more null trials
    tail = np.array([independent_fisher_tail(x, null.shape[1]) for x in product])
    reached = np.nonzero(tail > alpha)[0]
    bound = int(reached[0]) + 1 if len(reached) else None
    curtailed = _curtailed(null[: bound or len(null)], observed, alpha, budget)
    return curtailed if curtailed is not None else bound


def combined_p_value(null: np.ndarray, observed: np.ndarray, alpha: float, budget: int) -> tuple[float, int]:
    """Fisher's combination over at most ``budget`` null trials in their fixed order, with a futility stop: (p, used).

    Running stops (:func:`_futility_stop`) once the observed trial's own
    p-values, which more null trials can only raise, would give Fisher's
    combination a p-value above ``alpha`` if the statistics were independent
    (:func:`independent_fisher_tail`), or once the whole budget could hardly
    still reject (:func:`_curtailed`). A stopped test does not reject: its
    p-value is the larger of the rank among the null trials run and the
    independent-statistics bound, and above ``alpha`` (a curtailed stop needs
    its rank above ``alpha``). Stopping only ever turns a rejection into
    a non-rejection, so the test keeps the level of the whole budget's exact
    test whatever the statistics' dependence; the dependence decides only how
    often a stop gives up a rejection the whole budget would have made (with
    positively dependent statistics, rarely: tests/test_honest_answers.py).
    """
    null = np.asarray(null, dtype=float).reshape(len(null), -1)
    observed = np.asarray(observed, dtype=float).reshape(1, -1)
    stop = _futility_stop(null, observed, alpha, budget)
    used = stop if stop is not None else min(len(null), budget)
    if not used:
        return float("nan"), 0
    p_value = fisher_p_value(np.vstack([observed, null[:used]]))
    if stop is not None:
        hits = (null[:used] >= observed - 1e-12).sum(axis=0)
        p_value = max(p_value, independent_fisher_tail(float(np.prod((1 + hits) / (1 + budget))), null.shape[1]))
    return p_value, used


def combined_null(
    fn, seeds: list[int], observed: np.ndarray, alpha: float, executor: Executor, shared, label: str, unit: str, desc: str, min_hits: int = 0
):
    """Null statistics ``fn(seed, shared)`` (one row each) in the seeds' order until the futility rule stops: (null, p, used).

    ``min_hits``: also run until every statistic has been reached this many times (or the budget is spent), so
    that a benchmark can read each statistic alone with Besag-Clifford's rule from the same null trials.
    """
    budget = len(seeds)
    rows: list = []
    batch = max(8, 4 * getattr(executor, "workers", 2))
    observed = np.asarray(observed, dtype=float)
    with task_progress(budget, label, unit) as bar:
        while len(rows) < budget:
            chunk = seeds[len(rows) : len(rows) + batch]
            rows += executor.map(fn, chunk, desc=desc, shared=shared, progress=bar)
            done = np.asarray(rows, dtype=float).reshape(len(rows), -1)
            enough = (done >= observed - 1e-12).sum(axis=0).min() >= min_hits
            if enough and _futility_stop(done, observed, alpha, budget) is not None:
                break
    null = np.asarray(rows, dtype=float).reshape(len(rows), -1)
    p_value, used = combined_p_value(null, observed, alpha, budget)
    return null[: max(used, _hits_reached(null, observed, min_hits))], p_value, used


def _hits_reached(null: np.ndarray, observed: np.ndarray, h: int) -> int:
    """How many null trials it took until every statistic was reached ``h`` times (all of them if it never was)."""
    if h <= 0:
        return 0
    hits = np.cumsum(null >= observed.reshape(1, -1) - 1e-12, axis=0).min(axis=1)
    reached = np.nonzero(hits >= h)[0]
    return int(reached[0]) + 1 if len(reached) else len(null)


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
