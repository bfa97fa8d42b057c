"""Benefit intervals: the arithmetic shared by training (which fits the label rule on them) and scoring.

- :func:`posterior_interval`: equal-tailed interval of posterior draws (arm-only
  floor, BCF), stretched to contain the point estimate;
- :func:`bootstrap_interval`: the median-centred percentile interval of
  bootstrap refits (the other candidates);
- :func:`widen`: the stated allowance for unmeasured heterogeneity, added in quadrature.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri


def posterior_interval(draws: np.ndarray, benefit: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed ``level`` interval of the (n, draws) benefit draws, containing ``benefit``."""
    tail = (1 - level) / 2
    lower, upper = np.quantile(draws, [tail, 1 - tail], axis=1)
    return np.minimum(lower, benefit), np.maximum(upper, benefit)


def bootstrap_interval(draws: np.ndarray, point: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Median-centred percentile interval: the (n, refits) refits' spread placed around the point estimate.

    A plain percentile interval of refits need not contain the full-data
    estimate (trees refitted on resamples shift); centring keeps the width
    and asymmetry of the bootstrap distribution and always contains it.
    """
    tail = (1 - level) / 2
    lo, mid, hi = (np.quantile(draws, q, axis=1) for q in (tail, 0.5, 1 - tail))
    return np.clip(point + (lo - mid), -1, 1), np.clip(point + (hi - mid), -1, 1)


def widen(benefit: np.ndarray, lower: np.ndarray, upper: np.ndarray, sd: float, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Add the unmeasured-heterogeneity allowance ``z * sd`` to each half-width in quadrature, within [-1, 1].

    Exact for a normal model uncertainty plus an independent normal deviation;
    keeps the asymmetry of the model's own interval.
    """
    if sd <= 0:
        return lower, upper
    z = float(ndtri(0.5 + level / 2))  # norm.ppf without scipy.stats' per-call overhead (the same function)
    low = benefit - np.sqrt((benefit - lower) ** 2 + (z * sd) ** 2)
    high = benefit + np.sqrt((upper - benefit) ** 2 + (z * sd) ** 2)
    return np.clip(low, -1.0, 1.0), np.clip(high, -1.0, 1.0)
