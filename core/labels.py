"""Responder labels from the spec's rule, with missing follow-up handled openly.

Missing follow-up follows the declared policy exactly, whatever the responder
rule: ``non_responder`` counts the patient as not responding (label 0),
``exclude`` drops the patient from the outcome (label NaN). Nothing is imputed
from the baseline, so a rule such as "pain <= 1 at follow-up" cannot turn a
patient who dropped out with a baseline of 0 into a responder.

When much follow-up is missing the choice of policy can move the average
effect, so :func:`sensitivity_effects` recomputes it under the other policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.effects import AverageEffect, adjust, risk_difference
from core.spec import TIME_UNITS, DatasetSpec, OutcomeSpec, ResponderRule, level_key

POLICIES = ("non_responder", "exclude")
SENSITIVITY_MISSING_FRACTION = 0.10  # more missing follow-up than this: also report the other policy


@dataclass(frozen=True)
class LabelCounts:
    n: int
    responders: int
    missing_followup: int
    excluded: int
    zero_baseline: int
    rule: str
    missing_policy: str
    counted_non_responder: int = 0  # patients without follow-up counted as non-responders (policy non_responder)
    censored_before_horizon: int = 0  # event_by outcomes: censored before the horizon, excluded
    n_rows: int = 0  # patients in the file, before any exclusion

    @property
    def missing_fraction(self) -> float:
        return self.missing_followup / self.n_rows if self.n_rows else 0.0

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}n_patients": self.n,
            f"{prefix}n_responders": self.responders,
            f"{prefix}n_missing_followup": self.missing_followup,
            f"{prefix}n_excluded": self.excluded,
            f"{prefix}n_counted_non_responder": self.counted_non_responder,
            f"{prefix}n_zero_baseline": self.zero_baseline,
            f"{prefix}n_censored_before_horizon": self.censored_before_horizon,
        }


def _event_observed(frame: pd.DataFrame, outcome: OutcomeSpec) -> tuple[np.ndarray, np.ndarray]:
    """(event happened, follow-up missing) for a binary outcome; unknown codes count as missing."""
    assert outcome.event is not None
    codes = frame[outcome.column].map(level_key)
    present = (codes == level_key(outcome.event.present)).to_numpy()
    absent = (codes == level_key(outcome.event.absent)).to_numpy()
    return present, ~(present | absent)


def event_by_times(frame: pd.DataFrame, outcome: OutcomeSpec) -> tuple[np.ndarray, np.ndarray]:
    """(time in days, event happened at that time) of an event_by outcome; NaN time where time or status is
    missing or the status code is unknown."""
    eb = outcome.event_by
    assert eb is not None
    time = pd.to_numeric(frame[eb.time], errors="coerce").to_numpy(dtype=float) * TIME_UNITS[eb.time_unit]
    codes = frame[eb.status].map(level_key)
    event = codes.isin(eb.event_codes).to_numpy()
    known = event | codes.isin(eb.censored_codes).to_numpy()
    return np.where(known, time, np.nan), event


def event_by_status(frame: pd.DataFrame, outcome: OutcomeSpec) -> np.ndarray:
    """Per patient at the horizon: ``event`` (by then), ``free`` (known event-free through it),
    ``censored_early`` (censored before it) or ``missing`` (no usable time or status)."""
    eb = outcome.event_by
    assert eb is not None
    time, event = event_by_times(frame, outcome)
    horizon = eb.horizon_days()
    with np.errstate(invalid="ignore"):
        # An event after the horizon, or censoring at or after it: event-free through the horizon.
        status = np.where(event & (time <= horizon), "event", np.where(time >= horizon, "free", "censored_early"))
    return np.where(np.isnan(time), "missing", status)


def responder_labels(
    frame: pd.DataFrame, outcome: OutcomeSpec, rule: ResponderRule | None = None, missing_policy: str | None = None
) -> tuple[pd.Series, LabelCounts]:
    """0/1 responder labels (NaN for patients excluded by the missing-follow-up policy).

    Improvement is measured in the outcome's better direction; the ``relative``
    rule divides it by the baseline value, so a baseline of 0 cannot meet it:
    ``validate`` refuses such files unless the outcome's ``zero_baseline`` says
    to count these patients as non-responders or to exclude them (the count is
    reported either way). A binary outcome's responder is a patient with the
    event when the event is good, without it when it is bad.
    """
    policy = missing_policy or outcome.missing_followup
    if policy not in POLICIES:
        raise ValueError(f"unknown missing-follow-up policy {policy!r} (use one of {POLICIES})")
    zero_baseline = np.zeros(len(frame), dtype=bool)
    censored_early = np.zeros(len(frame), dtype=bool)
    if outcome.kind == "event_by":
        assert outcome.event_by is not None
        status = event_by_status(frame, outcome)
        happened, missing, censored_early = status == "event", status == "missing", status == "censored_early"
        responder = happened if outcome.event_by.good else ~happened
        description = outcome.describe_rule()
    elif outcome.kind == "binary":
        assert outcome.event is not None
        happened, missing = _event_observed(frame, outcome)
        responder = happened if outcome.event.good else ~happened
        description = outcome.describe_rule()
    else:
        rule = rule or outcome.responder
        follow = pd.to_numeric(frame[outcome.column], errors="coerce").to_numpy(dtype=float)
        missing = np.isnan(follow)
        sign = 1.0 if outcome.better == "lower" else -1.0
        if rule.rule == "threshold":
            responder = follow <= rule.threshold + 1e-12 if outcome.better == "lower" else follow >= rule.threshold - 1e-12
        else:
            if outcome.baseline is None:
                raise ValueError(f"the {rule.rule} responder rule needs a baseline column")
            base = pd.to_numeric(frame[outcome.baseline], errors="coerce").to_numpy(dtype=float)
            improvement = sign * (base - follow)
            if rule.rule == "relative":
                zero_baseline = base <= 0  # validate refuses these unless the spec says how to count them
                with np.errstate(divide="ignore", invalid="ignore"):
                    responder = np.where(zero_baseline, False, improvement / base >= rule.threshold - 1e-12)
            else:
                responder = improvement >= rule.threshold - 1e-12
        description = outcome.describe_rule(rule)
    responder = np.where(missing, False, responder)  # the policy, not the rule, decides for missing follow-up
    labels = pd.Series(responder.astype(float), index=frame.index)
    if policy == "exclude":
        labels[missing] = np.nan
    zero_excluded = zero_baseline & ~missing & (outcome.zero_baseline == "exclude")
    labels[zero_excluded] = np.nan
    labels[censored_early] = np.nan  # the only policy for censoring before the horizon: exclude (spec.EventBySpec)
    counts = LabelCounts(
        n=int(labels.notna().sum()),
        responders=int(np.nansum(labels.to_numpy())),
        missing_followup=int(missing.sum()),
        excluded=(int(missing.sum()) if policy == "exclude" else 0) + int(zero_excluded.sum()) + int(censored_early.sum()),
        zero_baseline=int((zero_baseline & ~missing).sum()),
        rule=description,
        missing_policy=policy,
        counted_non_responder=int(missing.sum()) if policy == "non_responder" else 0,
        n_rows=len(frame),
        censored_before_horizon=int(censored_early.sum()),
    )
    return labels, counts


def other_policy(policy: str) -> str:
    return "exclude" if policy == "non_responder" else "non_responder"


def missing_followup_sensitivity(
    frame: pd.DataFrame, spec: DatasetSpec, outcome: str, config, always: bool = False
) -> AverageEffect | None:
    """The average effect (responder risk difference) under the other missing-follow-up policy.

    Returned when more than 10% of the outcome's follow-up is missing (or
    ``always``), else None. Uses the rule and policy the job trains with
    (the config's overrides first), swapping only the policy.
    """
    spec_outcome = spec.outcomes[outcome]
    rule = config.responder_rules.get(outcome)
    policy = config.missing_followup or spec_outcome.missing_followup
    _, counts = responder_labels(frame, spec_outcome, rule, policy)
    if not always and counts.missing_fraction <= SENSITIVITY_MISSING_FRACTION:
        return None
    alternative = other_policy(policy)
    labels, other = responder_labels(frame, spec_outcome, rule, alternative)
    treated = spec.arm.is_treated(frame[spec.arm.column])
    effect = risk_difference(outcome, other.rule, alternative, labels.to_numpy(dtype=float), treated)
    effect.extra.update(
        {
            "sensitivity_of": policy,
            "missing_followup": counts.missing_followup,
            "missing_fraction": round(counts.missing_fraction, 4),
            "patients_touched": other.excluded or other.counted_non_responder,
        }
    )
    return effect


def censoring_sensitivity(frame: pd.DataFrame, spec: DatasetSpec, outcome: str, seed: int = 0) -> dict[str, Any] | None:
    """An event_by outcome's censoring policy and counts, with the IPCW responder risk difference beside the
    primary analysis (which excludes patients censored before the horizon); None for other outcomes."""
    from core.censoring import ipcw_effect

    spec_outcome = spec.outcomes[outcome]
    eb = spec_outcome.event_by
    if eb is None:
        return None
    time, event = event_by_times(frame, spec_outcome)
    status = event_by_status(frame, spec_outcome)
    treated = spec.arm.is_treated(frame[spec.arm.column])
    early = int((status == "censored_early").sum())
    effect = ipcw_effect(outcome, eb.describe_horizon(), time, event, treated, eb.horizon_days(), eb.good, early, seed=seed)
    return {
        "time_column": eb.time,
        "time_unit": eb.time_unit,
        "status_column": eb.status,
        "event_codes": eb.event_codes,
        "censored_codes": eb.censored_codes,
        "horizon": eb.describe_horizon(),
        "event_good": eb.good,
        "censored_before_horizon_policy": eb.censored_before_horizon,
        "n_censored_before_horizon": early,
        "n_events_by_horizon": int((status == "event").sum()),
        "n_event_free_at_horizon": int((status == "free").sum()),
        "n_missing_time_or_status": int((status == "missing").sum()),
        "ipcw": effect.to_dict(),
    }


def sensitivity_effects(frame: pd.DataFrame, spec: DatasetSpec, config) -> dict[str, AverageEffect]:
    """Per outcome with more than 10% missing follow-up: the average effect under the other policy.

    Holm's correction runs over the whole family of the job's outcomes analysed
    under the other policy (as the primary analysis runs over all outcomes), and
    only the outcomes over the threshold are returned.
    """
    family = {name: missing_followup_sensitivity(frame, spec, name, config, always=True) for name in spec.outcomes}
    adjust({k: e for k, e in family.items() if e is not None})
    return {
        name: effect
        for name, effect in family.items()
        if effect is not None and effect.extra["missing_fraction"] > SENSITIVITY_MISSING_FRACTION
    }
