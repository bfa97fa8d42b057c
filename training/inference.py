"""What every heterogeneity test returns, and the p-value rules they share.

- :class:`PermutationResult`: the statistic, its null values and p-value, and
  which test and null produced them.
- :func:`sequential_p_value` / :func:`sequential_null`: Besag & Clifford's
  sequential Monte-Carlo p-value (Biometrika 1991;78:301-304): null statistics
  run in a fixed order and stop once ``h`` of them reach the observed one
  (``p = h / L`` after ``L``), otherwise after ``B``
  (``p = (1 + #{T_null >= T_obs}) / (1 + B)``); valid at every stopping point.
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
