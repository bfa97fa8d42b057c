"""Responder labels from the spec's rule, with missing follow-up handled openly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from training.spec import OutcomeSpec, ResponderRule


@dataclass(frozen=True)
class LabelCounts:
    n: int
    responders: int
    missing_followup: int
    excluded: int
    zero_baseline: int
    rule: str
    missing_policy: str

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}n_patients": self.n,
            f"{prefix}n_responders": self.responders,
            f"{prefix}n_missing_followup": self.missing_followup,
            f"{prefix}n_excluded": self.excluded,
            f"{prefix}n_zero_baseline": self.zero_baseline,
        }


def responder_labels(
    frame: pd.DataFrame, outcome: OutcomeSpec, rule: ResponderRule | None = None, missing_policy: str | None = None
) -> tuple[pd.Series, LabelCounts]:
    """0/1 responder labels (NaN for patients excluded by the missing-follow-up policy).

    Improvement is measured in the outcome's better direction; the ``relative``
    rule divides it by the baseline value, so a baseline of 0 cannot meet it and
    such patients are counted as non-responders (and reported).
    """
    rule = rule or outcome.responder
    policy = missing_policy or outcome.missing_followup
    base = pd.to_numeric(frame[outcome.baseline], errors="coerce").to_numpy(dtype=float)
    follow = pd.to_numeric(frame[outcome.followup], errors="coerce").to_numpy(dtype=float)
    missing = np.isnan(follow)
    if policy == "non_responder":
        follow = np.where(missing, base, follow)  # baseline observation carried forward: no improvement
    sign = 1.0 if outcome.better == "lower" else -1.0
    improvement = sign * (base - follow)
    zero_baseline = np.zeros(len(base), dtype=bool)
    if rule.rule == "relative":
        zero_baseline = base <= 0
        with np.errstate(divide="ignore", invalid="ignore"):
            responder = np.where(zero_baseline, False, improvement / base >= rule.threshold - 1e-12)
    elif rule.rule == "absolute":
        responder = improvement >= rule.threshold - 1e-12
    else:
        responder = follow <= rule.threshold if outcome.better == "lower" else follow >= rule.threshold
    labels = pd.Series(responder.astype(float), index=frame.index)
    if policy == "exclude":
        labels[missing] = np.nan
    counts = LabelCounts(
        n=int(labels.notna().sum()),
        responders=int(np.nansum(labels.to_numpy())),
        missing_followup=int(missing.sum()),
        excluded=int(missing.sum()) if policy == "exclude" else 0,
        zero_baseline=int((zero_baseline & ~(missing & (policy == "exclude"))).sum()),
        rule=rule.describe(outcome.better, outcome.unit),
        missing_policy=policy,
    )
    return labels, counts
