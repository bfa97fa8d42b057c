"""Request and response models of the clinic API; the patient model is generated from the dataset spec.

A patient's fields are the data contract's baseline columns, so a row of a
trial file without its arm and follow-up columns is a valid patient. Units,
ranges and descriptions come from the spec and the lab catalog, and reach the
OpenAPI document that the integration engineer reads.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from core.spec import CovariateSpec, DatasetSpec
from features.catalog import LabCatalog
from features.codes import level_key

Label = Literal["likely_benefit", "uncertain", "unlikely_benefit"]

# Validation errors never echo the submitted values: they would end up in logs. Strict types: a JSON
# boolean or a numeric string is not a number here (`crp: true` must not become 1.0 mg/L).
_PRIVATE = ConfigDict(extra="forbid", hide_input_in_errors=True, strict=True)

# A patient id is echoed in responses and reports: no control, line-separator, zero-width or bidi
# characters anywhere, not blank, no space at either end. Written with \uXXXX escapes, which JSON
# Schema, Python and pydantic's regex engine all read the same way.
_ID_FORBIDDEN = r"\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"
_ID_EDGE = _ID_FORBIDDEN + r"\u0020\u00a0\u1680\u2000-\u200a\u205f\u3000"
PATIENT_ID_PATTERN = f"^[^{_ID_EDGE}](?:[^{_ID_FORBIDDEN}]*[^{_ID_EDGE}])?$"


def _lab_description(catalog: LabCatalog, analyte: str, column: str) -> str:
    lab = catalog[analyte]
    parts = [f"{lab.name} ({lab.label})."]
    if lab.kind == "titre":
        parts.append("Titre as lab report text, e.g. '1:160', '1:320', 'negative'.")
    else:
        parts.append(
            f"A number in {lab.unit} (or in the unit given in `{column}_unit`), or lab report text such as "
            + (f"'<{lab.lod:g}', " if lab.lod is not None else "")  # a declared lab may have no detection limit
            + f"'>{lab.plausible[1] / 10:g}'" + (", 'negative', 'positive'" if lab.positive_at else "") + "."
        )
        if lab.lod is not None:
            parts.append(f"Limit of detection {lab.lod:g} {lab.unit}.")
    if lab.upper_reference is not None:
        ref = f"1:{lab.upper_reference:g}" if lab.kind == "titre" else f"{lab.upper_reference:g} {lab.unit}"
        parts.append(f"Upper reference limit {ref}{' (age/sex-adjusted)' if lab.reference_rule else ''}.")
    if lab.lower_reference is not None:
        parts.append(f"Lower reference limit {lab.lower_reference:g} {lab.unit}.")
    if lab.positive_at is not None:
        cut = f"1:{lab.positive_at:g}" if lab.kind == "titre" else f"{lab.positive_at:g} {lab.unit}"
        parts.append(f"Positive at >= {cut}.")
    if lab.loinc:
        parts.append(f"LOINC {lab.loinc}.")
    parts.append("Omit or null when not measured: it is imputed and the response says so.")
    return " ".join(parts)


def _as_code(value: Any) -> Any:
    """A category code sent as a JSON number or text, in its canonical text form (1, 1.0, "1" -> "1")."""
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return level_key(value)
    return value


def _categorical_field(column: str, cov: CovariateSpec) -> Any:
    codes = tuple(cov.level_codes())
    names = cov.level_names()
    shown = ", ".join(code if names.get(code, code) == code else f"{code} ({names[code]})" for code in codes)
    return Annotated[
        Literal[codes],  # type: ignore[valid-type]
        BeforeValidator(_as_code),
        Field(description=f"{cov.label or column}: one of {shown} (a JSON number or text)."),
    ]


def patient_model(spec: DatasetSpec, catalog: LabCatalog) -> type[BaseModel]:
    """A pydantic model of one patient's baseline data for ``spec``."""
    required = set(spec.required_columns())
    fields: dict[str, Any] = {
        spec.id_column: (
            Annotated[
                str,
                Field(
                    min_length=1,
                    max_length=64,
                    pattern=PATIENT_ID_PATTERN,
                    description="Pseudonymous patient id, echoed in the response: not blank, no control characters, "
                    "no leading or trailing spaces. Ids repeated within one request are scored and get a duplicate_id warning.",
                ),
            ],
            ...,
        )
    }
    for column in spec.baseline_score_columns():
        outcome = spec.baseline_outcome(column)
        assert outcome.scale is not None
        low, high = outcome.scale
        fields[column] = (
            Annotated[float, Field(ge=low, le=high, description=f"{spec.baseline_label(column)}; {outcome.unit}, {low:g}-{high:g}.")],
            ...,
        )
    for column, cov in spec.covariates.items():
        label = cov.label or column
        if cov.kind == "numeric":
            low, high = cov.range or (None, None)
            unit = f"; {cov.unit}" if cov.unit else ""
            rng = f", {low:g}-{high:g}" if low is not None else ""
            annotation = Annotated[float, Field(ge=low, le=high, description=f"{label}{unit}{rng}.")]
        else:
            annotation = _categorical_field(column, cov)
        if column in required:
            fields[column] = (annotation, ...)
        else:
            fields[column] = (annotation | None, None)
    for analyte, lab in spec.labs.items():
        description = _lab_description(catalog, analyte, lab.column)
        fields[lab.column] = (float | Annotated[str, Field(max_length=32)] | None, Field(None, description=description))
        if catalog[analyte].kind != "titre":
            units = ", ".join(catalog[analyte].units)
            fields[f"{lab.column}_unit"] = (
                Annotated[str, Field(max_length=16)] | None,
                Field(None, description=f"Unit of `{lab.column}` when not {catalog[analyte].unit}; accepted: {units}."),
            )
    model = create_model("Patient", __config__=_PRIVATE, **fields)
    model.__doc__ = (
        f"One patient's baseline data in the '{spec.name}' data contract (the trial file's baseline columns). "
        "Labs accept numbers or report text and are parsed by the same code as training."
    )
    return model


class FieldProblem(BaseModel):
    field: str = Field(description="The patient field concerned (data contract column name).")
    message: str
    code: str = Field(description="Machine-readable kind, e.g. implausible_lab, unknown_unit, unparseable_lab.")


class InputWarningOut(BaseModel):
    code: str = Field(description="imputed, below_detection_limit, outside_training_range, unseen_category or duplicate_id.")
    field: str
    message: str


Answer = Literal["conditional", "risk_based", "average"]


class Interval(BaseModel):
    """The interval for the estimand served (see ``estimand``): the model's own uncertainty, from posterior draws
    (credible), bootstrap refits (confidence) or, for the trial average answer, the trial's own Miettinen-Nurminen
    interval at this level (confidence; the population block gives the multiplicity-adjusted one). It is not an interval for one patient's own benefit, which no
    parallel-group trial identifies. Its coverage of simulated patients' observable conditional benefit, with its width
    and interval score beside the trial average's, is in benchmarks/RESULTS.md (section 5 up to 1,000 patients,
    section 6 at 3,000-10^5): a bootstrap interval carries the refits' variation, not the model's approximation error.
    From 2,000 patients a conditional answer's interval therefore adds an allowance for that error
    (OutcomeMetadata.calibration_allowance): the model's out-of-fold calibration error and its disagreement with the
    other candidates. Neither identifies the error patient by patient; section 6 measures what they give."""

    lower: float = Field(ge=-1, le=1, description="Fraction (0.05 = 5 percentage points).")
    upper: float = Field(ge=-1, le=1, description="Fraction.")
    level: float = Field(description="Nominal level, e.g. 0.95.")
    kind: Literal["credible", "confidence"] = Field("credible", description="credible: posterior draws; confidence: bootstrap refits, or the trial average's Miettinen-Nurminen interval.")


class PopulationAnswer(BaseModel):
    """The trial population's answer: its average effect and the label that belongs to it (the same for every patient)."""

    label: Label = Field(description="From the trial's multiplicity-adjusted average effect; describes the trial population, not this patient.")
    label_reason: str
    risk_difference: float | None = Field(None, description="Responder rate difference, treated minus control, as a fraction.")
    interval: Interval | None = Field(None, description="Multiplicity-adjusted score interval of the risk difference (confidence).")


class Evidence(BaseModel):
    subgroup_evidence: bool = Field(
        description="Did training establish effect modification for this outcome (the heterogeneity test, Holm-adjusted)? "
        "Only then are patient labels and drivers of benefit served."
    )
    p_adjusted: float | None = Field(None, description="Holm-adjusted p-value of the heterogeneity test (see /metadata for its null).")
    verdict: str


class ModelRef(BaseModel):
    registered_model: str
    version: str
    training_run_id: str
    candidate: str = Field(description="Model type: arm_only, risk_model, bcf, interaction_logistic, t_learner or dr_learner.")


class EventRisk(BaseModel):
    """An event to prevent (a binary outcome with ``event.good: false``), told as the event's own risk.

    A responder is a patient without the event, so risk = 1 - p_response and
    absolute_risk_reduction = risk_control - risk_treated = benefit.
    """

    event: str = Field(description="The event, as the dataset spec names it (e.g. 'Post-ERCP pancreatitis').")
    risk_treated: float = Field(ge=0, le=1, description="Risk of the event on the active arm, a fraction (1 - p_response_treated).", json_schema_extra={"unit": "fraction"})
    risk_control: float = Field(ge=0, le=1, description="Risk of the event on the control arm, a fraction (1 - p_response_control).", json_schema_extra={"unit": "fraction"})
    absolute_risk_reduction: float = Field(
        ge=-1, le=1, description="risk_control - risk_treated, a fraction (equal to benefit); its interval is benefit_interval.",
        json_schema_extra={"unit": "fraction"},
    )
    number_needed: int | None = Field(
        description="Number needed to treat (nnt_kind benefit) or to harm (nnt_kind harm), rounded up; null when the "
        "interval of the risk reduction includes 0, where it is not defined (Altman, BMJ 1998)."
    )
    nnt_kind: Literal["benefit", "harm"] | None = None
    nnt_text: str = Field(description="The number needed to treat with its interval, or why it is not defined, in words.")


class ComparisonOut(BaseModel):
    """Three or more arms: which two arms an answer compares (absent for a two-arm trial)."""

    key: str = Field(description="the comparison's name, e.g. cbt-vs-cont; the answer's key is <key>/<outcome>")
    treated: str = Field(description="the compared arm's name (p_response_treated is on this arm)")
    control: str = Field(description="the arm it is compared with (p_response_control is on this arm)")
    treated_code: str
    control_code: str


class OutcomePrediction(BaseModel):
    p_response_treated: float = Field(
        ge=0, le=1, description="Probability of a clinically meaningful response on the active arm (named in /metadata: treated), "
        "a fraction. For an event to prevent, the probability of being without the event (see event).",
        json_schema_extra={"unit": "fraction"},
    )
    p_response_control: float = Field(
        ge=0, le=1, description="Probability of a clinically meaningful response on the control arm (named in /metadata: control), "
        "a fraction. For an event to prevent, the probability of being without the event (see event).",
        json_schema_extra={"unit": "fraction"},
    )
    benefit: float = Field(
        ge=-1, le=1, description="p_response_treated - p_response_control, a fraction (0.12 = 12 percentage points, the unit "
        "of every sentence); see estimand. For an event to prevent it is the absolute risk reduction.",
        json_schema_extra={"unit": "fraction"},
    )
    summary: str = Field(
        "", description="The answer in one sentence, in percent and percentage points: the chance of response on each arm "
        "(for an event to prevent, the event's own risk), the benefit (absolute risk reduction) with its interval and, for an "
        "event to prevent, the number needed to treat where it is defined."
    )
    event: EventRisk | None = Field(None, description="Only for an event to prevent: the event's risk on each arm, the absolute risk reduction and the NNT.")
    benefit_interval: Interval
    answer: Answer = Field(
        description="Which estimand these numbers are: conditional (conditional average benefit given the patient's measured "
        "values; effect modification established), risk_based (the trial's constant odds ratio at the patient's predicted "
        "risk) or average (the trial average for everybody)."
    )
    estimand: str = Field(description="The estimand in one sentence.")
    patient_label: Label | None = Field(
        description="Only when effect modification is established (answer conditional): read from benefit_interval "
        "(above 0: likely_benefit; wholly below the minimal important benefit: unlikely_benefit; else uncertain). Null otherwise."
    )
    patient_label_reason: str = Field(description="Why this patient label, or why there is none, in one sentence.")
    comparison: ComparisonOut | None = Field(
        None, exclude_if=lambda v: v is None, description="Three or more arms: the two arms this answer compares."
    )
    population: PopulationAnswer
    label_rule: str
    responder_rule: str = Field(
        description="What counts as a clinically meaningful response, e.g. '>= 30% reduction from baseline' or "
        "'no post-ERCP pancreatitis' (a binary event to prevent)."
    )
    evidence: Evidence
    model: ModelRef


class PatientPrediction(BaseModel):
    patient_id: str
    predictions: dict[str, OutcomePrediction] | None = Field(None, description="Per outcome; null when the patient has errors.")
    warnings: list[InputWarningOut] = []
    errors: list[FieldProblem] = Field([], description="Why this patient could not be scored; other patients are unaffected.")


class PredictResponse(BaseModel):
    results: list[PatientPrediction]
    n_scored: int
    n_failed: int
    models: dict[str, ModelRef]
    simulated_training_data: bool = Field(
        False, description="The champions were trained on simulated data (a validation harness, not a source of findings)."
    )


class Driver(BaseModel):
    feature: str = Field(description="The input this driver stands for (data-contract field, e.g. crp, pain_baseline).")
    description: str
    patient_value: str = Field(description="The patient's value as a clinician reads it, with unit.")
    feature_value: float | None = Field(description="The patient's value of the input in canonical units (null for a category or an imputed value).")
    unit: str
    contribution: float = Field(description="Contribution in probability points as a fraction (0.06 = 6 percentage points).")
    sentence: str
    components: dict[str, float] = Field({}, description="Engineered features grouped into this driver and their contributions.")


class OutputExplanation(BaseModel):
    base_value: float = Field(description="The model's average output; base_value + sum(contributions) = prediction.")
    prediction: float
    drivers: list[Driver] = Field(description="Ranked by absolute contribution; one driver per input (a lab, a score, a covariate).")
    note: str = Field("", description="Set when the prediction does not depend on the patient's values (arm-only model).")


class OutcomeExplanation(BaseModel):
    drivers_of: Literal["benefit", "prognosis"] = Field(
        description="benefit: effect modification is established and `benefit` explains the conditional average benefit; "
        "prognosis: it is not, so `benefit` is null and `p_response_control` shows prognostic drivers (what shapes the "
        "chance of response without the treatment), which are not drivers of benefit."
    )
    benefit: OutputExplanation | None = Field(description="SHAP drivers of benefit; null unless effect modification is established.")
    p_response_control: OutputExplanation = Field(description="Prognostic drivers: SHAP contributions to the chance of response on the control arm.")
    p_response_treated: OutputExplanation
    model: ModelRef


class PatientExplanation(BaseModel):
    patient_id: str
    explanations: dict[str, OutcomeExplanation] | None = None
    warnings: list[InputWarningOut] = []
    errors: list[FieldProblem] = []


class ExplainResponse(BaseModel):
    results: list[PatientExplanation]
    models: dict[str, ModelRef]
    simulated_training_data: bool = Field(
        False, description="The champions were trained on simulated data (a validation harness, not a source of findings)."
    )


class FeatureOut(BaseModel):
    name: str
    description: str
    unit: str
    group: str


class AverageEffectOut(BaseModel):
    """The trial's average effect on responders for one outcome (treated minus control)."""

    risk_difference: float | None = Field(description="Responder rate difference, treated minus control (0.17 = 17 percentage points).")
    ci_low: float | None = Field(description="Lower limit of the 95% score interval (Miettinen-Nurminen).")
    ci_high: float | None
    p_value: float | None = Field(description="Score test of no difference.")
    p_adjusted: float | None = Field(None, description="Holm-adjusted across the trial's outcomes.")
    ci_low_adjusted: float | None = None
    ci_high_adjusted: float | None = None
    established: bool = Field(False, description="The multiplicity-adjusted interval excludes no difference.")
    rate_treated: float | None = None
    rate_control: float | None = None
    ancova_difference: float | None = Field(None, description="ANCOVA difference in change from baseline on the score scale, if the outcome has a baseline.")
    ancova_p_value: float | None = None
    risk_ratio: float | None = Field(None, description="Responder risk ratio, treated over control (Katz interval).")
    rr_low: float | None = None
    rr_high: float | None = None
    odds_ratio: float | None = Field(None, description="Responder odds ratio (Woolf interval).")
    or_low: float | None = None
    or_high: float | None = None

    @classmethod
    def from_model(cls, effect: dict | None) -> AverageEffectOut | None:
        if not effect:
            return None
        ancova = effect.get("ancova") or {}
        relative = effect.get("relative") or {}
        keys = [k for k in cls.model_fields if k in effect]
        ratios = {k: relative.get(k) for k in ("risk_ratio", "rr_low", "rr_high", "odds_ratio", "or_low", "or_high")}
        return cls(**{k: effect[k] for k in keys}, ancova_difference=ancova.get("estimate"), ancova_p_value=ancova.get("p_value"), **ratios)


class OutcomeMetadata(BaseModel):
    label: str
    kind: Literal["score", "binary", "event_by"] = Field(
        "score", description="score: a follow-up score; binary: an event (yes/no); event_by: the event by a time horizon (censored patients excluded)."
    )
    event_to_prevent: str | None = Field(
        None, description="For an event to prevent (event.good false): its name. Answers then give the event's risk "
        "per arm and the absolute risk reduction (OutcomePrediction.event)."
    )
    description: str = ""
    comparison: ComparisonOut | None = Field(
        None, exclude_if=lambda v: v is None, description="Three or more arms: the two arms this outcome's model compares."
    )
    responder_rule: str
    label_rule: str
    answer: Answer = Field("average", description="The answer every patient gets for this outcome (see OutcomePrediction.answer).")
    answer_reason: str = Field("", description="Why this answer and model serve.")
    refused: dict[str, list[str]] = Field(
        {}, description="Models that may not serve (in an arm, the out-of-fold AUC's upper 95% limit below 0.5 or the calibration slope's upper 95% limit below 0), with the failed checks."
    )
    estimand: str = ""
    average_effect: AverageEffectOut | None = None
    interval_level: float
    calibration_allowance: float = Field(
        0.0, ge=0, description="A conditional answer's allowance for the model's error (SD, a fraction: its out-of-fold "
        "calibration error and its disagreement with the other eligible candidates, in quadrature), added to each side "
        "of every benefit interval in quadrature; 0 when none is added (the other answers, fewer than 2,000 patients)."
    )
    calibration_allowance_reason: str | None = Field(
        None, description="How the allowance was measured (each part, each candidate's distance), or why it was not; null for an answer other than conditional."
    )
    evidence: Evidence
    model: ModelRef
    features: list[FeatureOut]


class Metadata(BaseModel):
    spec: str
    description: str = Field("", description="The trial, as the dataset spec describes it.")
    treated: str = Field(description="Name of the active arm, as people read it (e.g. 'Low-dose naltrexone').")
    control: str = Field(description="Name of the control arm (e.g. 'Placebo').")
    treated_code: str = Field("", description="Code of the active arm in the trial file's arm column.")
    control_code: str = Field("", description="Code of the control arm in the trial file's arm column.")
    outcomes: dict[str, OutcomeMetadata]
    max_batch: int
    simulated_training_data: bool = Field(description="The champions were trained on simulated data.")
