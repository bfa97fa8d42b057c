"""The one explanation function: ranked SHAP drivers with patient values, units and plain sentences.

Both the REST API (``/explain``) and the reports call :func:`explain_patients`.
Contributions come from the candidate's own exact method (TreeSHAP for
LightGBM, coefficients for linear models; see ``training.candidates``) in
probability points, on the feature pipeline's readable feature names, and
always add up: ``base + sum(contributions) == model output``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.transformers import FeatureInfo, _upper_reference
from training.candidates import Contributions
from training.model import ResponderModel
from training.spec import DatasetSpec


def targets(spec: DatasetSpec) -> dict[str, str]:
    """What each explained output is, in a sentence, with the spec's name of the active arm."""
    return {
        "benefit": "the predicted benefit",
        "p_response_treated": f"the chance of a meaningful response on {spec.treated_inline()}",
    }


@dataclass
class Driver:
    feature: str
    description: str
    group: str
    value: float | None  # the engineered feature's value
    display_value: str  # what the clinician recognises: the patient's lab or score with its unit
    unit: str
    contribution: float  # probability points as a fraction (0.06 = 6 percentage points)
    sentence: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OutputExplanation:
    target: str  # "benefit" or "p_response_treated"
    base_value: float
    prediction: float
    drivers: list[Driver]
    additivity_error: float

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        drivers = self.drivers[:top] if top else self.drivers
        return {
            "target": self.target,
            "base_value": self.base_value,
            "prediction": self.prediction,
            "additivity_error": self.additivity_error,
            "drivers": [d.to_dict() for d in drivers],
        }


@dataclass
class PatientExplanation:
    row: int
    benefit: OutputExplanation
    p_response_treated: OutputExplanation
    imputed: list[str] = field(default_factory=list)


def _format_number(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2g}" if abs(value) < 1 else f"{value:.1f}"


class _Describer:
    """Turns (feature, patient row) into a recognisable value and reference flag."""

    def __init__(self, model: ResponderModel, raw: pd.DataFrame):
        self.model = model
        parse = model.pipeline.named_steps["parse"]
        self.catalog = parse.catalog_
        self.parsed, _ = parse.parse(raw)
        # Plain arrays: per-cell pandas lookups dominated the cost of explaining a whole cohort.
        self.columns = {c: self.parsed[c].to_numpy() for c in self.parsed.columns}
        self._lab_cache: dict[tuple[int, str], tuple[str, str]] = {}
        self.raw = raw
        spec = model.spec
        self.spec = spec
        self.targets = targets(spec)
        # Per categorical covariate: its label and code -> name (looked up once per cell otherwise).
        self.levels = {c: (spec.covariates[c].label or c, spec.covariates[c].level_names()) for c in spec.categorical_covariates()}
        self.age_column, self.sex_column, self.female = spec.roles.age, spec.roles.sex, spec.roles.female

    def lab_text(self, i: int, analyte: str) -> tuple[str, str]:
        """(display text, flag) for the patient's value of ``analyte``."""
        key = (i, analyte)
        if key not in self._lab_cache:
            self._lab_cache[key] = self._lab_text(i, analyte)
        return self._lab_cache[key]

    def _lab_text(self, i: int, analyte: str) -> tuple[str, str]:
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
        return shown, flag

    def level_text(self, i: int, column: str) -> str:
        """The patient's level of a categorical covariate, by the name people read ("Drug: Yes")."""
        label, names = self.levels[column]
        value = self.columns[column][i]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return f"{label} not given (imputed)"
        return f"{label}: {names.get(str(value), str(value))}"

    def describe(self, i: int, info: FeatureInfo, feature_value: float) -> tuple[str, str]:
        if info.source in self.levels and info.source in self.columns:
            return self.level_text(i, info.source), ""
        if info.source and info.source in self.catalog.analytes and info.group in {"inflammation", "autoantibody"}:
            return self.lab_text(i, info.source)
        if info.group == "data quality" and info.source in self.catalog.analytes:
            return self.lab_text(i, info.source)
        unit = f" {info.unit}" if info.unit and info.unit not in {"0/1", "count", "z", "ratio", "band"} else ""
        if info.unit == "0/1":
            return f"{info.short}: {'yes' if feature_value >= 0.5 else 'no'}", ""
        return f"{info.short} of {_format_number(feature_value)}{unit}", ""


def _sentence(display: str, flag: str, contribution: float, target: str) -> str:
    """One plain sentence; ``target`` is what the output is (see :func:`targets`)."""
    points = abs(contribution) * 100
    verb = "raises" if contribution > 0 else "lowers"
    flag_text = f", {flag}," if flag else ""
    amount = "less than 1 percentage point" if points < 1 else f"{points:.0f} percentage point{'s' * (round(points) != 1)}"
    return f"{display}{flag_text} {verb} {target} by {amount}."


def _output(
    target: str, contributions: Contributions, i: int, features: list[str], F: np.ndarray, info: dict[str, FeatureInfo], describer: _Describer
) -> OutputExplanation:
    values = contributions.values[i]
    order = np.argsort(-np.abs(values), kind="stable")
    drivers = []
    for j in order:
        if abs(values[j]) < 1e-12:
            continue
        name = features[j]
        meta = info[name]
        feature_value = float(F[i, j])
        display, flag = describer.describe(i, meta, feature_value)
        drivers.append(
            Driver(
                feature=name,
                description=meta.description,
                group=meta.group,
                value=feature_value,
                display_value=display,
                unit=meta.unit,
                contribution=float(values[j]),
                sentence=_sentence(display, flag, float(values[j]), describer.targets[target]),
            )
        )
    base, prediction = float(contributions.base[i]), float(contributions.output[i])
    error = abs(base + float(values.sum()) - prediction)
    return OutputExplanation(target, base, prediction, drivers, error)


def explain_patients(model: ResponderModel, raw: pd.DataFrame) -> list[PatientExplanation]:
    """SHAP explanation of benefit and of P(responder | treated arm) for every row of ``raw``.

    Raises ``AssertionError`` if contributions do not add up to the model output
    (the candidates check exactness, this checks the assembled result).
    """
    raw = raw.reset_index(drop=True)
    explanation, F = model.explain(raw)
    F = F.reset_index(drop=True)[explanation.features].to_numpy(dtype=float)
    info = model.feature_info()
    describer = _Describer(model, raw)
    out = []
    for i in range(len(raw)):
        benefit = _output("benefit", explanation.benefit, i, explanation.features, F, info, describer)
        treated = _output("p_response_treated", explanation.p_treated, i, explanation.features, F, info, describer)
        assert benefit.additivity_error < 1e-6 and treated.additivity_error < 1e-6, "SHAP contributions do not add up"
        imputed = [a for a in model.spec.labs if math.isnan(float(describer.columns[a][i]))]
        out.append(PatientExplanation(i, benefit, treated, imputed))
    return out
