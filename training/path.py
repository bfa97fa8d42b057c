"""Risk-based heterogeneity analysis, as the PATH statement asks first (Kent et al., Ann Intern Med 2020;172:35-45).

Before any search for effect modifiers, a trial can ask whether the benefit
varies with a patient's baseline risk:

- **Prognostic model**: a parsimonious L2-penalised logistic regression of
  response on the baseline features, fitted *blind to arm* (arm is not a
  predictor, and both arms are pooled). Each patient's risk score comes from
  a model fitted without them (:func:`core.candidates.crossfit_score`),
  so its c-statistic, with DeLong's interval, is out of fold.
- **Effects by quarter of predicted risk**: the responder risk difference
  (Miettinen-Nurminen), risk ratio and odds ratio with their intervals in
  each quarter of the cross-fitted score.
- **Treatment x risk interaction**: the likelihood-ratio test of the
  interaction in ``logit P = a + b s + g t + d t s`` (``s`` the standardised
  score), and the constant odds ratio ``exp(g)`` of the model without it.

The served *risk-based benefit* (the risk model candidate) applies that
constant odds ratio to the patient's predicted control risk. It is the
patient's answer when effect modification is not established and the
prognostic model discriminates out of fold (the lower limit of its
c-statistic's interval above 0.5); otherwise the trial average is.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import expit

from core.candidates import _matrix, _scale, crossfit_score, fit_scaler, logistic_solver
from core.config import TrainConfig
from core.effects import relative_effects, score_interval, score_test
from training.metrics import auc_interval

QUARTERS = 4


@dataclass
class PathAnalysis:
    """The risk-based analysis of one outcome (see the module docstring)."""

    n: int
    c_statistic: float | None
    c_low: float | None
    c_high: float | None
    level: float
    discriminates: bool
    quarters: list[dict[str, Any]] = field(default_factory=list)
    interaction: dict[str, Any] = field(default_factory=dict)
    model: str = "L2-penalised logistic regression of response on baseline features, blind to arm; cross-fitted"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sentence(self) -> str:
        """The prognostic model's discrimination and the interaction test in one sentence."""
        if self.c_statistic is None:
            return "The prognostic model could not be assessed (too few responders or non-responders)."
        level = f"{100 * self.level:.0f}%"
        text = (
            f"The prognostic model (blind to arm) had an out-of-fold c-statistic of {self.c_statistic:.2f} "
            f"({level} interval {self.c_low:.2f} to {self.c_high:.2f}), so it "
            + ("discriminates baseline risk" if self.discriminates else "does not reliably discriminate baseline risk")
        )
        p = self.interaction.get("p_value")
        if p is not None:
            text += f"; treatment x risk interaction p = {p:.3g}"
        return text + "."


def risk_score(F: pd.DataFrame, y: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Each patient's cross-fitted prognostic score (logit scale, the prognostic model blind to arm)."""
    settings = config.candidates.risk_model
    Z = _scale(_matrix(F, list(F.columns)), fit_scaler(_matrix(F, list(F.columns))))
    solver = logistic_solver(config.candidates.solver, len(y))
    return crossfit_score(Z, y, settings.C, settings.score_folds, config.seed, solver)


def _quarter(index: int, rows: np.ndarray, t: np.ndarray, y: np.ndarray, risk: np.ndarray, level: float) -> dict[str, Any]:
    treated, control = rows & (t == 1), rows & (t == 0)
    x1, n1, x2, n2 = int(y[treated].sum()), int(treated.sum()), int(y[control].sum()), int(control.sum())
    out: dict[str, Any] = {
        "quarter": index + 1,
        "n": int(rows.sum()),
        "predicted_risk_mean": float(risk[rows].mean()),
        "predicted_risk_low": float(risk[rows].min()),
        "predicted_risk_high": float(risk[rows].max()),
        "n_treated": n1,
        "responders_treated": x1,
        "n_control": n2,
        "responders_control": x2,
        "rate_treated": x1 / n1 if n1 else None,
        "rate_control": x2 / n2 if n2 else None,
        "risk_difference": None,
        "rd_low": None,
        "rd_high": None,
        "rd_p_value": None,
    }
    if n1 and n2:
        low, high = score_interval(x1, n1, x2, n2, level)
        out.update(risk_difference=x1 / n1 - x2 / n2, rd_low=low, rd_high=high, rd_p_value=score_test(x1, n1, x2, n2))
    out.update({k: v for k, v in relative_effects(x1, n1, x2, n2, level).items() if k != "level"})
    return out


def _interaction(s: np.ndarray, t: np.ndarray, y: np.ndarray, level: float) -> dict[str, Any]:
    """LR test of the treatment x risk interaction and the constant odds ratio (statsmodels' logistic MLE)."""
    from statsmodels.discrete.discrete_model import Logit  # not statsmodels.api: that imports every submodule

    z = (s - s.mean()) / (s.std() or 1.0)
    base = np.column_stack([np.ones_like(z), z, t])
    full = np.column_stack([base, t * z])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reduced_fit = Logit(y, base).fit(disp=0, maxiter=200)
            full_fit = Logit(y, full).fit(disp=0, maxiter=200)
    except Exception as exc:  # perfect separation, singular design: say so rather than guess
        return {"p_value": None, "error": f"{type(exc).__name__}: {exc}"[:200]}
    lr = float(max(0.0, 2.0 * (full_fit.llf - reduced_fit.llf)))
    zc = float(stats.norm.ppf(0.5 + level / 2))
    g, se = float(reduced_fit.params[2]), float(reduced_fit.bse[2])
    return {
        "test": "likelihood ratio, 1 df: logit P = a + b s + g t + d t s against d = 0 (s the standardised risk score)",
        "interaction_coefficient": float(full_fit.params[3]),
        "interaction_se": float(full_fit.bse[3]),
        "lr_statistic": lr,
        "p_value": float(stats.chi2.sf(lr, 1)),
        "constant_odds_ratio": math.exp(g),
        "constant_or_low": math.exp(g - zc * se),
        "constant_or_high": math.exp(g + zc * se),
    }


def path_analysis(F: pd.DataFrame, t: np.ndarray, y: np.ndarray, config: TrainConfig) -> PathAnalysis:
    """The risk-based analysis of one outcome on its engineered features ``F`` (see the module docstring)."""
    t, y = np.asarray(t).astype(int), np.asarray(y).astype(int)
    level = config.intervals.level
    folds = config.candidates.risk_model.score_folds
    n = len(y)
    if len(np.unique(y)) < 2 or min(np.bincount(y)) < folds:
        return PathAnalysis(n, None, None, None, level, False)
    s = risk_score(F, y, config)
    c, low, high = auc_interval(y, s, level)
    if not np.isfinite(c):
        return PathAnalysis(n, None, None, None, level, False)
    risk = _recalibrated(s, y)  # quarters are ranks of s; the risk shown is s recalibrated, blind to arm
    edges = np.quantile(s, np.linspace(0, 1, QUARTERS + 1))
    which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, QUARTERS - 1)
    quarters = [_quarter(q, which == q, t, y, risk, level) for q in range(QUARTERS)]
    return PathAnalysis(n, c, low, high, level, bool(low > 0.5), quarters, _interaction(s, t, y, level))


def _recalibrated(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The cross-fitted score as a probability: ``expit(a + b s)`` fitted on all patients (two parameters)."""
    from statsmodels.discrete.discrete_model import Logit

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = Logit(y, np.column_stack([np.ones_like(s), s])).fit(disp=0, maxiter=200)
        return expit(fit.params[0] + fit.params[1] * s)
    except Exception:
        return np.full(len(s), y.mean())
