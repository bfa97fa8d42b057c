"""The trial's average effect per outcome: responder risk difference and ANCOVA, with multiplicity.

Every label the service gives rests on two questions: is an average effect
established, and is there evidence that patients differ? This module answers
the first, the way a trial paper would:

- **Risk difference** of responders, treated minus control, with the
  Miettinen-Nurminen score test and the score interval obtained by inverting
  the same statistic (Miettinen & Nurminen 1985, Stat Med 4:213-226), so the
  interval excludes 0 exactly when the two-sided p-value is below 1 - level.
  It behaves at 0% and 100% response, where the Wald interval does not.
- **Multiplicity across outcomes**: Holm's step-down adjusted p-values; the
  adjusted interval of the outcome at step k of the step-down is the score
  interval at level 1 - alpha / (m - k + 1), and outcomes after the first
  non-rejection share the level of that step, so an adjusted interval
  excludes 0 exactly when Holm rejects. An average effect is **established**
  when its adjusted interval excludes 0.
- **Relative effects**: the responder risk ratio (Katz log interval) and odds
  ratio (Woolf logit interval), each with a 0.5 correction only when a cell is
  empty, beside the absolute difference (CONSORT asks for both).
- **ANCOVA** on the score scale (change from baseline, adjusted for baseline,
  complete cases), the trial's primary analysis, for outcomes with a baseline.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, stats

LEVEL = 0.95


def _restricted_mle(x1: int, n1: int, x2: int, n2: int, delta: float) -> tuple[float, float]:
    """Maximum-likelihood (p1, p2) under p1 - p2 = delta (Farrington & Manning 1990, closed form)."""
    p1, p2 = x1 / n1, x2 / n2
    theta = n2 / n1
    a = 1.0 + theta
    b = -(1.0 + theta + p1 + theta * p2 + delta * (theta + 2.0))
    c = delta * delta + delta * (2.0 * p1 + theta + 1.0) + p1 + theta * p2
    d = -p1 * delta * (1.0 + delta)
    v = b**3 / (3.0 * a) ** 3 - b * c / (6.0 * a * a) + d / (2.0 * a)
    u2 = b * b / (3.0 * a) ** 2 - c / (3.0 * a)
    u = math.copysign(math.sqrt(max(u2, 0.0)), v) if v != 0 else math.sqrt(max(u2, 0.0))
    if u == 0.0:
        q1 = -b / (3.0 * a)
    else:
        ratio = max(-1.0, min(1.0, v / u**3))
        w = (math.pi + math.acos(ratio)) / 3.0
        q1 = 2.0 * u * math.cos(w) - b / (3.0 * a)
    q1 = min(max(q1, max(0.0, delta)), min(1.0, 1.0 + delta))
    return q1, q1 - delta


def score_statistic(x1: int, n1: int, x2: int, n2: int, delta: float = 0.0) -> float:
    """Miettinen-Nurminen z for H0: p1 - p2 = delta (positive when the observed difference exceeds delta)."""
    diff = x1 / n1 - x2 / n2 - delta
    q1, q2 = _restricted_mle(x1, n1, x2, n2, delta)
    n = n1 + n2
    variance = (q1 * (1 - q1) / n1 + q2 * (1 - q2) / n2) * n / max(n - 1, 1)
    if variance <= 0.0:
        return 0.0 if abs(diff) < 1e-12 else math.copysign(math.inf, diff)
    return diff / math.sqrt(variance)


def score_test(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p-value of the score test of no difference."""
    z = score_statistic(x1, n1, x2, n2, 0.0)
    return float(2.0 * stats.norm.sf(abs(z))) if math.isfinite(z) else 0.0


def score_interval(x1: int, n1: int, x2: int, n2: int, level: float = LEVEL) -> tuple[float, float]:
    """Score interval for p1 - p2 at ``level``: every delta the score test does not reject."""
    crit = float(stats.norm.ppf(0.5 + level / 2.0))
    estimate = x1 / n1 - x2 / n2
    eps = 1e-10

    def excess(delta: float) -> float:
        return abs(score_statistic(x1, n1, x2, n2, delta)) - crit

    lower, upper = -1.0, 1.0
    if estimate > -1.0 + eps and excess(-1.0 + eps) > 0:
        lower = optimize.brentq(excess, -1.0 + eps, estimate, xtol=1e-10)
    if estimate < 1.0 - eps and excess(1.0 - eps) > 0:
        upper = optimize.brentq(excess, estimate, 1.0 - eps, xtol=1e-10)
    return float(lower), float(upper)


@dataclass
class Ancova:
    """Difference in change from baseline (treated minus control), adjusted for baseline."""

    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    n: int
    unit: str = "points"


def ancova(baseline: np.ndarray, followup: np.ndarray, treated: np.ndarray, level: float = LEVEL) -> Ancova:
    """OLS of change on arm and baseline over complete cases."""
    from statsmodels.regression.linear_model import OLS  # not statsmodels.api: that imports every submodule

    base = np.asarray(baseline, dtype=float)
    follow = np.asarray(followup, dtype=float)
    arm = np.asarray(treated, dtype=bool)
    ok = np.isfinite(base) & np.isfinite(follow)
    n = int(ok.sum())
    if n <= 3 or not 0 < arm[ok].sum() < n:
        return Ancova(None, None, None, None, n)
    design = np.column_stack([np.ones(n), arm[ok].astype(float), base[ok]])
    fit = OLS(follow[ok] - base[ok], design).fit()
    lower, upper = fit.conf_int(alpha=1 - level)[1]
    return Ancova(_num(fit.params[1]), _num(lower), _num(upper), _num(fit.pvalues[1]), n)


@dataclass
class AverageEffect:
    """One outcome's average effect under one responder rule and missing-follow-up policy."""

    outcome: str
    rule: str
    missing_policy: str
    responders_treated: int
    n_treated: int
    responders_control: int
    n_control: int
    risk_difference: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    level: float = LEVEL
    p_adjusted: float | None = None
    ci_low_adjusted: float | None = None
    ci_high_adjusted: float | None = None
    adjusted_level: float | None = None
    alpha: float = 1 - LEVEL
    n_outcomes: int = 1
    ancova: Ancova | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    relative: dict[str, Any] = field(default_factory=dict)  # risk ratio and odds ratio (:func:`relative_effects`)

    @property
    def rate_treated(self) -> float | None:
        return self.responders_treated / self.n_treated if self.n_treated else None

    @property
    def rate_control(self) -> float | None:
        return self.responders_control / self.n_control if self.n_control else None

    @property
    def established(self) -> bool:
        """The multiplicity-adjusted interval excludes no difference."""
        return self.direction is not None

    @property
    def direction(self) -> str | None:
        """``benefit`` or ``harm`` when established, else None."""
        low = self.ci_low_adjusted if self.ci_low_adjusted is not None else self.ci_low
        high = self.ci_high_adjusted if self.ci_high_adjusted is not None else self.ci_high
        if low is None or high is None:
            return None
        if low > 0:
            return "benefit"
        if high < 0:
            return "harm"
        return None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rate_treated"] = self.rate_treated
        out["rate_control"] = self.rate_control
        out["established"] = self.established
        out["direction"] = self.direction
        return out

    def describe(self, treated: str = "treatment", control: str = "control", wording: Any = None) -> str:
        """One sentence, thresholds in percentage points; an event to prevent is told as its risk (:class:`core.labelling.Wording`)."""
        if self.risk_difference is None:
            return "The average effect could not be estimated (an arm has no patients)."
        low = self.ci_low_adjusted if self.ci_low_adjusted is not None else self.ci_low
        high = self.ci_high_adjusted if self.ci_high_adjusted is not None else self.ci_high
        level = self.adjusted_level if self.adjusted_level is not None else self.level
        # The Holm family: the trial's outcomes, or with three or more arms its comparison x outcome tests.
        adjusted = f" adjusted for the trial's several {self.extra.get('holm_family', 'outcomes')}" if self.n_outcomes > 1 else ""
        if wording is not None and wording.prevents:
            nnt = wording.nnt(self.risk_difference, low, high, level)
            text = (
                f"{wording.event} in {_pct(1 - self.rate_treated)} on {treated} vs {_pct(1 - self.rate_control)} on {control}: "
                f"absolute risk reduction {_pp(self.risk_difference)} ({_level(level)} interval{adjusted} {_pp(low)} to {_pp(high)}); {nnt}"
            )
            if self.direction == "harm":
                return text + f"; on average the {wording.quantity} is higher on {treated}."
        else:
            text = (
                f"Responders {_pct(self.rate_treated)} on {treated} vs {_pct(self.rate_control)} on {control}: "
                f"difference {_pp(self.risk_difference)} ({_level(level)} interval{adjusted} {_pp(low)} to {_pp(high)})"
            )
            if self.direction == "harm":
                return text + f"; on average fewer patients respond on {treated}."
        if self.direction == "benefit":
            return text + "; the average benefit is established."
        return text + "; the average effect is not established."


def risk_difference(
    outcome: str, rule: str, missing_policy: str, y: np.ndarray, treated: np.ndarray, level: float = LEVEL
) -> AverageEffect:
    """Risk difference of responders (0/1 labels; NaN = excluded) with its score interval and p-value."""
    y = np.asarray(y, dtype=float)
    arm = np.asarray(treated, dtype=bool)
    ok = ~np.isnan(y)
    x1, n1 = int(y[ok & arm].sum()), int((ok & arm).sum())
    x2, n2 = int(y[ok & ~arm].sum()), int((ok & ~arm).sum())
    if n1 == 0 or n2 == 0:
        return AverageEffect(outcome, rule, missing_policy, x1, n1, x2, n2, None, None, None, None, level)
    low, high = score_interval(x1, n1, x2, n2, level)
    effect = AverageEffect(outcome, rule, missing_policy, x1, n1, x2, n2, x1 / n1 - x2 / n2, low, high, score_test(x1, n1, x2, n2), level)
    effect.relative = relative_effects(x1, n1, x2, n2, level)
    return effect


def relative_effects(x1: int, n1: int, x2: int, n2: int, level: float = LEVEL) -> dict[str, Any]:
    """Risk ratio (Katz) and odds ratio (Woolf) of responding, treated over control, with ``level`` intervals.

    A 0.5 correction is added to every cell only when one is empty (Haldane);
    a ratio that cannot be estimated (an arm without patients) is None.
    """
    out: dict[str, Any] = {"level": level, "corrected": False}
    if n1 == 0 or n2 == 0:
        return {**out, **dict.fromkeys(("risk_ratio", "rr_low", "rr_high", "odds_ratio", "or_low", "or_high"))}
    a, b, c, d = float(x1), float(n1 - x1), float(x2), float(n2 - x2)
    if min(a, b, c, d) == 0:
        a, b, c, d = a + 0.5, b + 0.5, c + 0.5, d + 0.5
        out["corrected"] = True
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    log_rr = math.log((a / (a + b)) / (c / (c + d)))
    se_rr = math.sqrt(1 / a - 1 / (a + b) + 1 / c - 1 / (c + d))
    log_or = math.log(a * d / (b * c))
    se_or = math.sqrt(1 / a + 1 / b + 1 / c + 1 / d)
    out.update(
        risk_ratio=math.exp(log_rr), rr_low=math.exp(log_rr - z * se_rr), rr_high=math.exp(log_rr + z * se_rr),
        odds_ratio=math.exp(log_or), or_low=math.exp(log_or - z * se_or), or_high=math.exp(log_or + z * se_or),
    )
    return out


def adjust(effects: dict[str, AverageEffect], alpha: float = 1 - LEVEL) -> dict[str, AverageEffect]:
    """Holm across outcomes: adjusted p-values and step-down intervals (see the module docstring), in place."""
    tested = sorted((e.p_value, k) for k, e in effects.items() if e.p_value is not None)
    m = len(tested)
    running = 0.0
    stopped_at: int | None = None
    for step, (p, key) in enumerate(tested, start=1):
        effect = effects[key]
        running = max(running, min(1.0, (m - step + 1) * p))
        effect.p_adjusted = running
        if stopped_at is None and p >= alpha / (m - step + 1):
            stopped_at = step
        level_step = stopped_at if stopped_at is not None else step
        effect.adjusted_level = 1.0 - alpha / (m - level_step + 1)
        effect.alpha = alpha
        effect.n_outcomes = m
        e = effect
        e.ci_low_adjusted, e.ci_high_adjusted = score_interval(
            e.responders_treated, e.n_treated, e.responders_control, e.n_control, e.adjusted_level
        )
    return effects


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _pp(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f} pp"


def _level(level: float) -> str:
    text = f"{100 * level:.1f}".removesuffix(".0")
    return f"{text}%"
