"""Parametric tests of named effect modifiers: what the recovery benchmark reads the product's test against.

The product's heterogeneity test does not know which baseline values modify
the effect. Two parametric likelihood-ratio tests that are *told* show what
power knowing them buys (a yardstick, not a proven upper bound):

- **prespecified modifiers**: arm x the spec's ``prespecified_modifiers``
  (FINAL: one modifier, the mean of the standardised ``inflammation_index``
  and ``autoantibody_index``, the experts' hypothesis; 1 df, one-sided as the
  spec's ``prespecified_direction`` says), the test a trial statistician
  would prespecify;
- **oracle modifier**: arm x the simulator's hidden profile score
  (``true_profile_score``, the one score the simulated benefit rises with;
  1 df). No product code sees it; only a simulator can run this test, and
  only as a yardstick.

Both fit ``probit P(y = 1) = a + b1 s + b2 s^2 + c' m + g t (+ d' t m)``,
``s`` the standardised cross-fitted PATH risk score (:mod:`training.path`, its
prognostic model blind to arm) and ``m`` the standardised modifiers, and read
the likelihood-ratio statistic against chi-square (asymptotic, no
calibration: the null designs of section 1 show its level; with a direction,
the signed root read one-sided from the normal). The statistic is the
product's (:mod:`training.modifiers`): the default test calibrates it by its
null trials and joins it to BCF's spread; these rows read it uncalibrated.

A third reading (:func:`parametric_bootstrap_test`) calibrates the same
statistic by a parametric bootstrap from its own fitted null model instead of
the product's imputed randomisation, so section 1 shows what the product's
construction (which keeps the real outcomes of patients whose arm does not
change) costs in power and what the parametric one costs in level.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.modifiers import modifier_lr_test, modifier_matrix

__all__ = ["ORACLE_COLUMN", "composite_modifiers", "modifier_lr_test", "parametric_bootstrap_test"]

ORACLE_COLUMN = "true_profile_score"


def composite_modifiers(F: pd.DataFrame, names: list[str]) -> np.ndarray | None:
    """The spec's prespecified modifiers (``names``) from the engineered features, or None when it names none."""
    return modifier_matrix(F, names) if names else None


def parametric_bootstrap_test(
    F: pd.DataFrame, modifiers: np.ndarray, t: np.ndarray, y: np.ndarray, config, direction: str, replicates: int, h: int, seed: int
) -> dict:
    """The product's modifier statistic calibrated by a parametric bootstrap from its own null model (a comparison row).

    The null model is the statistic's reduced probit model, ``P(y = 1) = Phi(a + b1 s + b2 s^2 + c'm + g t)``
    fitted to the trial (``s`` the standardised cross-fitted PATH risk score, ``m`` the standardised modifiers); each
    bootstrap trial keeps the patients and arms, draws every outcome from that fit, and recomputes the whole statistic
    (the risk score refitted to the drawn outcomes). Besag-Clifford's sequential p-value (stop once ``h`` bootstrap
    statistics reach the observed one, at most ``replicates``). Unlike the imputed randomisation of the product's test,
    no null trial keeps a real outcome, so none inherits part of a real modification; in exchange the p-value is exact
    only if the fitted probit model were the truth.

    Returns ``{"p", "stat", "permutations_run"}`` or ``{"error"}`` (the observed statistic cannot be computed).
    """
    from scipy.stats import norm
    from statsmodels.discrete.discrete_model import Probit

    from training.inference import sequential_p_value
    from training.modifiers import _standardised, modifier_statistic
    from training.path import risk_score

    t, y = np.asarray(t).astype(int), np.asarray(y).astype(int)
    try:
        risk = risk_score(F, y, config)
    except ValueError as exc:
        return {"error": f"risk score: {exc}"[:200]}
    observed = modifier_lr_test(risk, modifiers, t, y, direction)
    if "error" in observed:
        return {"error": observed["error"]}
    s, m = _standardised(risk)[:, 0], _standardised(modifiers)
    X = np.column_stack([np.ones_like(s), s, s**2, m, t])
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = norm.cdf(X @ Probit(y.astype(float), X).fit(disp=0, maxiter=200).params)
    except Exception as exc:  # separation, singular design: reported, not guessed
        return {"error": f"null model: {type(exc).__name__}: {exc}"[:200]}
    rng = np.random.default_rng([seed, 4244])
    null, hits = [], 0
    for _ in range(replicates):
        drawn = (rng.random(len(y)) < fitted).astype(int)
        # A drawn trial whose statistic cannot be computed counts as reaching the observed one (conservative).
        value = modifier_statistic(F, modifiers, t, drawn, config, direction) if drawn.min() < drawn.max() else float("inf")
        null.append(value)
        hits += value >= observed["stat"] - 1e-12
        if h and hits >= h:
            break
    p, used = sequential_p_value(np.asarray(null), observed["stat"], h, replicates)
    return {"p": p, "stat": observed["stat"], "permutations_run": used}
