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

from training.modifiers import modifier_lr_test, modifier_matrix, parametric_bootstrap

__all__ = ["ORACLE_COLUMN", "composite_modifiers", "modifier_lr_test", "parametric_bootstrap_test"]

ORACLE_COLUMN = "true_profile_score"


def composite_modifiers(F: pd.DataFrame, names: list[str]) -> np.ndarray | None:
    """The spec's prespecified modifiers (``names``) from the engineered features, or None when it names none."""
    return modifier_matrix(F, names) if names else None


def parametric_bootstrap_test(
    F: pd.DataFrame, modifiers: np.ndarray, t: np.ndarray, y: np.ndarray, config, direction: str, replicates: int, h: int, seed: int
) -> dict:
    """The product's modifier statistic calibrated by a parametric bootstrap from its own null model (a comparison row).

    :func:`training.modifiers.parametric_bootstrap` (``evidence.combination: bonferroni`` calibrates the modifiers this
    way); returns ``{"p", "stat", "permutations_run"}`` or ``{"error"}``.
    """
    out = parametric_bootstrap(F, modifiers, t, y, config, direction, replicates, h, seed)
    return out if "error" in out else {"p": out["p"], "stat": out["stat"], "permutations_run": out["used"]}
