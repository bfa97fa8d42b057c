"""Benefit intervals: the arithmetic shared by training (the served model's interval, its patient labels) and scoring.

- :func:`posterior_interval`: equal-tailed interval of posterior draws (BCF),
  stretched to contain the point estimate;
- :func:`trial_average_interval`: the Miettinen-Nurminen interval of the
  trial's risk difference (the arm-only floor: the trial average answer);
- :func:`bootstrap_interval`: the median-centred percentile interval of
  bootstrap refits (the other candidates), rescaled to the trial's size when
  the refits were on smaller resamples (m-out-of-n);
- :func:`with_allowance`: a conditional answer's interval on a large trial,
  widened by the model's out-of-fold calibration error (measured by
  ``training.metrics.calibration_error`` and stored with the model).

All are intervals for the served estimand (a conditional average, risk-based
or trial average benefit), never for one patient's own benefit.
"""

from __future__ import annotations

import numpy as np


def posterior_interval(draws: np.ndarray, benefit: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed ``level`` interval of the (n, draws) benefit draws, containing ``benefit``."""
    from core.runtime.forests import row_quantiles  # np.quantile's floats, in a compiled loop that releases the GIL

    tail = (1 - level) / 2
    lower, upper = row_quantiles(draws, [tail, 1 - tail])
    return np.minimum(lower, benefit), np.maximum(upper, benefit)


def trial_average_interval(counts: tuple[int, int, int, int], level: float) -> tuple[float, float]:
    """Miettinen-Nurminen ``level`` interval of the risk difference from (responders, patients) treated, then control.

    The interval of the trial's average effect (:func:`core.effects.score_interval`, unadjusted for multiplicity):
    what the arm-only floor serves, so the trial average answer carries the same numbers as the trial's effect.
    """
    from core.effects import score_interval

    r1, n1, r0, n0 = (int(c) for c in counts)
    if n1 == 0 or n0 == 0:
        return -1.0, 1.0  # an arm without patients: the difference is not estimated
    return score_interval(r1, n1, r0, n0, level)


def bootstrap_interval(
    draws: np.ndarray, point: np.ndarray, level: float, groups: np.ndarray | None = None, factors: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Median-centred percentile interval: the (n, refits) refits' spread placed around the point estimate.

    A plain percentile interval of refits need not contain the full-data
    estimate (trees refitted on resamples shift); centring keeps the width
    and asymmetry of the bootstrap distribution and always contains it.

    ``groups`` and ``factors`` (one per refit; the m-out-of-n bootstrap of
    :class:`core.candidates.BootstrapEnsemble`): each group's deviations from
    its own median, times each refit's factor, pooled. Without them every
    refit is one group with factor 1 (the same quantiles).
    """
    tail = (1 - level) / 2
    if groups is None:
        lo, mid, hi = (np.quantile(draws, q, axis=1) for q in (tail, 0.5, 1 - tail))
        return np.clip(point + (lo - mid), -1, 1), np.clip(point + (hi - mid), -1, 1)
    deviations = np.empty_like(draws, dtype=float)
    for g in np.unique(groups):
        cols = groups == g
        deviations[:, cols] = (draws[:, cols] - np.median(draws[:, cols], axis=1, keepdims=True)) * factors[cols]
    lo, hi = (np.quantile(deviations, q, axis=1) for q in (tail, 1 - tail))
    return np.clip(point + lo, -1, 1), np.clip(point + hi, -1, 1)


def with_allowance(
    benefit: np.ndarray, lower: np.ndarray, upper: np.ndarray, sd: float, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each side's distance from ``benefit`` and ``z * sd`` added in quadrature (``z`` of the two-sided ``level``).

    ``sd``: the model's calibration error (risk difference), an error the refits or draws do not carry. 0 returns
    the interval unchanged. The model's own interval and the error are taken as independent, as a normal
    approximation would: the result contains the point estimate and stays within [-1, 1].
    """
    if not sd:
        return lower, upper
    from statistics import NormalDist

    extra = (NormalDist().inv_cdf(0.5 + level / 2) * float(sd)) ** 2
    benefit = np.asarray(benefit, dtype=float)
    below = np.sqrt((benefit - np.asarray(lower, dtype=float)) ** 2 + extra)
    above = np.sqrt((np.asarray(upper, dtype=float) - benefit) ** 2 + extra)
    return np.clip(benefit - below, -1, 1), np.clip(benefit + above, -1, 1)


def refit_scaling(ensemble: object) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(groups, factors) of an ensemble's refits for :func:`~core.runtime.intervals.bootstrap_interval`; (None, None) at full size.

    Ensembles pickled before the m-out-of-n bootstrap have neither: every refit was at full size.
    """
    groups, factors = getattr(ensemble, "groups_", None), getattr(ensemble, "factors_", None)
    if groups is None or factors is None or (np.all(groups == 0) and np.all(factors == 1)):
        return None, None
    return np.asarray(groups), np.asarray(factors, dtype=float)
