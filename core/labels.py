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

import numpy as np
import pandas as pd

from core.effects import AverageEffect, adjust, risk_difference
from core.spec import DatasetSpec, OutcomeSpec, ResponderRule, level_key

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
        }


def _event_observed(frame: pd.DataFrame, outcome: OutcomeSpec) -> tuple[np.ndarray, np.ndarray]:
    """(event happened, follow-up missing) for a binary outcome; unknown codes count as missing."""
    assert outcome.event is not None
    codes = frame[outcome.column].map(level_key)
    present = (codes == level_key(outcome.event.present)).to_numpy()
    absent = (codes == level_key(outcome.event.absent)).to_numpy()
    return present, ~(present | absent)


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
    if outcome.kind == "binary":
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
    counts = LabelCounts(
        n=int(labels.notna().sum()),
        responders=int(np.nansum(labels.to_numpy())),
        missing_followup=int(missing.sum()),
        excluded=(int(missing.sum()) if policy == "exclude" else 0) + int(zero_excluded.sum()),
        zero_baseline=int((zero_baseline & ~missing).sum()),
        rule=description,
        missing_policy=policy,
        counted_non_responder=int(missing.sum()) if policy == "non_responder" else 0,
        n_rows=len(frame),
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
