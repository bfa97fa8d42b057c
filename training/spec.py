"""Dataset specs: the data contract as a YAML file validated into typed objects.

A spec names the roles of a trial file's columns (id, arm, outcomes, covariates,
labs), so another trial plugs in by writing a spec, without code changes.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.catalog import LabCatalog, load_catalog
from training.errors import ConfigError, did_you_mean, spec_columns, validation_problems, yaml_mapping

DEFAULT_SPEC = "fibromyalgia-ldn"
GROUND_TRUTH_PREFIX = "true_"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArmSpec(_Strict):
    column: str = "arm"
    treated: str = Field(description="label of the active arm")
    control: str = Field(description="label of the control arm")
    treated_fraction: float = Field(0.5, gt=0, lt=1, description="known randomisation probability of the active arm")
    treated_name: str | None = Field(None, description="display name of the active arm")
    control_name: str | None = Field(None, description="display name of the control arm")

    @property
    def labels(self) -> tuple[str, str]:
        return (self.treated, self.control)


class ResponderRule(_Strict):
    """Who counts as a responder, always measured in the outcome's better direction.

    - ``relative``: improvement of at least ``threshold`` as a fraction of baseline
      (0.30 = the IMMPACT "moderate" >= 30% reduction for pain);
    - ``absolute``: improvement of at least ``threshold`` scale points;
    - ``threshold``: follow-up value at or beyond ``threshold`` (e.g. pain <= 1).
    """

    rule: Literal["relative", "absolute", "threshold"] = "relative"
    threshold: float = 0.30

    def describe(self, better: str, unit: str = "points") -> str:
        word = "reduction" if better == "lower" else "increase"
        if self.rule == "relative":
            return f">= {self.threshold:.0%} {word} from baseline"
        if self.rule == "absolute":
            return f">= {self.threshold:g} {unit} {word} from baseline"
        sign = "<=" if better == "lower" else ">="
        return f"follow-up {sign} {self.threshold:g}"


class OutcomeSpec(_Strict):
    label: str
    baseline: str
    followup: str
    scale: tuple[float, float]
    better: Literal["lower", "higher"] = "lower"
    unit: str = "points"
    responder: ResponderRule = ResponderRule()
    missing_followup: Literal["non_responder", "exclude"] = Field(
        "non_responder",
        description="non_responder: baseline observation carried forward (no improvement); exclude: drop the patient for this outcome",
    )
    description: str = ""


class CovariateSpec(_Strict):
    kind: Literal["numeric", "categorical"] = "numeric"
    label: str | None = None
    unit: str = ""
    description: str = ""
    range: tuple[float, float] | None = None
    levels: list[str] | None = None
    required: bool = False

    @model_validator(mode="after")
    def _check(self) -> CovariateSpec:
        if self.kind == "categorical" and not self.levels:
            raise ValueError("a categorical covariate needs levels")
        return self


class LabColumnSpec(_Strict):
    column: str
    unit: str | None = Field(None, description="unit of the column when not the catalog's canonical unit")


class AuxiliarySpec(_Strict):
    """A known column that is not a model input (e.g. secondary outcomes' follow-up)."""

    range: tuple[float, float] | None = None
    description: str = ""


class RolesSpec(_Strict):
    age: str | None = None
    sex: str | None = None
    female: str | None = Field(None, description="level of the sex column meaning female")
    male: str | None = Field(None, description="level of the sex column meaning male")


class CognitiveDominanceSpec(_Strict):
    memory: str
    pain: str


class DatasetSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    id_column: str = "patient_id"
    arm: ArmSpec
    outcomes: dict[str, OutcomeSpec]
    covariates: dict[str, CovariateSpec] = Field(default_factory=dict)
    labs: dict[str, LabColumnSpec] = Field(default_factory=dict)
    auxiliary: dict[str, AuxiliarySpec] = Field(default_factory=dict)
    roles: RolesSpec = RolesSpec()
    cognitive_dominance: CognitiveDominanceSpec | None = None

    @field_validator("outcomes")
    @classmethod
    def _some_outcome(cls, value: dict[str, OutcomeSpec]) -> dict[str, OutcomeSpec]:
        if not value:
            raise ValueError("a spec needs at least one outcome")
        return value

    @model_validator(mode="after")
    def _check_columns(self) -> DatasetSpec:
        names = self.feature_input_columns() + [self.id_column, self.arm.column] + self.followup_columns()
        truth = [c for c in names if c.startswith(GROUND_TRUTH_PREFIX)]
        if truth:
            raise ValueError(f"columns starting with {GROUND_TRUTH_PREFIX!r} are ground truth and cannot be used: {truth}")
        seen: set[str] = set()
        dupes = sorted({c for c in names if c in seen or seen.add(c)})
        if dupes:
            raise ValueError(f"columns with more than one role: {dupes}")
        for role in ("age", "sex"):
            column = getattr(self.roles, role)
            if column is not None and column not in self.covariates:
                raise ValueError(f"roles.{role} names {column!r}, which is not a covariate")
        if self.cognitive_dominance is not None:
            baselines = set(self.baseline_score_columns())
            for column in (self.cognitive_dominance.memory, self.cognitive_dominance.pain):
                if column not in baselines and column not in self.covariates:
                    raise ValueError(f"cognitive_dominance names {column!r}, which is not a baseline column")
        return self

    # Column roles -------------------------------------------------------------
    def baseline_score_columns(self) -> list[str]:
        return [o.baseline for o in self.outcomes.values()]

    def followup_columns(self) -> list[str]:
        return [o.followup for o in self.outcomes.values()]

    def lab_columns(self) -> list[str]:
        return [lab.column for lab in self.labs.values()]

    def numeric_covariates(self) -> list[str]:
        return [c for c, s in self.covariates.items() if s.kind == "numeric"]

    def categorical_covariates(self) -> list[str]:
        return [c for c, s in self.covariates.items() if s.kind == "categorical"]

    def feature_input_columns(self) -> list[str]:
        """Columns a model may see: baseline scores, covariates and labs (never arm, follow-up or ``true_*``)."""
        return self.baseline_score_columns() + list(self.covariates) + self.lab_columns()

    def required_columns(self) -> list[str]:
        required = [self.id_column, self.arm.column] + self.baseline_score_columns() + self.followup_columns()
        return required + [c for c, s in self.covariates.items() if s.required]

    def known_columns(self) -> set[str]:
        units = {f"{c}_unit" for c in self.lab_columns()}
        return (
            set(self.feature_input_columns())
            | {self.id_column, self.arm.column}
            | set(self.followup_columns())
            | set(self.auxiliary)
            | units
        )

    def numeric_ranges(self) -> dict[str, tuple[float, float] | None]:
        """Numeric columns with their allowed range (outcome scales for baseline and follow-up)."""
        ranges: dict[str, tuple[float, float] | None] = {}
        for outcome in self.outcomes.values():
            ranges[outcome.baseline] = outcome.scale
            ranges[outcome.followup] = outcome.scale
        for column, cov in self.covariates.items():
            if cov.kind == "numeric":
                ranges[column] = cov.range
        for column, aux in self.auxiliary.items():
            ranges[column] = aux.range
        return ranges

    def analyte_for_column(self) -> dict[str, str]:
        return {lab.column: analyte for analyte, lab in self.labs.items()}

    def check_catalog(self, catalog: LabCatalog) -> None:
        unknown = [a for a in self.labs if a not in catalog]
        if unknown:
            raise ValueError(f"spec {self.name!r} names labs missing from the lab catalog: {unknown}")
        for analyte, lab in self.labs.items():
            if lab.unit is not None:
                try:
                    catalog[analyte].factor(lab.unit)
                except KeyError:
                    raise ValueError(f"spec {self.name!r}: unknown unit {lab.unit!r} for {analyte}") from None

    def registered_model_name(self, outcome: str) -> str:
        return f"{self.name}-{outcome}"

    def treated_display(self) -> str:
        return self.arm.treated_name or self.arm.treated

    def control_display(self) -> str:
        return self.arm.control_name or self.arm.control

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def load_spec(path_or_name: str | Path | None = None, catalog: LabCatalog | None = None) -> DatasetSpec:
    """Load a spec from a YAML path, or a packaged spec by name (default ``fibromyalgia-ldn``).

    Problems raise ``ConfigError``, one line each, with the nearest known key,
    column, lab or packaged spec name suggested.
    """
    if path_or_name is None or str(path_or_name) == DEFAULT_SPEC:
        spec, source = _packaged(DEFAULT_SPEC), f"spec {DEFAULT_SPEC}"
    else:
        path = Path(path_or_name)
        source = f"spec {path_or_name}"
        if path.exists():
            spec = parse_spec(path.read_text(encoding="utf-8"), source)
        elif resources.files("training").joinpath("specs", f"{path_or_name}.yaml").is_file():
            spec = _packaged(str(path_or_name))
        else:
            packaged = [p.name.removesuffix(".yaml") for p in resources.files("training").joinpath("specs").iterdir() if p.name.endswith(".yaml")]
            raise ConfigError(source, [f"no such file, and no packaged spec of that name{did_you_mean(path_or_name, packaged)}"])
    catalog = catalog or load_catalog()
    problems = []
    for analyte, lab in spec.labs.items():
        if analyte not in catalog:
            problems.append(f"labs.{analyte}: not in the lab catalog{did_you_mean(analyte, catalog.analytes, 'labs.')}")
        elif lab.unit is not None:
            try:
                catalog[analyte].factor(lab.unit)
            except KeyError:
                # Listed, never guessed: a one-letter slip (mmol/L vs nmol/L) is a factor of a million.
                known = ", ".join(catalog[analyte].units)
                problems.append(f"labs.{analyte}.unit: unknown unit {lab.unit!r} (known: {known})")
    if problems:
        raise ConfigError(source, problems)
    spec.check_catalog(catalog)
    return spec


def parse_spec(text: str, source: str = "spec") -> DatasetSpec:
    """Validate spec YAML text; problems raise ``ConfigError`` (one line each, with suggestions)."""
    data = yaml_mapping(text, source)
    try:
        return DatasetSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, validation_problems(err, DatasetSpec, spec_columns(data))) from None


@lru_cache(maxsize=8)
def _packaged(name: str) -> DatasetSpec:
    text = resources.files("training").joinpath("specs", f"{name}.yaml").read_text(encoding="utf-8")
    return parse_spec(text)
