"""The one explanation function: ranked SHAP drivers, one per input, with the patient's value and a plain sentence.

Both the REST API (``/explain``) and the reports run it: the scoring plan
(:meth:`core.runtime.plan.OutcomePlan.explain`) calls :func:`explain_rows`
with the values it parsed once, and :func:`explain_patients` does the same for
a frame of patients (the reports).
Contributions come from the candidate's own exact method (TreeSHAP for tree
models, coefficients for linear models; see ``core.candidates``) in
probability points on the feature pipeline's features, and always add up:
``base + sum(contributions) == model output``.

A clinician thinks in inputs, not engineered features, so features are
grouped into **one driver per input** (``features.pipeline.feature_sources``):
a lab's log value, positivity flag, band, below-detection and missing flags
are one driver; a composite feature (the inflammation index, markers above
reference, ratios, the autoantibody burden, cognitive dominance) is split
between its inputs by each input's part of the composite's deviation from
its training average; the levels of a categorical are one driver. Grouping
keeps additivity, and there is one sentence per input, never two about the
same lab. The feature-level contributions stay available (``features``) for
the cohort report's SHAP plots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.labelling import Wording
from core.spec import DatasetSpec
from features.cores import _upper_reference

if TYPE_CHECKING:
    from core.candidates import Contributions, Explanation
    from core.runtime.artefact import ResponderModel


def targets(spec: DatasetSpec, outcome: str | None = None) -> dict[str, str]:
    """What each explained output is, in a sentence, with the spec's names of the arms.

    For an event to prevent (:class:`core.labelling.Wording`) the per-arm
    outputs are told as the event's risk, so a driver that raises the chance
    of response *lowers* that risk (see :func:`_sentence`).
    """
    wording = Wording.of(spec.outcomes[outcome]) if outcome in spec.outcomes else Wording()
    return {
        "benefit": f"the predicted {wording.difference}",
        "p_response_treated": f"the {wording.quantity} on {spec.treated_inline()}",
        "p_response_control": f"the {wording.quantity} on {spec.control_inline()}",
    }


NO_DEPENDENCE = (
    "This prediction does not depend on the patient's values: the model gives every patient the trial's average answer."
)


@dataclass
class Driver:
    feature: str  # the input (data-contract field) this driver stands for
    description: str
    group: str
    value: float | None  # the patient's value of the input (canonical units), None for a category
    display_value: str  # what the clinician recognises: the patient's lab or score with its unit
    unit: str
    contribution: float  # probability points as a fraction (0.06 = 6 percentage points)
    sentence: str
    components: dict[str, float] = field(default_factory=dict)  # engineered feature -> its part of the contribution

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OutputExplanation:
    target: str  # "benefit", "p_response_treated" or "p_response_control"
    base_value: float
    prediction: float
    drivers: list[Driver]
    additivity_error: float
    features: dict[str, float] = field(default_factory=dict)  # feature-level contributions (cohort SHAP plots)
    note: str = ""

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        drivers = self.drivers[:top] if top else self.drivers
        return {
            "target": self.target,
            "base_value": self.base_value,
            "prediction": self.prediction,
            "additivity_error": self.additivity_error,
            "drivers": [d.to_dict() for d in drivers],
            "note": self.note,
        }


@dataclass
class PatientExplanation:
    """One patient's SHAP explanations of every output.

    ``p_response_control`` holds the *prognostic* drivers (what shapes the
    chance of response without the treatment). Which of them a reader is shown
    follows the answer (:mod:`core.labelling`): drivers of benefit only
    when effect modification is established (``shows_benefit_drivers``).
    """

    row: int
    benefit: OutputExplanation
    p_response_treated: OutputExplanation
    p_response_control: OutputExplanation
    imputed: list[str] = field(default_factory=list)
    shows_benefit_drivers: bool = False


def _format_number(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2g}" if abs(value) < 1 else f"{value:.1f}"


class _Describer:
    """Turns (input, patient row) into a recognisable value and a reference flag, from the parsed input columns."""

    def __init__(self, model: ResponderModel, parsed: Mapping[str, np.ndarray]):
        self.model = model
        self.catalog = model.pipeline.named_steps["parse"].catalog_
        self.columns = parsed
        spec = model.spec
        self.spec = spec
        self.targets = targets(spec, model.outcome)
        # An event to prevent: the per-arm outputs are chances of being without it, told as its risk (sign reversed).
        self.event_risk = Wording.of(spec.outcomes[model.outcome]).prevents
        # Per categorical covariate: its label and code -> name (looked up once per cell otherwise).
        self.levels = {c: (spec.covariates[c].label or c, spec.covariates[c].level_names()) for c in spec.categorical_covariates()}
        self.age_column, self.sex_column, self.female = spec.roles.age, spec.roles.sex, spec.roles.female
        self._described: dict[tuple[int, str], tuple[str, str, str, str, float | None]] = {}
        self._groups: dict[str, str] = {}

    def is_lab(self, source: str) -> bool:
        return source in self.catalog.analytes and source in self.model.spec.labs

    def field(self, source: str) -> str:
        """The data-contract field a source stands for (a lab's column name in this spec)."""
        return self.spec.labs[source].column if self.is_lab(source) else source

    def value(self, i: int, source: str) -> float | None:
        column = self.columns.get(source)
        if column is None:
            return None
        try:
            value = float(column[i])
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    def lab_text(self, i: int, analyte: str) -> tuple[str, str]:
        """(display text, flag) for the patient's value of ``analyte``."""
        lab = self.catalog[analyte]
        value = float(self.columns[analyte][i])
        if math.isnan(value):
            return f"{lab.label} not measured (imputed)", ""
        if lab.kind == "titre":
            text = "negative" if value < (lab.reference_dilution or 40) else f"1:{value:g}"
            shown = f"{lab.label} {text}"
        else:
            below = self.columns.get(f"{analyte}_below_lod")
            if below is not None and below[i] > 0:
                return f"{lab.label} below the detection limit ({lab.lod:g} {lab.unit})", ""
            shown = f"{lab.label} of {_format_number(value)} {lab.unit}"
        flag = ""
        if lab.positive_at is not None:
            flag = "positive" if value >= lab.positive_at else ""
        else:
            age = self.columns[self.age_column][i] if self.age_column in self.columns else None
            female = (str(self.columns[self.sex_column][i]) == str(self.female)) if self.sex_column in self.columns else None
            limit = _upper_reference(
                lab,
                np.array([age]) if age is not None else None,
                np.array([female]) if female is not None else None,
            )
            limit = float(np.ravel(limit)[0])
            if math.isfinite(limit) and value > limit:
                flag = "above the reference limit"
            elif lab.lower_reference is not None and value < lab.lower_reference:
                flag = "below the reference limit"
        return shown, flag

    def level_text(self, i: int, column: str) -> str:
        """The patient's level of a categorical covariate, by the name people read ("Drug: Yes")."""
        label, names = self.levels[column]
        value = self.columns[column][i]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return f"{label} not given (imputed)"
        return f"{label}: {names.get(str(value), str(value))}"

    def describe(self, i: int, source: str) -> tuple[str, str, str, str, float | None]:
        """(display text, flag, description, unit, value) of input ``source`` for patient ``i`` (once per patient and
        input: every explained output of the patient names it)."""
        key = (i, source)
        described = self._described.get(key)
        if described is None:
            described = self._described[key] = self._describe(i, source)
        return described

    def group(self, source: str) -> str:
        group = self._groups.get(source)
        if group is None:
            group = self._groups[source] = (
                (self.catalog[source].group or "lab") if self.is_lab(source) else ("symptom" if source in self.spec.baseline_score_columns() else "covariate")
            )
        return group

    def _describe(self, i: int, source: str) -> tuple[str, str, str, str, float | None]:
        if self.is_lab(source):
            lab = self.catalog[source]
            shown, flag = self.lab_text(i, source)
            return shown, flag, lab.name, lab.unit, self.value(i, source)
        label, unit = _label_unit(self.spec, source)
        column = self.columns.get(source)
        if column is None:
            return label, "", label, unit, None
        raw = column[i]
        if raw is None or (isinstance(raw, float) and math.isnan(raw)):
            return f"{label} not given (imputed)", "", label, unit, None
        if source in self.levels:
            return self.level_text(i, source), "", label, "", None
        value = float(raw)
        unit_text = f" {unit}" if unit else ""
        return f"{label} of {_format_number(value)}{unit_text}", "", label, unit, value


def _label_unit(spec, column: str) -> tuple[str, str]:
    if column in spec.covariates:
        cov = spec.covariates[column]
        return (cov.label or column).split(" (")[0], cov.unit
    for outcome in spec.outcomes.values():
        if outcome.baseline == column:
            return spec.baseline_label(column).split(" (")[0], outcome.unit
    return column, ""


def _sentence(display: str, flag: str, contribution: float, target: str) -> str:
    """One plain sentence; ``target`` is what the output is (see :func:`targets`)."""
    points = abs(contribution) * 100
    verb = "raises" if contribution > 0 else "lowers"
    flag_text = f", {flag}," if flag else ""
    amount = "less than 1 percentage point" if points < 1 else f"{points:.0f} percentage point{'s' * (round(points) != 1)}"
    return f"{display}{flag_text} {verb} {target} by {amount}."


class _Grouping:
    """How the features' contributions split between inputs, for every row at once (built once per call).

    One (feature, input) pair per part of a feature an input owns: a plain feature is one pair with share 1, a
    composite one pair per input with a share per row (:func:`features.cores.shares`). A row's
    contributions grouped by input are then one weighted count over the pairs.
    """

    def __init__(self, features: list[str], sources: dict[str, dict[str, Any]], n: int):
        pairs = [(j, name, source, share) for j, name in enumerate(features) for source, share in sources[name].items()]
        self.inputs = list(dict.fromkeys(source for _, _, source, _ in pairs))
        position = {source: k for k, source in enumerate(self.inputs)}
        self.feature = np.array([j for j, _, _, _ in pairs], dtype=np.intp)
        self.input = np.array([position[source] for _, _, source, _ in pairs], dtype=np.intp)
        self.shares = np.empty((n, len(pairs)))
        for r, (_, _, _, share) in enumerate(pairs):
            self.shares[:, r] = share  # a number, or one share per row
        # Per input, its pairs in feature order (the components of a driver shown).
        self.pairs_of: list[list[tuple[int, int, str]]] = [[] for _ in self.inputs]
        for r, (j, name, source, _) in enumerate(pairs):
            self.pairs_of[position[source]].append((r, j, name))

    def group(self, values: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Row ``i``'s contribution of each pair and of each input (``values``: the row's feature contributions)."""
        per_pair = values[self.feature] * self.shares[i]
        return per_pair, np.bincount(self.input, weights=per_pair, minlength=len(self.inputs))


def _output(
    target: str,
    contributions: Contributions,
    i: int,
    features: list[str],
    grouping: _Grouping,
    describer: _Describer,
    arm_only: bool,
    top: int | None = None,
) -> OutputExplanation:
    """One output's drivers, largest first: all of them, or the ``top`` a caller shows (sentences cost; sums do not)."""
    array = contributions.values[i]
    per_pair, grouped = grouping.group(array, i)
    # Grouping keeps additivity: each feature's shares add up to one.
    assert abs(float(grouped.sum()) - float(array.sum())) < 1e-9, "grouped contributions do not add up"
    text = describer.targets[target]
    reversed_sign = describer.event_risk and target != "benefit"
    drivers = []
    for k in np.argsort(-np.abs(grouped), kind="stable").tolist():
        amount = float(grouped[k])
        if abs(amount) < 1e-12 or (top is not None and len(drivers) >= top):
            break  # sorted by size: everything after is smaller
        source = grouping.inputs[k]
        display, flag, description, unit, value = describer.describe(i, source)
        components: dict[str, float] = {}
        for r, j, name in grouping.pairs_of[k]:
            if array[j] != 0.0:
                components[name] = components.get(name, 0.0) + float(per_pair[r])
        drivers.append(
            Driver(
                feature=describer.field(source),
                description=description,
                group=describer.group(source),
                value=value,
                display_value=display,
                unit=unit,
                contribution=amount,
                sentence=_sentence(display, flag, -amount if reversed_sign else amount, text),
                components=components,
            )
        )
    base, prediction = float(contributions.base[i]), float(contributions.output[i])
    error = abs(base + float(array.sum()) - prediction)
    return OutputExplanation(
        target,
        base,
        prediction,
        drivers,
        error,
        dict(zip(features, array.tolist(), strict=True)),
        NO_DEPENDENCE if arm_only else "",
    )


def explain_patients(model: ResponderModel, raw: pd.DataFrame) -> list[PatientExplanation]:
    """SHAP explanation of benefit and of P(responder | treated) for every row of ``raw``, one driver per input.

    Runs the model's scoring plan on the frame (the same path as ``POST /explain``).
    Raises ``AssertionError`` if contributions do not add up to the model output.
    """
    return model.plan().explain_frame(raw.reset_index(drop=True))


def explain_rows(
    model: ResponderModel,
    explanation: Explanation,
    sources: dict[str, dict[str, Any]],
    parsed: Mapping[str, np.ndarray],
    top: int | None = None,
) -> list[PatientExplanation]:
    """Drivers and sentences for every row, from the candidate's contributions, the features' sources and the parsed inputs.

    ``top``: drivers kept per output, largest first (all when None).

    Raises ``AssertionError`` if contributions do not add up to the model output
    (the candidates check exactness, this checks the assembled result).
    """
    describer = _Describer(model, parsed)
    arm_only = model.candidate.same_for_everyone
    treated_c, benefit_c = explanation.p_treated, explanation.benefit
    # SHAP values are additive: the control arm's are the treated arm's minus the benefit's.
    control_c = replace(treated_c, values=treated_c.values - benefit_c.values, base=treated_c.base - benefit_c.base, output=treated_c.output - benefit_c.output)
    conditional = model.label_policy is not None and model.label_policy.mode == "individual"  # effect modification established
    grouping = _Grouping(explanation.features, sources, len(benefit_c.output))
    out = []
    for i in range(len(benefit_c.output)):
        benefit = _output("benefit", benefit_c, i, explanation.features, grouping, describer, arm_only, top)
        treated = _output("p_response_treated", treated_c, i, explanation.features, grouping, describer, arm_only, top)
        control = _output("p_response_control", control_c, i, explanation.features, grouping, describer, arm_only, top)
        assert max(benefit.additivity_error, treated.additivity_error, control.additivity_error) < 1e-6, "SHAP contributions do not add up"
        imputed = [a for a in model.spec.labs if math.isnan(float(describer.columns[a][i]))]
        out.append(PatientExplanation(i, benefit, treated, control, imputed, conditional))
    return out
