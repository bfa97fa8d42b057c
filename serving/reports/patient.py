"""The one-patient report: for the clinician, why the model says what it says about this patient.

``render_patient_report`` is the function behind ``responders report patient``
and the REST API's ``POST /report``. It uses the models' own predict, warnings
and :func:`~core.runtime.explain.explain_patients` (the one explanation function),
so the report always agrees with ``/predict`` and ``/explain``.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from core.labelling import CONDITIONAL, RISK_BASED, Wording, pp
from core.reports import figures
from core.reports.render import environment
from core.runtime.artefact import ResponderModel
from core.runtime.explain import OutputExplanation, explain_patients
from core.spec import inline

log = logging.getLogger("responders.reports")

TEMPLATE = "patient.html.j2"
TOP_DRIVERS = 5
LABEL_TEXT = {
    "likely_benefit": "Likely benefit",
    "uncertain": "Uncertain benefit",
    "unlikely_benefit": "Unlikely benefit",
}
ANSWER_TEXT = {
    "conditional": "conditional average benefit for patients with these measured values",
    "risk_based": "risk-based benefit, from this patient's baseline chance of response",
    "average": "trial average, the same for every patient",
}
# The same for an event to prevent, told as its risk (core.labelling.Wording).
EVENT_ANSWER_TEXT = {
    "conditional": "conditional average risk reduction for patients with these measured values",
    "risk_based": "risk-based risk reduction, from this patient's baseline risk",
    "average": "trial average, the same for every patient",
}
WARNING_TITLES = {
    "imputed": "Not measured: imputed",
    "below_detection_limit": "Below the detection limit",
    "outside_training_range": "Outside the training range",
    "unseen_category": "Category not seen in training",
}


CHART_DRIVERS = 6  # bars in the drivers chart; the rest are pooled into one "other inputs" bar
MIN_MOVE = 0.01  # below 1 percentage point in total, the drivers do not change the answer: no chart


def driver_view(benefit: OutputExplanation, arm_only: bool) -> dict[str, Any]:
    """How the report shows what moves one output (benefit, or the control arm's chance): a chart, or a sentence saying why not.

    ``total`` is how far the drivers move the answer in all (the sum of their
    absolute contributions, probability points); below :data:`MIN_MOVE` a chart
    would draw noise at a scale no one reads, so the report says so instead.
    """
    drivers = benefit.drivers
    total = float(sum(abs(d.contribution) for d in drivers))
    view: dict[str, Any] = {"chart": False, "total": total, "base": benefit.base_value, "prediction": benefit.prediction}
    if arm_only or not drivers:
        view["sentence"] = benefit.note or "The prediction equals the average benefit: no value of this patient moves it."
        return view
    if total < MIN_MOVE:
        what = "the predicted benefit" if benefit.target == "benefit" else "the predicted chance of response without the treatment"
        values = f"{pp(benefit.base_value, 1)} to {pp(benefit.prediction, 1)}" if benefit.target == "benefit" else (
            f"{100 * benefit.base_value:.0f}% to {100 * benefit.prediction:.0f}%"
        )
        view["sentence"] = (
            f"This patient's values move {what} by less than 1 percentage point in all "
            f"(from the trial average of {values}), so no chart is shown: "
            "for this patient the answer is, in effect, the model's average answer."
        )
        return view
    shown = drivers[:CHART_DRIVERS]
    rest = drivers[CHART_DRIVERS:]
    view.update(
        chart=True,
        bars=[(d.display_value, d.contribution) for d in shown],
        remainder=(len(rest), float(sum(d.contribution for d in rest))) if rest else None,
    )
    return view


def trial_name(spec) -> str:
    """The trial as a footer names it: "the trial of Rectal indomethacin vs Placebo"."""
    return f"the trial of {spec.treated_display()} vs {inline(spec.control_display())}"


def plain_rule(text: str) -> str:
    """The label rule with the labels' code names (``likely_benefit``) replaced by the words on the report."""
    for code in ("unlikely_benefit", "likely_benefit"):
        text = text.replace(code, f"\u201c{LABEL_TEXT[code].lower()}\u201d")
    return text


def short_reasons(model: ResponderModel, population: str, patient: str | None, lower: float, upper: float) -> tuple[str, str]:
    """One short sentence per label for the answer box (the full reasons stand in the outcome's section)."""
    rule = model.label_policy.rule
    noun = Wording.of(model.spec.outcomes[model.outcome]).difference.replace("absolute ", "")
    effect = model.average_effect or {}
    if population == "likely_benefit":
        first = f"The trial established an average {noun} of at least {pp(rule['likely_min_benefit'])}."
    elif population == "unlikely_benefit":
        first = f"The trial rules out an average {noun} of {pp(rule['unlikely_upper_below'])} or more."
    elif effect.get("direction") == "benefit":
        first = f"The established average {noun} is below the {pp(rule['likely_min_benefit'])} needed for a likely benefit."
    else:
        first = "The trial did not establish an average effect."
    first += " This describes the trial population, not this patient."
    mid = pp(rule["unlikely_upper_below"])
    if patient == "likely_benefit":
        second = f"Read from this patient's interval: it lies above 0 pp ({pp(lower)} to {pp(upper)})."
    elif patient == "unlikely_benefit":
        second = f"Read from this patient's interval: it lies wholly below {mid} ({pp(lower)} to {pp(upper)})."
    elif patient == "uncertain":
        second = f"Read from this patient's interval: it includes 0 pp and reaches {mid} ({pp(lower)} to {pp(upper)})."
    else:
        evidence = model.evidence
        p = f" (Holm-adjusted p = {evidence.p_adjusted:.3g})" if evidence.tested and evidence.p_adjusted is not None else ""
        second = f"No patient label: effect modification is not established{p}."
    return first, second


def _average_effect(model: ResponderModel) -> dict[str, Any] | None:
    effect = model.average_effect or {}
    if effect.get("risk_difference") is None:
        return None
    ancova = effect.get("ancova") or {}
    return {**effect, "ancova": ancova if ancova.get("estimate") is not None else None}


def _outcome_section(model: ResponderModel, raw: pd.DataFrame, version: str) -> dict[str, Any]:
    prediction = model.predict(raw).iloc[0]
    [explained] = explain_patients(model, raw)
    spec = model.spec
    labels = (spec.treated_display(), spec.control_display())
    policy = model.label_policy
    conditional = policy.answer == CONDITIONAL
    wording = Wording.of(spec.outcomes[model.outcome])
    p1, p0 = float(prediction["p_response_treated"]), float(prediction["p_response_control"])
    benefit, lower, upper = float(prediction["benefit"]), float(prediction["benefit_lower"]), float(prediction["benefit_upper"])
    # Drivers of benefit only with established effect modification; otherwise prognostic drivers, named as such.
    explained_output = explained.benefit if conditional else explained.p_response_control
    view = driver_view(explained_output, model.candidate.same_for_everyone)
    with figures.PLOT_LOCK:  # pyplot is shared by every thread of a serving process
        probabilities = figures.data_uri(
            figures.probability_figure(wording.shown(p1), wording.shown(p0), labels, wording.quantity),
            dpi=figures.PATIENT_DPI,
            tight=False,
        )
        interval = figures.data_uri(
            figures.benefit_figure(
                benefit, lower, upper, labels, model.interval_level, wording.difference,
            ),
            dpi=figures.PATIENT_DPI,
            tight=False,
        )
        drivers = (
            figures.data_uri(figures.drivers_figure(view["bars"], view["remainder"]), dpi=figures.PATIENT_DPI, tight=False)
            if view["chart"]
            else None
        )
    outcome = spec.outcomes[model.outcome]
    patient_label = prediction["patient_label"]
    patient_label = None if patient_label is None or (isinstance(patient_label, float) and math.isnan(patient_label)) else str(patient_label)
    population = str(prediction["population_label"])
    effect = _average_effect(model) or {}
    adjusted = effect.get("ci_low_adjusted") is not None  # a single outcome's effect needs no Holm adjustment
    population_low = effect.get("ci_low_adjusted" if adjusted else "ci_low")
    population_high = effect.get("ci_high_adjusted" if adjusted else "ci_high")
    population_level = (effect.get("adjusted_level") if adjusted else None) or effect.get("level") or model.interval_level
    short_population, short_patient = short_reasons(
        model, population, patient_label, float(prediction["benefit_lower"]), float(prediction["benefit_upper"])
    )
    return {
        "key": model.outcome,
        "label": outcome.label,
        "short": outcome.label.split(" (")[0],
        "responder_rule": model.metadata.get("responder_rule") or outcome.responder.describe(outcome.better, outcome.unit),
        "p_treated": p1,
        "p_control": p0,
        # What the reader is told per arm: the chance of response, or the risk of an event to prevent.
        "shown_treated": wording.shown(p1),
        "shown_control": wording.shown(p0),
        "event": wording.event,
        "quantity": wording.quantity,
        "difference": wording.difference,
        "nnt": wording.nnt(benefit, lower, upper, model.interval_level, policy.interval_kind),
        "population_nnt": wording.nnt(effect.get("risk_difference"), population_low, population_high, population_level),
        "benefit": benefit,
        "lower": lower,
        "upper": upper,
        "level": model.interval_level,
        "answer": policy.answer,
        "answer_text": (EVENT_ANSWER_TEXT if wording.prevents else ANSWER_TEXT)[policy.answer],
        "answer_reason": policy.answer_reason,
        "estimand": policy.estimand(spec.treated_inline(), spec.control_inline(), wording),
        "interval_kind": policy.interval_kind,
        "patient_label": patient_label,
        "patient_label_text": LABEL_TEXT.get(patient_label, "") if patient_label else "",
        "patient_label_reason": str(prediction["patient_label_reason"]),
        "population_label": population,
        "population_label_text": LABEL_TEXT.get(population, population.replace("_", " ")),
        "population_label_reason": str(prediction["population_label_reason"]),
        "population_short": short_population,
        "patient_short": short_patient,
        "population_rd": effect.get("risk_difference"),
        "population_low": population_low,
        "population_high": population_high,
        "population_level": population_level,
        # A Holm-adjusted interval is wider than 95% (97.5% for two outcomes): the page says why.
        "population_adjusted": bool(adjusted and (effect.get("n_outcomes") or 1) > 1),
        "population_n_outcomes": effect.get("n_outcomes") or 1,
        "label_rule": plain_rule(policy.describe()),
        "probabilities": probabilities,
        "interval": interval,
        "drivers_chart": drivers,
        "drivers_view": view,
        "conditional": conditional,
        "drivers_of": "benefit" if conditional else "prognosis",
        "benefit_drivers": [d.sentence for d in explained_output.drivers[:TOP_DRIVERS]] if view["chart"] else [],
        "treated_drivers": [d.sentence for d in explained.p_response_treated.drivers[:3]],
        "average_effect": _average_effect(model),
        "evidence": model.evidence.to_dict(),
        "candidate": model.metadata.get("candidate_label", model.candidate_name),
        "risk_model": policy.answer == RISK_BASED,
        "version": version,
    }


def _provenance(models: dict[str, ResponderModel]) -> dict[str, Any]:
    """Simulated if any model was trained on simulated data; unknown when older models did not record it."""
    records = [m.metadata.get("data_provenance") for m in models.values()]
    known = [r for r in records if r]
    return {
        "simulated": any(r.get("simulated") for r in known),
        "known": len(known) == len(records),
        "sources": sorted({r.get("source", "") for r in known if r.get("source")}),
    }


def render_patient_report(
    models: dict[str, ResponderModel],
    patient: pd.DataFrame,
    versions: dict[str, str],
    now: datetime | None = None,
) -> str:
    """One-patient HTML report (self-contained) over one model per outcome.

    Parameters
    ----------
    models
        Outcome name -> the champion :class:`ResponderModel` for that outcome.
    patient
        One row of data-contract baseline fields (labs as numbers or report
        text); only the first row is used.
    versions
        Outcome name -> model version text shown on the report (e.g. ``"fibromyalgia-ldn-pain v3"``).
    now
        Report date (default: the current UTC time).
    """
    if not models:
        raise ValueError("no models to report on")
    if len(patient) == 0:
        raise ValueError("the patient frame has no rows")
    started = time.perf_counter()
    raw = patient.iloc[[0]].reset_index(drop=True)
    first = next(iter(models.values()))
    spec = first.spec
    sections = [_outcome_section(model, raw, versions.get(outcome, "unknown version")) for outcome, model in models.items()]

    seen: set[tuple[str, str, str]] = set()
    warnings = []
    for model in models.values():
        for w in model.warnings(raw)[0]:
            if (w.code, w.field, w.message) not in seen:
                seen.add((w.code, w.field, w.message))
                warnings.append({"code": w.code, "title": WARNING_TITLES.get(w.code, w.code), "field": w.field, "message": w.message})
    patient_id = raw[spec.id_column].iat[0] if spec.id_column in raw.columns else None
    if patient_id is not None and isinstance(patient_id, float) and math.isnan(patient_id):
        patient_id = None
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    html = environment("serving.reports").get_template(TEMPLATE).render(
        spec={
            "name": spec.name,
            "trial": trial_name(spec),
            "has_labs": bool(spec.labs),
            "treated": spec.treated_display(),
            "control": spec.control_display(),
            "n_train": first.metadata.get("n_train"),
        },
        patient_id=patient_id,
        sections=sections,
        warnings=warnings,
        provenance=_provenance(models),
        date=moment.strftime("%Y-%m-%d %H:%M UTC"),
        image_width=figures.DISPLAY_WIDTH,
        below_detection=any(w["code"] == "below_detection_limit" for w in warnings),
    )
    log.info("patient report rendered: %d outcome(s), %.0f kB, %.2f s", len(sections), len(html) / 1024, time.perf_counter() - started)
    return html
