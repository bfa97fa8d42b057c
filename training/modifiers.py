"""The trial's prespecified effect modifiers, tested by name: the second statistic of the heterogeneity test.

A trial's protocol may name the baseline values expected to modify the
effect (FINAL's experts name inflammation and autoantibody profiles; the spec
lists the engineered composites under ``prespecified_modifiers``). The served
model (BCF) searches every feature and shrinks its effects towards one common
effect, so on a modest modifier its spread is a weak statistic; a test told
where to look is far stronger there (benchmarks/RESULTS.md, section 1, the
told-modifier rows). The heterogeneity test
(:mod:`training.heterogeneity`) therefore joins the two statistics, each
calibrated by the same null trials, with Fisher's combination of their
Monte-Carlo p-values.

The statistic: the likelihood-ratio statistic of arm x modifiers in the probit
model ``P(y = 1) = Phi(a + b1 s + b2 s^2 + c'm + g t + d't m)`` against the
model without ``d``, where ``s`` is the standardised cross-fitted PATH risk
score (:func:`training.path.risk_score`, its prognostic model blind to arm)
and ``m`` the standardised modifiers. The chi-square reading of it does not
hold its level on small trials (section 1: up to 13% on the sharp null at
n = 300), so the test never reads it: its null distribution comes from the
null trials.

**One modifier from several features.** An entry of ``prespecified_modifiers``
may join engineered features with ``+`` (``inflammation_index +
autoantibody_index``): one modifier, the mean of the features standardised
over the trial's patients (arm- and outcome-blind), so one degree of freedom
where the protocol expects the features to act together.

**A direction.** With ``prespecified_direction: increasing`` (or
``decreasing``) the protocol states which way the one modifier moves the
benefit, and the statistic is the signed root of the likelihood ratio,
``sign(d) sqrt(LR)`` (negated for ``decreasing``): a one-sided test, large
only when the effect rises (falls) with the modifier, so no part of its
level is spent on the direction the protocol does not expect.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from core.config import TrainConfig
from core.spec import modifier_parts
from training.path import risk_score


def _standardised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


DIRECTIONS = {"any": 0.0, "increasing": 1.0, "decreasing": -1.0}


def modifier_lr_test(risk: np.ndarray, modifiers: np.ndarray, t: np.ndarray, y: np.ndarray, direction: str = "any") -> dict:
    """Probit likelihood-ratio test of arm x ``modifiers`` adjusted for a quadratic in the risk score (module docstring).

    Returns ``{"p": ..., "stat": ..., "df": ...}``, or ``{"error": ...}`` when a fit fails (separation, singular
    design). ``direction`` ``any``: ``stat`` is the LR and ``p`` its asymptotic chi-square reading; ``increasing`` or
    ``decreasing`` (one modifier only): ``stat`` is the signed root of the LR in that direction and ``p`` its one-sided
    normal reading.
    """
    from statsmodels.discrete.discrete_model import Probit  # not statsmodels.api: that imports every submodule

    sign = DIRECTIONS[direction]
    s = _standardised(risk)[:, 0]
    m = _standardised(modifiers)
    if sign and m.shape[1] != 1:
        raise ValueError(f"a prespecified direction ({direction}) needs exactly one modifier, got {m.shape[1]}")
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
    if not (np.isfinite(fitted.llf) and np.isfinite(reduced.llf)):
        return {"error": "the probit fit did not converge to a finite likelihood"}
    lr = float(max(0.0, 2.0 * (fitted.llf - reduced.llf)))
    if not sign:
        return {"p": float(stats.chi2.sf(lr, m.shape[1])), "stat": lr, "df": int(m.shape[1])}
    z = float(sign * np.sign(fitted.params[-1]) * np.sqrt(lr))
    return {"p": float(stats.norm.sf(z)), "stat": z, "df": 1, "direction": direction}


def modifier_matrix(F: pd.DataFrame, names: list[str]) -> np.ndarray:
    """The named modifiers as a matrix (patients x entries); a clear error when the features lack one.

    An entry of one feature is that feature; an entry joining features with ``+`` is the mean of the features
    standardised over these patients (module docstring).
    """
    missing = [part for name in names for part in modifier_parts(name) if part not in F.columns]
    if missing:
        raise ValueError(
            f"prespecified_modifiers: {', '.join(map(repr, missing))} is not an engineered feature of this trial "
            f"(the features are: {', '.join(F.columns)})"
        )
    columns = []
    for name in names:
        parts = modifier_parts(name)
        values = F[parts].to_numpy(dtype=float)
        columns.append(values[:, 0] if len(parts) == 1 else _standardised(values).mean(axis=1))
    return np.column_stack(columns) if columns else np.empty((len(F), 0))


def modifier_statistic(
    F: pd.DataFrame, modifiers: np.ndarray, t: np.ndarray, y: np.ndarray, config: TrainConfig, direction: str = "any"
) -> float:
    """The statistic of one trial (observed or null; larger is more extreme), or +inf when it cannot be computed.

    The LR, or with a ``direction`` its signed root (:func:`modifier_lr_test`). +inf makes a failed null trial
    count as reaching the observed statistic (conservative); on the observed trial the test leaves the statistic
    out instead (:func:`training.heterogeneity.imputed_randomisation_test`).
    """
    try:
        risk = risk_score(F, y, config)
    except ValueError:  # too few responders or non-responders for the score's folds
        return float("inf")
    return float(modifier_lr_test(risk, modifiers, t, y, direction).get("stat", float("inf")))


def parametric_bootstrap(
    F: pd.DataFrame, modifiers: np.ndarray, t: np.ndarray, y: np.ndarray, config: TrainConfig, direction: str,
    replicates: int, h: int, seed: int,
) -> dict:
    """The statistic calibrated by a parametric bootstrap from its own fitted no-modification model.

    The null model is the statistic's reduced probit model, ``P(y = 1) = Phi(a + b1 s + b2 s^2 + c'm + g t)``
    fitted to the trial; each bootstrap trial keeps the patients and their arms, draws every outcome from that fit,
    and recomputes the whole statistic (the risk score refitted to the drawn outcomes). The p-value is Besag &
    Clifford's (stop once ``h`` bootstrap statistics reach the observed one, at most ``replicates``); a drawn trial
    whose statistic cannot be computed counts as reaching it. No bootstrap trial keeps a real outcome, so none
    carries part of a real modification (as the imputed randomisation's null trials do under an alternative); in
    exchange the p-value is exact only when the fitted probit model is the truth, so its level is what the null
    designs of benchmarks/RESULTS.md section 1 measure.

    Returns ``{"p", "stat", "used", "null"}``, or ``{"error"}`` when the observed statistic or the null model
    cannot be fitted.
    """
    from scipy.stats import norm
    from statsmodels.discrete.discrete_model import Probit

    from training.inference import sequential_p_value

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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = norm.cdf(X @ Probit(y.astype(float), X).fit(disp=0, maxiter=200).params)
    except Exception as exc:  # separation, singular design: reported, not guessed
        return {"error": f"null model: {type(exc).__name__}: {exc}"[:200]}
    rng = np.random.default_rng([seed, 4244])
    null, hits = [], 0
    for _ in range(replicates):
        drawn = (rng.random(len(y)) < fitted).astype(int)
        value = modifier_statistic(F, modifiers, t, drawn, config, direction) if drawn.min() < drawn.max() else float("inf")
        null.append(value)
        hits += value >= observed["stat"] - 1e-12
        if h and hits >= h:
            break
    p, used = sequential_p_value(np.asarray(null), observed["stat"], h, replicates)
    return {"p": p, "stat": observed["stat"], "used": used, "null": np.asarray(null)}
