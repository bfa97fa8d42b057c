"""Event by a horizon with censoring: the inverse-probability-of-censoring weighted (IPCW) sensitivity estimate.

An ``event_by`` outcome (``core.spec.EventBySpec``) excludes patients censored
before the horizon: their status at the horizon is unknown. Excluding them is
unbiased only if censoring is unrelated to the event; the IPCW estimate instead
reweights each patient whose status at the horizon is known by the inverse of
the probability of staying uncensored that long.

Censoring model: the Kaplan-Meier estimate of the censoring distribution
``G(t) = P(C > t)``, separately in each arm (censoring independent of the event
given the arm). An event at ``T`` by the horizon counts with weight
``1 / G(T-)`` (censorings tied with it come after it) over the arm's ``n``
patients: the risk of the event by the horizon, which then equals one minus
the Kaplan-Meier survival at the horizon (Satten & Datta 2001). The interval is a
percentile bootstrap, resampling within each arm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

CENSORING_MODEL = "Kaplan-Meier estimate of the censoring distribution in each arm (censoring independent of the event given the arm)"
BOOTSTRAP = 2000
LEVEL = 0.95


def censoring_survival(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier of censoring: (distinct censoring times, G just after each), censoring being ``~event``.

    At a time with both events and censorings, the events are taken first, so a tied
    event still has the censored patient at risk (the usual convention).
    """
    times = np.unique(time[~event])
    at_risk = np.array([(time >= t).sum() for t in times], dtype=float)
    censored = np.array([((time == t) & ~event).sum() for t in times], dtype=float)
    return times, np.cumprod(1.0 - censored / at_risk)


def _g(times: np.ndarray, surv: np.ndarray, t: np.ndarray, before: bool) -> np.ndarray:
    """G(t) (``before``: G(t-)), a step function from :func:`censoring_survival`."""
    index = np.searchsorted(times, t, side="left" if before else "right")
    return np.where(index > 0, surv[np.maximum(index - 1, 0)], 1.0)


def ipcw_risk(time: np.ndarray, event: np.ndarray, horizon: float) -> float:
    """Risk of the event by ``horizon`` in one group, weighting by the inverse probability of remaining uncensored."""
    if len(time) == 0:
        return float("nan")
    times, surv = censoring_survival(time, event)
    had = event & (time <= horizon)
    return float(np.sum(1.0 / _g(times, surv, time[had], before=True)) / len(time))


@dataclass
class IPCWEffect:
    """Responder risk difference (treated minus control) by the IPCW estimator, with a bootstrap interval."""

    outcome: str
    horizon: str
    responder_treated: float
    responder_control: float
    risk_difference: float
    ci_low: float
    ci_high: float
    n_treated: int
    n_control: int
    censored_before_horizon: int
    bootstrap: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimator": "IPCW",
            "censoring_model": CENSORING_MODEL,
            "horizon": self.horizon,
            "responder_rate_treated": self.responder_treated,
            "responder_rate_control": self.responder_control,
            "risk_difference": self.risk_difference,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "level": LEVEL,
            "interval": f"percentile bootstrap, {self.bootstrap} resamples within each arm (seed {self.seed})",
            "n_treated": self.n_treated,
            "n_control": self.n_control,
            "n_censored_before_horizon": self.censored_before_horizon,
        }


def ipcw_effect(
    outcome: str, horizon_text: str, time: np.ndarray, event: np.ndarray, treated: np.ndarray, horizon: float, good: bool,
    censored_before_horizon: int, seed: int = 0, bootstrap: int = BOOTSTRAP,
) -> IPCWEffect:
    """The IPCW responder risk difference; rows with no usable time (NaN) are left out.

    A responder is a patient without the event by the horizon when the event is bad, with it when good.
    """
    usable = ~np.isnan(time)
    time, event, treated = time[usable], event[usable].astype(bool), treated[usable].astype(bool)

    def responder_rate(t: np.ndarray, e: np.ndarray) -> float:
        risk = ipcw_risk(t, e, horizon)
        return risk if good else 1.0 - risk

    arms = {arm: (time[treated == arm], event[treated == arm]) for arm in (True, False)}
    r1, r0 = responder_rate(*arms[True]), responder_rate(*arms[False])
    rng = np.random.default_rng(seed)
    draws = np.empty(bootstrap)
    for b in range(bootstrap):
        rates = []
        for arm in (True, False):
            t, e = arms[arm]
            pick = rng.integers(0, len(t), len(t))
            rates.append(responder_rate(t[pick], e[pick]))
        draws[b] = rates[0] - rates[1]
    low, high = np.nanquantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return IPCWEffect(
        outcome, horizon_text, r1, r0, r1 - r0, float(low), float(high), int(treated.sum()), int((~treated).sum()),
        censored_before_horizon, bootstrap, seed,
    )
