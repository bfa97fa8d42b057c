"""Parametric tests of named effect modifiers: what the recovery benchmark reads the product's test against.

The product's heterogeneity test does not know which baseline values modify
the effect. Two parametric likelihood-ratio tests that are *told* show what
power knowing them buys (a yardstick, not a proven upper bound):

- **prespecified composites**: arm x the engineered ``inflammation_index`` and
  ``autoantibody_burden`` (the modifiers the experts name; 2 df), the test a
  trial statistician would prespecify;
- **oracle modifier**: arm x the simulator's hidden profile score
  (``true_profile_score``, the one score the simulated benefit rises with;
  1 df). No product code sees it; only a simulator can run this test, and
  only as a yardstick.

Both fit ``probit P(y = 1) = a + b1 s + b2 s^2 + c' m + g t (+ d' t m)``,
``s`` the standardised cross-fitted PATH risk score (:mod:`training.path`, its
prognostic model blind to arm) and ``m`` the standardised modifiers, and read
the likelihood-ratio statistic against chi-square (asymptotic, no
calibration: the null designs of section 1 show its level).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

COMPOSITES = ("inflammation_index", "autoantibody_burden")
ORACLE_COLUMN = "true_profile_score"


def _standardised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def modifier_lr_test(risk: np.ndarray, modifiers: np.ndarray, t: np.ndarray, y: np.ndarray) -> dict:
    """Probit likelihood-ratio test of arm x ``modifiers`` adjusted for a quadratic in the risk score (module docstring).

    Returns ``{"p": ..., "stat": LR, "df": ...}``, or ``{"error": ...}`` when a fit fails (separation, singular design).
    """
    from statsmodels.discrete.discrete_model import Probit  # not statsmodels.api: that imports every submodule

    s = _standardised(risk)[:, 0]
    m = _standardised(modifiers)
    t = np.asarray(t, dtype=float)
    base = np.column_stack([np.ones_like(s), s, s**2, m, t])
    full = np.column_stack([base, t[:, None] * m])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reduced = Probit(np.asarray(y, dtype=float), base).fit(disp=0, maxiter=200)
            fitted = Probit(np.asarray(y, dtype=float), full).fit(disp=0, maxiter=200)
    except Exception as exc:  # perfect separation, singular design: reported, not guessed
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}
    lr = float(max(0.0, 2.0 * (fitted.llf - reduced.llf)))
    return {"p": float(stats.chi2.sf(lr, m.shape[1])), "stat": lr, "df": int(m.shape[1])}


def composite_modifiers(F: pd.DataFrame) -> np.ndarray | None:
    """The prespecified composites from the engineered features, or None when a spec does not engineer them."""
    if not all(c in F.columns for c in COMPOSITES):
        return None
    return F[list(COMPOSITES)].to_numpy(dtype=float)
