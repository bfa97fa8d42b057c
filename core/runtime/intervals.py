"""Benefit intervals: the arithmetic shared by training (the served model's interval, its patient labels) and scoring.

- :func:`posterior_interval`: equal-tailed interval of posterior draws (arm-only
  floor, BCF), stretched to contain the point estimate;
- :func:`bootstrap_interval`: the median-centred percentile interval of
  bootstrap refits (the other candidates);

Both are intervals for the served estimand (a conditional average, risk-based
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


def bootstrap_interval(draws: np.ndarray, point: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Median-centred percentile interval: the (n, refits) refits' spread placed around the point estimate.

    A plain percentile interval of refits need not contain the full-data
    estimate (trees refitted on resamples shift); centring keeps the width
    and asymmetry of the bootstrap distribution and always contains it.
    """
    tail = (1 - level) / 2
    lo, mid, hi = (np.quantile(draws, q, axis=1) for q in (tail, 0.5, 1 - tail))
    return np.clip(point + (lo - mid), -1, 1), np.clip(point + (hi - mid), -1, 1)
