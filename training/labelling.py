"""Subgroup labels that follow the evidence, each with a one-sentence reason.

The rule (issue 12; thresholds in percentage points, never "%"):

- Without Holm-significant subgroup evidence, every patient shares one label,
  and its reason says that it applies to the trial population as a whole:
  ``likely_benefit`` only when the trial established an average benefit
  (multiplicity-adjusted interval above 0 pp) of at least the rule's minimum;
  ``unlikely_benefit`` when the adjusted interval lies wholly below the rule's
  upper limit (the trial rules out a meaningful average benefit); otherwise
  ``uncertain``.
- With subgroup evidence, labels are per patient, and a monotone function of
  the point estimate, so a label never contradicts the ordering of estimates:
  ``likely_benefit`` from the smallest estimate at and above which every
  training patient's interval lay above 0 pp (and the estimate reached the
  rule's minimum), ``unlikely_benefit`` up to the largest estimate at and
  below which every training patient's interval lay below the rule's upper
  limit, ``uncertain`` in between. The thresholds are fixed at training time
  and stored with the model, so a served patient is labelled by the same rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from training.config import LabelRule

LIKELY, UNCERTAIN, UNLIKELY = "likely_benefit", "uncertain", "unlikely_benefit"
LABELS = (LIKELY, UNCERTAIN, UNLIKELY)


def pp(value: float | None, digits: int = 0) -> str:
    """Percentage points with a sign: 0.123 -> '+12 pp'."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{100 * value:+.{digits}f} pp"


@dataclass
class LabelPolicy:
    """A fitted label rule: population-wide or per patient, with its thresholds and reasons."""

    mode: str  # "population" or "individual"
    rule: dict[str, float]
    evidence_sentence: str
    population_label: str | None = None
    population_reason: str | None = None
    likely_at: float | None = None
    unlikely_at: float | None = None
    level: float = 0.95

    def label(self, benefit: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Labels and one-sentence reasons for point estimates ``benefit``."""
        benefit = np.asarray(benefit, dtype=float)
        n = len(benefit)
        if self.mode == "population":
            return np.full(n, self.population_label, dtype=object), [str(self.population_reason)] * n
        likely = benefit >= self.likely_at if self.likely_at is not None else np.zeros(n, bool)
        unlikely = (benefit <= self.unlikely_at) & ~likely if self.unlikely_at is not None else np.zeros(n, bool)
        labels = np.where(likely, LIKELY, np.where(unlikely, UNLIKELY, UNCERTAIN)).astype(object)
        return labels, [self._reason(str(label), float(b)) for label, b in zip(labels, benefit, strict=True)]

    def _reason(self, label: str, benefit: float) -> str:
        level = f"{100 * self.level:.0f}%"
        if label == LIKELY:
            return (
                f"{self.evidence_sentence} An estimated benefit of {pp(benefit)} is at or above {pp(self.likely_at)}, "
                f"from which every trial patient's {level} interval lay above 0 pp."
            )
        if label == UNLIKELY:
            return (
                f"{self.evidence_sentence} An estimated benefit of {pp(benefit)} is at or below {pp(self.unlikely_at)}, "
                f"up to which every trial patient's {level} interval lay below {pp(self.rule['unlikely_upper_below'])}."
            )
        if self.likely_at is None:
            return (
                f"{self.evidence_sentence} No trial patient's {level} interval excluded no benefit, "
                f"so no estimate (here {pp(benefit)}) supports a likely benefit."
            )
        return (
            f"{self.evidence_sentence} An estimated benefit of {pp(benefit)} is below {pp(self.likely_at)}: "
            f"patients with such estimates had {level} intervals that include no benefit."
        )

    def describe(self) -> str:
        """The rule in one sentence (thresholds in percentage points)."""
        if self.mode == "population":
            return (
                f"One label for every patient ({self.population_label}): without reliable subgroup evidence the label "
                f"follows the trial's average effect. likely_benefit needs an established average benefit of at least "
                f"{pp(self.rule['likely_min_benefit'])}; unlikely_benefit an average-effect interval wholly below "
                f"{pp(self.rule['unlikely_upper_below'])}; otherwise uncertain."
            )
        likely = f"estimate >= {pp(self.likely_at, 1)}" if self.likely_at is not None else "no estimate (no trial patient qualified)"
        unlikely = f"estimate <= {pp(self.unlikely_at, 1)}" if self.unlikely_at is not None else "no estimate"
        return (
            f"Per patient, from the point estimate (subgroup evidence): likely_benefit for {likely}, "
            f"unlikely_benefit for {unlikely}, otherwise uncertain; thresholds set on the trial's patients from their "
            f"{100 * self.level:.0f}% intervals."
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_policy(
    rule: LabelRule,
    *,
    subgroup_evidence: bool,
    evidence_sentence: str,
    average_effect: Any,
    benefit: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    level: float,
    treated: str = "treatment",
    control: str = "control",
) -> LabelPolicy:
    """Fit the label rule of one outcome's model on its training patients' estimates and intervals.

    ``average_effect`` is the outcome's :class:`training.effects.AverageEffect`
    (multiplicity-adjusted); ``evidence_sentence`` states the subgroup verdict.
    """
    rules = rule.model_dump()
    if not subgroup_evidence:
        label, reason = _population(rule, average_effect, evidence_sentence, treated, control)
        return LabelPolicy("population", rules, evidence_sentence, label, reason, level=level)
    benefit, lower, upper = (np.asarray(a, dtype=float) for a in (benefit, lower, upper))
    order = np.argsort(benefit, kind="stable")
    b, lo, hi = benefit[order], lower[order], upper[order]
    # likely: the smallest estimate such that every patient at or above it qualifies.
    ok_likely = (lo > 0) & (b >= rule.likely_min_benefit)
    suffix_ok = np.flip(np.logical_and.accumulate(np.flip(ok_likely)))
    likely_at = float(b[np.argmax(suffix_ok)]) if suffix_ok.any() else None
    # unlikely: the largest estimate such that every patient at or below it qualifies.
    ok_unlikely = hi < rule.unlikely_upper_below
    prefix_ok = np.logical_and.accumulate(ok_unlikely)
    unlikely_at = float(b[len(b) - 1 - np.argmax(np.flip(prefix_ok))]) if prefix_ok.any() else None
    if likely_at is not None and unlikely_at is not None and unlikely_at >= likely_at:
        unlikely_at = None  # cannot happen with lower <= estimate <= upper; kept as a guard
    return LabelPolicy("individual", rules, evidence_sentence, None, None, likely_at, unlikely_at, level)


def _population(rule: LabelRule, effect: Any, evidence_sentence: str, treated: str, control: str) -> tuple[str, str]:
    scope = "This applies to the trial population as a whole, not to this patient in particular."
    if effect is None or effect.risk_difference is None:
        return UNCERTAIN, f"{evidence_sentence} The trial's average effect could not be estimated. {scope}"
    summary = effect.describe(treated, control)
    low = effect.ci_low_adjusted if effect.ci_low_adjusted is not None else effect.ci_low
    high = effect.ci_high_adjusted if effect.ci_high_adjusted is not None else effect.ci_high
    if effect.direction == "benefit" and effect.risk_difference >= rule.likely_min_benefit:
        return LIKELY, f"{summary} {evidence_sentence} {scope}"
    if high is not None and high < rule.unlikely_upper_below:
        return UNLIKELY, f"{summary} It rules out an average benefit of {pp(rule.unlikely_upper_below)} or more. {evidence_sentence} {scope}"
    if effect.direction == "benefit":
        return UNCERTAIN, (
            f"{summary} The established average benefit is below the {pp(rule.likely_min_benefit)} needed for a "
            f"likely benefit. {evidence_sentence} {scope}"
        )
    del low
    return UNCERTAIN, f"{summary} {evidence_sentence} {scope}"
