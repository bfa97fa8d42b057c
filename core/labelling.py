"""What a patient is told: which estimand answers, and two labels that never disagree with what stands beside them.

A parallel-group trial identifies the average effect and the *conditional
average* benefit given measured values; it never identifies one patient's own
benefit. Every served answer is therefore one of three (``answer``):

- ``conditional``: effect modification is established (the heterogeneity
  test rejects after Holm's correction). The patient's numbers are the served
  model's conditional average benefit given their measured values, with its
  interval, and the patient gets a **patient label** read from that interval:
  ``likely_benefit`` when it lies above 0 pp, ``unlikely_benefit`` when it lies
  wholly below the minimal important benefit (``labels.unlikely_upper_below``),
  otherwise ``uncertain``.
- ``risk_based``: no established effect modification, but the prognostic
  model discriminates baseline risk out of fold (PATH, :mod:`training.path`).
  The numbers are the trial's constant odds ratio applied to the patient's
  predicted control risk. No patient label: such a difference between
  patients comes from their baseline risk, not from a subgroup.
- ``average``: neither. Every patient gets the trial's average answer.

Every answer also carries the **population label**, from the trial's
(multiplicity-adjusted) average effect: ``likely_benefit`` only for an
established average benefit of at least ``labels.likely_min_benefit``;
``unlikely_benefit`` when the adjusted interval lies wholly below
``labels.unlikely_upper_below``; otherwise ``uncertain``. Its reason says that
it describes the trial population, not this patient. Thresholds are in
percentage points (never "%").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from core.config import LabelRule
from core.spec import inline

LIKELY, UNCERTAIN, UNLIKELY = "likely_benefit", "uncertain", "unlikely_benefit"
LABELS = (LIKELY, UNCERTAIN, UNLIKELY)
CONDITIONAL, RISK_BASED, AVERAGE = "conditional", "risk_based", "average"
ANSWERS = (CONDITIONAL, RISK_BASED, AVERAGE)

ESTIMANDS = {
    CONDITIONAL: (
        "conditional average benefit: the expected difference in the chance of response, {treated} minus {control}, "
        "among patients with this patient's measured values (effect modification is established)"
    ),
    RISK_BASED: (
        "risk-based benefit: the trial's constant odds ratio applied to this patient's predicted chance of response on "
        "{control} (no established effect modification; the prognostic model discriminates baseline risk)"
    ),
    AVERAGE: (
        "trial average benefit: the difference in the chance of response, {treated} minus {control}, over the trial "
        "population (no established effect modification and no discriminating prognostic model)"
    ),
}

# The same estimands for an event to prevent: the benefit is the absolute risk reduction (see :class:`Wording`).
EVENT_ESTIMANDS = {
    CONDITIONAL: (
        "conditional average risk reduction: the expected risk of {event} on {control} minus that on {treated}, "
        "among patients with this patient's measured values (effect modification is established)"
    ),
    RISK_BASED: (
        "risk-based risk reduction: the trial's constant odds ratio applied to this patient's predicted risk of {event} "
        "on {control} (no established effect modification; the prognostic model discriminates baseline risk)"
    ),
    AVERAGE: (
        "trial average risk reduction: the risk of {event} on {control} minus that on {treated}, over the trial "
        "population (no established effect modification and no discriminating prognostic model)"
    ),
}


def pp(value: float | None, digits: int = 0) -> str:
    """Percentage points with a sign: 0.123 -> '+12 pp'."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{100 * value:+.{digits}f} pp"


@dataclass
class PatientLabels:
    """A batch's labels: the population label (one for all) and the patient labels (None unless conditional)."""

    population_label: str
    population_reason: str
    patient_label: np.ndarray  # object array of labels or None
    patient_reason: list[str]


@dataclass
class LabelPolicy:
    """One outcome's answer and label rule, fitted at training time and stored with the model."""

    answer: str  # conditional, risk_based or average
    rule: dict[str, float]
    evidence_sentence: str
    population_label: str
    population_reason: str
    answer_reason: str = ""
    level: float = 0.95
    interval_kind: str = "credible"  # credible (posterior draws) or confidence (bootstrap refits, the floor's score interval)
    interval_note: str = ""  # what the interval adds to the model's own, in words ("" for nothing): the calibration allowance

    @property
    def mode(self) -> str:
        """``individual`` when patients get their own label, else ``population`` (one label for everybody)."""
        return "individual" if self.answer == CONDITIONAL else "population"

    def estimand(self, treated: str = "treatment", control: str = "control", wording: Wording | None = None) -> str:
        return (wording or Wording()).estimand(self.answer, treated, control)

    def label(self, lower: np.ndarray, upper: np.ndarray) -> PatientLabels:
        """Both labels and their reasons for a batch of intervals (a patient label is read from the interval alone)."""
        lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
        n = len(lower)
        if self.answer != CONDITIONAL:
            reason = self.no_patient_label_reason()
            return PatientLabels(self.population_label, self.population_reason, np.full(n, None, dtype=object), [reason] * n)
        mid = self.rule["unlikely_upper_below"]
        labels = np.where(lower > 0, LIKELY, np.where(upper < mid, UNLIKELY, UNCERTAIN)).astype(object)
        if np.isfinite(lower).all() and np.isfinite(upper).all():
            # A reason depends on the label and the two bounds as whole percentage points (pp: 100 x, rounded,
            # its sign kept as formatting keeps it, "-0"): written once per distinct triple, not once per patient.
            low_pp, high_pp = np.rint(100 * lower), np.rint(100 * upper)
            keys = zip(labels.tolist(), low_pp.tolist(), np.signbit(low_pp).tolist(), high_pp.tolist(), np.signbit(high_pp).tolist(), strict=True)
            written: dict[tuple, str] = {}
            reasons = []
            for i, key in enumerate(keys):
                text = written.get(key)
                if text is None:
                    text = written[key] = self._reason(str(labels[i]), float(lower[i]), float(upper[i]))
                reasons.append(text)
        else:
            reasons = [self._reason(str(label), float(lo), float(hi)) for label, lo, hi in zip(labels, lower, upper, strict=True)]
        return PatientLabels(self.population_label, self.population_reason, labels, reasons)

    def _reason(self, label: str, low: float, high: float) -> str:
        note = f"; {self.interval_note}" if self.interval_note else ""
        interval = f"this patient's {100 * self.level:.0f}% {self.interval_kind} interval for the conditional average benefit ({pp(low)} to {pp(high)}{note})"
        mid = pp(self.rule["unlikely_upper_below"])
        if label == LIKELY:
            return f"{self.evidence_sentence} {interval[0].upper()}{interval[1:]} lies above 0 pp."
        if label == UNLIKELY:
            return f"{self.evidence_sentence} {interval[0].upper()}{interval[1:]} lies wholly below {mid}, the smallest benefit worth having."
        return f"{self.evidence_sentence} {interval[0].upper()}{interval[1:]} includes 0 pp and reaches {mid}, so it cannot tell."

    def no_patient_label_reason(self) -> str:
        """Why a patient gets no label of their own (answers other than ``conditional``)."""
        sentence = self.evidence_sentence[:1].lower() + self.evidence_sentence[1:]
        return " ".join(part for part in ("No patient label:", sentence or "effect modification is not established.", self.answer_reason) if part)

    def describe(self) -> str:
        """The rule in one sentence (thresholds in percentage points)."""
        population = (
            f"The population label ({self.population_label}) follows the trial's average effect: likely_benefit needs an "
            f"established average benefit of at least {pp(self.rule['likely_min_benefit'])}, unlikely_benefit an "
            f"average-effect interval wholly below {pp(self.rule['unlikely_upper_below'])}, otherwise uncertain."
        )
        if self.answer != CONDITIONAL:
            return f"{population} There is no patient label, because effect modification is not established."
        return (
            f"{population} The patient label is read from the patient's own {100 * self.level:.0f}% interval: "
            f"likely_benefit when it lies above 0 pp, unlikely_benefit when it lies wholly below "
            f"{pp(self.rule['unlikely_upper_below'])}, otherwise uncertain."
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_policy(
    rule: LabelRule,
    *,
    answer: str,
    answer_reason: str,
    evidence_sentence: str,
    average_effect: Any,
    level: float,
    interval_kind: str,
    treated: str = "treatment",
    control: str = "control",
    wording: Wording | None = None,
    interval_note: str = "",
) -> LabelPolicy:
    """One outcome's answer policy; ``average_effect`` is its multiplicity-adjusted :class:`core.effects.AverageEffect`."""
    if answer not in ANSWERS:
        raise ValueError(f"unknown answer {answer!r} (one of {ANSWERS})")
    label, reason = population_label(rule, average_effect, treated, control, wording)
    return LabelPolicy(answer, rule.model_dump(), evidence_sentence, label, reason, answer_reason, level, interval_kind, interval_note)


def population_label(rule: LabelRule, effect: Any, treated: str, control: str, wording: Wording | None = None) -> tuple[str, str]:
    """The label of the trial population as a whole, from its average effect, with its reason."""
    scope = "This describes the trial population as a whole, not this patient in particular."
    if effect is None or effect.risk_difference is None:
        return UNCERTAIN, f"The trial's average effect could not be estimated. {scope}"
    summary = effect.describe(treated, control, wording)
    high = effect.ci_high_adjusted if effect.ci_high_adjusted is not None else effect.ci_high
    if effect.direction == "benefit" and effect.risk_difference >= rule.likely_min_benefit:
        return LIKELY, f"{summary} {scope}"
    if high is not None and high < rule.unlikely_upper_below:
        return UNLIKELY, f"{summary} It rules out an average benefit of {pp(rule.unlikely_upper_below)} or more. {scope}"
    if effect.direction == "benefit":
        return UNCERTAIN, (
            f"{summary} The established average benefit is below the {pp(rule.likely_min_benefit)} needed for a likely "
            f"benefit. {scope}"
        )
    return UNCERTAIN, f"{summary} {scope}"


# How an outcome's numbers are told ----------------------------------------------------------------
def _nnt(value: float) -> str:
    """A number needed to treat, rounded up (Altman, BMJ 1998); infinite at no difference."""
    return "\u221e" if value == 0 or not np.isfinite(value) else f"{int(np.ceil(1 / abs(value) - 1e-9))}"


@dataclass(frozen=True)
class Wording:
    """How every output tells one outcome's numbers: one design for the reports, the API, the model card and the CLI.

    The models predict the chance of being a responder on each arm, and the
    benefit is its difference (treated minus control). For a score outcome, or
    an event that is hoped for (``event.good: true``), that chance is what a
    reader is told. For an event **to prevent** (``event.good: false``) a
    responder is a patient *without* the event, so the chance of response is
    one minus the event's risk: a reader is told the event's own risk on each
    arm, and the benefit is the **absolute risk reduction** (risk on control
    minus risk on the active arm, the same number), with the number needed to
    treat where it is defined: when the reduction's interval excludes 0
    (NNTB; NNTH for an interval wholly below 0). Otherwise the NNT is not
    defined and its interval runs through infinity (Altman, BMJ 1998;317:1309).
    """

    event: str | None = None  # the event's name, as the spec writes it, for an event to prevent

    @classmethod
    def of(cls, outcome: Any) -> Wording:
        """The wording of one :class:`core.spec.OutcomeSpec`."""
        kind = getattr(outcome, "kind", "score")
        event = getattr(outcome, "event", None) if kind == "binary" else getattr(outcome, "event_by", None) if kind == "event_by" else None
        if event is not None and not event.good:  # a binary event, or an event by a horizon, to prevent
            return cls(event=outcome.label)
        return cls()

    @property
    def prevents(self) -> bool:
        return self.event is not None

    @property
    def quantity(self) -> str:
        """What the per-arm numbers are: ``risk of Post-ERCP pancreatitis`` or ``chance of a meaningful response``."""
        return f"risk of {inline(self.event)}" if self.event else "chance of a meaningful response"

    @property
    def difference(self) -> str:
        """What the difference is called: ``absolute risk reduction`` or ``benefit``."""
        return "absolute risk reduction" if self.prevents else "benefit"

    def shown(self, p_response: float) -> float:
        """The number a reader is told for one arm: the event's risk (1 - chance of response) or the chance itself."""
        return 1.0 - float(p_response) if self.prevents else float(p_response)

    def arms(self, p_treated: float, p_control: float, treated: str, control: str) -> str:
        """``risk of Post-ERCP pancreatitis 9% on Rectal indomethacin vs 17% on Placebo``."""
        return f"{self.quantity} {100 * self.shown(p_treated):.0f}% on {treated} vs {100 * self.shown(p_control):.0f}% on {control}"

    def nnt_number(self, value: float, low: float | None, high: float | None) -> tuple[int | None, str | None]:
        """The number needed to treat as (number, ``benefit`` or ``harm``); (None, None) where it is not defined."""
        if not self.prevents or value is None or low is None or high is None or not np.isfinite(value):
            return None, None
        if low > 0:
            return int(_nnt(value)), "benefit"
        if high < 0:
            return int(_nnt(value)), "harm"
        return None, None

    def nnt(self, value: float, low: float | None, high: float | None, level: float, kind: str = "") -> str:
        """The number needed to treat (or harm) with its interval, or why it is not defined (events to prevent only)."""
        if not self.prevents:
            return ""
        what = f"{100 * level:.0f}% {kind + ' ' if kind else ''}interval"
        if value is None or not np.isfinite(value) or low is None or high is None:
            return "number needed to treat not defined (no interval)"
        if low > 0:
            return f"number needed to treat {_nnt(value)} ({what} {_nnt(high)} to {_nnt(low)})"
        if high < 0:
            return f"number needed to harm {_nnt(value)} ({what} {_nnt(low)} to {_nnt(high)})"
        return (
            f"number needed to treat not defined: the {what} of the risk reduction includes 0 "
            f"(NNTB {_nnt(high)} to \u221e to NNTH {_nnt(low)})"
        )

    def sentence(
        self, p_treated: float, p_control: float, benefit: float, low: float, high: float, level: float, kind: str, treated: str, control: str
    ) -> str:
        """The answer in one sentence: the numbers on each arm, the difference with its interval, and the NNT where it applies."""
        text = (
            f"{self.arms(p_treated, p_control, treated, control)}; {self.difference} {pp(benefit)} "
            f"({100 * level:.0f}% {kind} interval {pp(low)} to {pp(high)})"
        )
        nnt = self.nnt(benefit, low, high, level, kind)
        text += (f"; {nnt}" if nnt else "") + "."
        return text[:1].upper() + text[1:]

    def estimand(self, answer: str, treated: str, control: str) -> str:
        """The estimand of ``answer`` in one sentence, told as the event's risk for an event to prevent."""
        if not self.prevents:
            return ESTIMANDS[answer].format(treated=treated, control=control)
        return EVENT_ESTIMANDS[answer].format(treated=treated, control=control, event=inline(self.event))
