"""Dataset specs: the data contract as a YAML file validated into typed objects.

A spec names the roles of a trial file's columns (id, arm, outcomes, covariates,
labs), so another trial plugs in by writing a spec, without code changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from core.errors import ConfigError, did_you_mean, spec_columns, validation_problems, yaml_mapping
from features.catalog import Analyte, LabCatalog, load_catalog, read_analytes
from features.codes import level_key

DEFAULT_SPEC = "fibromyalgia-ldn"
GROUND_TRUTH_PREFIX = "true_"

Level = StrictInt | str
# A follow-up time at the end of an outcome's label: ", month 2", " at week 12", " (day 28)", " - 6 months".
FOLLOWUP_TIME = re.compile(
    r"\s*(?:[,;-]\s*|\bat\s+|\(\s*)(?:at\s+)?(?:(?:day|week|month|year|visit)s?\s*\d+|\d+\s*(?:day|week|month|year)s?)\s*\)?\s*$",
    re.IGNORECASE,
)


def inline(name: str) -> str:
    """A display name inside a sentence, in the case the spec wrote it unless it is plainly a capitalised common phrase.

    Only the first letter may be lowered, and only when no other letter of the
    name (a parenthetical aside apart) is a capital: "Low-dose naltrexone" ->
    "low-dose naltrexone", "Placebo" -> "placebo", "Pain (FIQR item)" -> "pain
    (FIQR item)"; "Pentax AWS video laryngoscope", "Beat the Blues", "BDI
    depression score", "PACU" and "Post-ERCP pancreatitis" keep their case.
    """
    main = name.split(" (")[0]  # a parenthetical scale or unit ("(FIQR item, 0-10 NRS)") does not make a proper name
    if len(main) > 1 and main[0].isupper() and main[1].islower() and not any(c.isupper() for c in main[1:]):
        return name[0].lower() + name[1:]
    return name


def _yaml_codes(value: Any, what: str) -> Any:
    """YAML reads unquoted yes/no/true/false as booleans; a category code must say which text it means.

    Float codes become their canonical form (1.0 is the code 1), so a spec may write codes as a file does.
    """
    values = [*value.keys(), *value.values()] if isinstance(value, dict) else value if isinstance(value, list) else [value]
    if any(isinstance(v, bool) for v in values):
        raise ValueError(f"{what}: write yes/no/true/false in quotes (YAML reads them as booleans), e.g. ['no', 'yes']")

    def code(v: Any) -> Any:
        return (int(v) if v.is_integer() else repr(v)) if isinstance(v, float) else v

    if isinstance(value, dict):
        return {code(k): v for k, v in value.items()}
    if isinstance(value, list):
        return [code(v) for v in value]
    return code(value)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComparisonSpec(_Strict):
    """One comparison of a trial with three or more arms: an active arm against a control arm."""

    treated: Level = Field(description="code of the compared (active) arm")
    control: Level | None = Field(None, description="code of the arm it is compared with (default: the trial's control)")

    @field_validator("treated", "control", mode="before")
    @classmethod
    def _codes(cls, value: Any) -> Any:
        return _yaml_codes(value, "comparison arm codes")


class ArmSpec(_Strict):
    """The randomised arms. Two arms: ``treated`` and ``control``. Three or more: ``arms`` (every
    arm's code and display name), ``control`` (one of them) and optionally ``comparisons`` (default:
    each other arm against the control, in the order ``arms`` lists them)."""

    column: str = "arm"
    treated: Level | None = Field(None, description="code of the active arm (a two-arm trial)")
    control: Level = Field(description="code of the control arm (text or a number)")
    treated_fraction: float = Field(0.5, gt=0, lt=1, description="known randomisation probability of the active arm")
    treated_name: str | None = Field(None, description="display name of the active arm")
    control_name: str | None = Field(None, description="display name of the control arm")
    arms: dict[Level, str | None] | None = Field(
        None, description="three or more arms: each arm's code and its display name (null: the code itself)"
    )
    comparisons: list[ComparisonSpec] | None = Field(
        None, description="three or more arms: the comparisons to fit (default: each other arm against the control)"
    )
    allocation: dict[Level, float] | None = Field(
        None, description="three or more arms: relative randomisation weights per arm code (default: equal); "
        "a comparison's known treated fraction is its two arms' share"
    )

    @field_validator("treated", "control", mode="before")
    @classmethod
    def _codes(cls, value: Any) -> Any:
        return _yaml_codes(value, "arm codes")

    @field_validator("arms", "allocation", mode="before")
    @classmethod
    def _arm_codes(cls, value: Any) -> Any:
        if isinstance(value, list):
            value = {v: None for v in value}
        return _yaml_codes(value, "arms") if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _distinct(self) -> ArmSpec:
        if self.arms is None:
            if self.treated is None:
                raise ValueError("arm: a two-arm trial names treated and control; a trial with three or more arms lists them under arms")
            if self.comparisons is not None or self.allocation is not None:
                raise ValueError("arm: comparisons and allocation are for three or more arms (list them under arms)")
            if level_key(self.treated) == level_key(self.control):
                raise ValueError("arm: treated and control must be different codes")
            return self
        codes = [str(level_key(c)) for c in self.arms]
        if len(set(codes)) < 3:
            raise ValueError("arm.arms: list three or more distinct arms (a two-arm trial names treated and control instead)")
        if self.treated is not None or self.treated_name is not None or self.control_name is not None:
            raise ValueError("arm: with arms listed, leave out treated, treated_name and control_name (arms names each arm)")
        if str(level_key(self.control)) not in codes:
            raise ValueError(f"arm.control: {self.control!r} is not one of arm.arms ({', '.join(map(repr, self.arms))})")
        for k, (treated, control) in enumerate(self.pairs()):
            for which, code in (("treated", treated), ("control", control)):
                if str(level_key(code)) not in codes:
                    raise ValueError(f"arm.comparisons.{k}.{which}: {code!r} is not one of arm.arms ({', '.join(map(repr, self.arms))})")
            if level_key(treated) == level_key(control):
                raise ValueError(f"arm.comparisons.{k}: an arm cannot be compared with itself ({treated!r})")
        keys = [self.comparison_key(t, c) for t, c in self.pairs()]
        if len(set(keys)) < len(keys):
            raise ValueError("arm.comparisons: a comparison is listed twice")
        for code in self.allocation or {}:
            if str(level_key(code)) not in codes:
                raise ValueError(f"arm.allocation: {code!r} is not one of arm.arms")
        if self.allocation is not None and any(not w > 0 for w in self.allocation.values()):
            raise ValueError("arm.allocation: the weights must be positive")
        return self

    @property
    def multi(self) -> bool:
        """Three or more arms (``arms`` listed)."""
        return self.arms is not None

    @property
    def labels(self) -> tuple[str, ...]:
        """The arm codes in canonical form (see :func:`level_key`): (treated, control), or every arm listed."""
        if self.arms is not None:
            return tuple(str(level_key(c)) for c in self.arms)
        return (str(level_key(self.treated)), str(level_key(self.control)))

    def is_treated(self, values: pd.Series) -> np.ndarray:
        """True where the arm column holds the treated code (numbers and text compared as codes)."""
        if self.arms is not None:
            raise ValueError("a trial with three or more arms has no single treated arm: use DatasetSpec.comparisons()")
        return (values.map(level_key) == self.labels[0]).to_numpy(dtype=bool)

    def arm_name(self, code: Level) -> str:
        """An arm's display name (a two-arm spec's treated_name/control_name, or arms' names)."""
        key = str(level_key(code))
        if self.arms is not None:
            for c, name in self.arms.items():
                if str(level_key(c)) == key:
                    return name or str(c)
        if self.treated is not None and key == str(level_key(self.treated)):
            return self.treated_name or str(self.treated)
        return self.control_name or str(self.control) if key == str(level_key(self.control)) else str(code)

    def pairs(self) -> list[tuple[Level, Level]]:
        """The (treated, control) codes of each comparison, in order."""
        if self.arms is None:
            return [(self.treated, self.control)]
        if self.comparisons is None:
            return [(c, self.control) for c in self.arms if level_key(c) != level_key(self.control)]
        return [(c.treated, self.control if c.control is None else c.control) for c in self.comparisons]

    @staticmethod
    def comparison_key(treated: Level, control: Level) -> str:
        """A comparison's name in registered models, runs and API responses: ``cbt-vs-cont``."""
        slug = lambda code: re.sub(r"[^a-z0-9]+", "-", str(code).lower()).strip("-") or "arm"  # noqa: E731
        return f"{slug(treated)}-vs-{slug(control)}"

    def fraction(self, treated: Level, control: Level) -> float:
        """The known probability of the treated arm among the two compared arms' patients."""
        if self.allocation is None:
            return 0.5
        weight = {str(level_key(c)): w for c, w in self.allocation.items()}
        t, c = weight.get(str(level_key(treated)), 1.0), weight.get(str(level_key(control)), 1.0)
        return t / (t + c)


class ResponderRule(_Strict):
    """Who counts as a responder, always measured in the outcome's better direction.

    - ``relative``: improvement of at least ``threshold`` as a fraction of baseline
      (0.30 = the IMMPACT "moderate" >= 30% reduction for pain);
    - ``absolute``: improvement of at least ``threshold`` scale points;
    - ``threshold``: follow-up value at or beyond ``threshold`` (e.g. pain <= 1);
      the only rule that needs no baseline.
    """

    rule: Literal["relative", "absolute", "threshold"] = "relative"
    threshold: float = 0.30

    @property
    def needs_baseline(self) -> bool:
        return self.rule != "threshold"

    def describe(self, better: str, unit: str = "points") -> str:
        word = "reduction" if better == "lower" else "increase"
        if self.rule == "relative":
            return f">= {self.threshold:.0%} {word} from baseline"
        if self.rule == "absolute":
            return f">= {self.threshold:g} {unit} {word} from baseline"
        sign = "<=" if better == "lower" else ">="
        return f"follow-up {sign} {self.threshold:g}" + (f" {unit}" if unit and unit != "points" else "")


class EventSpec(_Strict):
    """A binary outcome: did the event happen by follow-up (e.g. pancreatitis yes/no)?"""

    column: str = Field(description="the column recording the event")
    good: bool = Field(description="true: the event is the hoped-for result (cured); false: it is to be prevented (pancreatitis)")
    present: Level = Field(1, description="the code meaning the event happened")
    absent: Level = Field(0, description="the code meaning it did not")

    @field_validator("present", "absent", mode="before")
    @classmethod
    def _codes(cls, value: Any) -> Any:
        return _yaml_codes(value, "event codes")

    @model_validator(mode="after")
    def _distinct(self) -> EventSpec:
        if level_key(self.present) == level_key(self.absent):
            raise ValueError("event: present and absent must be different codes")
        return self


TIME_UNITS = {"days": 1.0, "weeks": 7.0, "months": 365.25 / 12, "years": 365.25}  # in days


class EventBySpec(_Strict):
    """A time-to-event outcome read at a horizon: did the event happen by ``horizon`` (e.g. death by 4 years)?

    ``time`` is the time from randomisation to the event or to censoring (in ``time_unit``); ``status``
    says which: a code in ``event`` (the event happened at that time) or in ``censored`` (follow-up ended
    without it; a competing end such as transplant is listed here, i.e. treated as censoring). A patient
    censored before the horizon has an unknown status at the horizon and follows ``censored_before_horizon``.
    """

    time: str = Field(description="column: time from randomisation to the event or to censoring")
    time_unit: Literal["days", "weeks", "months", "years"] = "days"
    status: str = Field(description="column: what ended follow-up (the event or censoring)")
    event: list[Level] = Field(min_length=1, description="status codes meaning the event happened at that time")
    censored: list[Level] = Field(min_length=1, description="status codes meaning follow-up ended without the event")
    horizon: float = Field(gt=0, description="the outcome is the event by this time after randomisation")
    horizon_unit: Literal["days", "weeks", "months", "years"] = "years"
    good: bool = Field(description="true: the event is hoped for; false: it is to be prevented (death)")
    censored_before_horizon: Literal["exclude"] = Field(
        "exclude",
        description="exclude: drop patients censored before the horizon from the outcome (counted and reported); "
        "an inverse-probability-of-censoring weighted estimate is reported beside it as a sensitivity analysis",
    )

    @field_validator("event", "censored", mode="before")
    @classmethod
    def _codes(cls, value: Any) -> Any:
        return _yaml_codes(value if isinstance(value, list) else [value], "status codes")

    @model_validator(mode="after")
    def _distinct(self) -> EventBySpec:
        both = {level_key(c) for c in self.event} & {level_key(c) for c in self.censored}
        if both:
            raise ValueError(f"event_by: status codes {sorted(both)} are both event and censored")
        if self.time == self.status:
            raise ValueError("event_by: time and status must be different columns")
        return self

    @property
    def event_codes(self) -> list[str]:
        return [str(level_key(c)) for c in self.event]

    @property
    def censored_codes(self) -> list[str]:
        return [str(level_key(c)) for c in self.censored]

    def horizon_days(self) -> float:
        return self.horizon * TIME_UNITS[self.horizon_unit]

    def describe_horizon(self) -> str:
        unit = self.horizon_unit if self.horizon != 1 else self.horizon_unit.removesuffix("s")
        return f"{self.horizon:g} {unit}"


class OutcomeSpec(_Strict):
    """One outcome of the trial: a score at follow-up (``kind: score``) or a binary event (``kind: binary``).

    A score outcome names its follow-up column and, for the ``relative`` and
    ``absolute`` rules, a baseline column (several outcomes, e.g. one per
    follow-up time, may share a baseline). A binary outcome names the event
    column and whether the event is good; a responder is a patient with the
    event when it is good, without it when it is bad.
    """

    kind: Literal["score", "binary", "event_by"] = "score"
    label: str
    baseline: str | None = None
    baseline_label: str | None = Field(None, description="what the baseline column measures (default: 'Baseline <label>')")
    followup: str | None = Field(None, description="follow-up column (score); for a binary outcome, the event column")
    scale: tuple[float, float] | None = None
    better: Literal["lower", "higher"] = "lower"
    unit: str = "points"
    responder: ResponderRule = ResponderRule()
    event: EventSpec | None = None
    event_by: EventBySpec | None = None
    missing_followup: Literal["non_responder", "exclude"] = Field(
        "non_responder",
        description="non_responder: a patient without follow-up counts as not responding, whatever the rule; "
        "exclude: drop the patient for this outcome",
    )
    zero_baseline: Literal["refuse", "non_responder", "exclude"] = Field(
        "refuse",
        description="relative rule only: a baseline of 0 cannot improve by a fraction of itself; refuse the file "
        "(default), or count such patients as non-responders, or exclude them from this outcome",
    )
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _event_column(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "binary" and isinstance(data.get("event"), dict):
            column = data["event"].get("column")
            followup = data.get("followup")
            if followup is not None and column is not None and followup != column:
                raise ValueError(f"a binary outcome names one column: event.column {column!r} and followup {followup!r} differ")
            if column is None and followup is not None:
                data = {**data, "event": {**data["event"], "column": followup}}
            data = {**data, "followup": column or followup}
        if isinstance(data, dict) and data.get("kind") == "event_by" and isinstance(data.get("event_by"), dict):
            status = data["event_by"].get("status")
            if data.get("followup") not in (None, status):
                raise ValueError("an event_by outcome names its columns under event_by (time, status), not followup")
            data = {**data, "followup": status}
            if "missing_followup" not in data:
                data["missing_followup"] = "exclude"  # no time or status: like censored at 0, unknown at the horizon
        return data

    @model_validator(mode="after")
    def _check(self) -> OutcomeSpec:
        if self.kind == "event_by":
            if self.event_by is None:
                raise ValueError(
                    "an event_by outcome needs event_by: {time, status, event: [codes], censored: [codes], horizon, good}"
                )
            if self.event is not None or self.baseline is not None:
                raise ValueError("an event_by outcome takes event_by (no event, no baseline score)")
            if "responder" in self.model_fields_set or "scale" in self.model_fields_set or "better" in self.model_fields_set:
                raise ValueError("an event_by outcome takes event_by.good instead of responder, scale and better")
            return self
        if self.event_by is not None:
            raise ValueError("event_by: is for kind: event_by outcomes")
        if self.kind == "binary":
            if self.event is None:
                raise ValueError("a binary outcome needs event: {column, good: true|false}")
            if self.baseline is not None:
                raise ValueError("a binary outcome has no baseline score (name baseline risk factors as covariates)")
            if "responder" in self.model_fields_set or "scale" in self.model_fields_set or "better" in self.model_fields_set:
                raise ValueError("a binary outcome takes event.good instead of responder, scale and better")
            return self
        if self.event is not None:
            raise ValueError("event: is for kind: binary outcomes")
        if self.followup is None:
            raise ValueError("a score outcome needs a followup column")
        if self.scale is None:
            raise ValueError("a score outcome needs a scale: [low, high]")
        if self.scale[0] >= self.scale[1]:
            raise ValueError(f"scale {list(self.scale)}: low must be below high")
        if self.responder.needs_baseline and self.baseline is None:
            raise ValueError(f"the {self.responder.rule} responder rule needs a baseline column (or use rule: threshold)")
        return self

    @property
    def column(self) -> str:
        """The follow-up (or event) column: what is observed at the end of the trial."""
        assert self.followup is not None
        return self.followup

    def observed_columns(self) -> list[str]:
        """Every column observed at the end of the trial for this outcome (an event_by outcome: time and status)."""
        if self.event_by is not None:
            return [self.event_by.time, self.event_by.status]
        return [self.column]

    @property
    def event_good(self) -> bool | None:
        """Whether the outcome's event is hoped for (binary and event_by outcomes; None for scores)."""
        if self.event is not None:
            return self.event.good
        return self.event_by.good if self.event_by is not None else None

    def describe_rule(self, rule: ResponderRule | None = None) -> str:
        """The responder rule in words (the override ``rule`` for score outcomes, when given)."""
        if self.kind == "event_by":
            assert self.event_by is not None
            by = f" by {self.event_by.describe_horizon()}"
            text = inline(self.label) if self.event_by.good else f"no {inline(self.label)}"
            return text if text.endswith(by) else text + by
        if self.kind == "binary":
            assert self.event is not None
            return inline(self.label) if self.event.good else f"no {inline(self.label)}"
        return (rule or self.responder).describe(self.better, self.unit)


class CovariateSpec(_Strict):
    """A baseline covariate: numeric, or categorical with its codes.

    Codes are numbers or text (``levels: [0, 1]``, ``levels: [female, male]``),
    or a mapping from code to the name people read (``levels: {0: No, 1: Yes}``).
    The first level is the reference (``reference`` overrides it): a binary
    categorical becomes one 0/1 indicator of the other level.
    """

    kind: Literal["numeric", "categorical"] = "numeric"
    label: str | None = None
    unit: str = ""
    description: str = ""
    range: tuple[float, float] | None = None
    levels: list[Level] | dict[Level, str] | None = None
    reference: Level | None = None
    required: bool = False

    @field_validator("levels", "reference", mode="before")
    @classmethod
    def _codes(cls, value: Any) -> Any:
        return _yaml_codes(value, "levels") if value is not None else value

    @model_validator(mode="after")
    def _check(self) -> CovariateSpec:
        if self.kind == "categorical" and not self.levels:
            raise ValueError("a categorical covariate needs levels")
        if self.kind == "numeric" and (self.levels or self.reference is not None):
            raise ValueError("levels and reference are for categorical covariates")
        if self.levels:
            keys = [level_key(v) for v in self.levels]
            if None in keys or len(set(keys)) != len(keys):
                raise ValueError(f"levels must be distinct, non-empty codes: {list(self.levels)}")
            if self.reference is not None and level_key(self.reference) not in keys:
                raise ValueError(f"reference {self.reference!r} is not one of the levels {keys}")
        return self

    def level_codes(self) -> list[str]:
        """Canonical codes (see :func:`level_key`) in the spec's order."""
        return [k for k in (level_key(v) for v in (self.levels or [])) if k is not None]

    def encoding_order(self) -> list[str]:
        """The codes with the reference level first: the order the one-hot encoder drops from."""
        keys = self.level_codes()
        ref = level_key(self.reference) if self.reference is not None else keys[0]
        return [ref] + [k for k in keys if k != ref]

    def level_names(self) -> dict[str, str]:
        """Canonical code -> the name shown to people (the code itself unless ``levels`` maps it)."""
        if isinstance(self.levels, dict):
            return {level_key(k) or "": str(v) for k, v in self.levels.items()}
        return {k: k for k in self.level_codes()}


class LabColumnSpec(_Strict):
    column: str
    unit: str | None = Field(None, description="unit of the column when not the catalog's canonical unit")


class AuxiliarySpec(_Strict):
    """A known column that is not a model input (e.g. secondary outcomes' follow-up).

    With a ``range`` it is checked as a number in that range; without one it is only recognised.
    """

    range: tuple[float, float] | None = None
    description: str = ""


class RolesSpec(_Strict):
    """Which covariates age- and sex-specific reference limits read (e.g. the Westergren ESR limit).

    ``age`` and ``sex`` name covariates; ``female`` and ``male`` are codes of the sex covariate, text or
    numbers as the file writes them (``female: 0``), kept in canonical form (see :func:`level_key`).
    """

    age: str | None = Field(None, description="the covariate holding age in years")
    sex: str | None = Field(None, description="the categorical covariate holding sex")
    female: str | None = Field(None, description="code of the sex covariate meaning female (text or a number)")
    male: str | None = Field(None, description="code of the sex covariate meaning male (text or a number)")

    @field_validator("female", "male", mode="before")
    @classmethod
    def _codes(cls, value: Any) -> Any:
        return None if value is None else str(level_key(_yaml_codes(value, "roles codes")))


class CognitiveDominanceSpec(_Strict):
    memory: str
    pain: str


def modifier_parts(entry: str) -> list[str]:
    """The engineered features of one ``prespecified_modifiers`` entry (``a + b``: one modifier from two features)."""
    return [part.strip() for part in str(entry).split("+")]


class DatasetSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    id_column: str = "patient_id"
    arm: ArmSpec
    outcomes: dict[str, OutcomeSpec]
    covariates: dict[str, CovariateSpec] = Field(default_factory=dict)
    labs: dict[str, LabColumnSpec] = Field(default_factory=dict)
    analytes: dict[str, Analyte] = Field(
        default_factory=dict,
        description="labs the packaged catalog does not know, declared with its fields (features/lab_catalog.yaml); "
        "a spec file may instead list catalog files under lab_catalog_files",
    )
    auxiliary: dict[str, AuxiliarySpec] = Field(default_factory=dict)
    roles: RolesSpec = RolesSpec()
    cognitive_dominance: CognitiveDominanceSpec | None = None
    prespecified_modifiers: list[str] = Field(
        default_factory=list,
        description="engineered features named as effect modifiers before the analysis (e.g. inflammation_index): "
        "the heterogeneity test examines arm x these by name beside the served model's spread, both calibrated by "
        "the same null trials (training/modifiers.py); empty: the served model's spread alone. An entry joining "
        "features with '+' (inflammation_index + autoantibody_index) is one modifier: the mean of those features, each "
        "standardised (one degree of freedom)",
    )
    prespecified_direction: Literal["any", "increasing", "decreasing"] = Field(
        default="any",
        description="which way the protocol expects the benefit to move with the prespecified modifier: increasing or "
        "decreasing makes the modifiers' statistic one-sided (the signed root of its likelihood ratio) and needs exactly "
        "one entry in prespecified_modifiers; any: the two-sided likelihood ratio, any number of modifiers",
    )

    @field_validator("prespecified_modifiers")
    @classmethod
    def _modifier_entries(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not all(modifier_parts(entry)):
                raise ValueError(f"{entry!r} has an empty name (join features as a + b)")
        return value

    @model_validator(mode="after")
    def _direction_needs_one_modifier(self) -> DatasetSpec:
        if self.prespecified_direction != "any" and len(self.prespecified_modifiers) != 1:
            raise ValueError(
                f"prespecified_direction: {self.prespecified_direction} needs exactly one entry in prespecified_modifiers "
                f"(got {len(self.prespecified_modifiers)}): join the features with + for one modifier, or set it to any"
            )
        return self

    @field_validator("analytes", mode="before")
    @classmethod
    def _analyte_keys(cls, value: Any) -> Any:
        """A declared analyte's key is its name in the mapping, as in the catalog file."""
        if not isinstance(value, dict):
            return value
        out = {}
        for key, fields in value.items():
            if isinstance(fields, dict):
                if fields.get("key", key) != key:
                    raise ValueError(f"analytes.{key}: key {fields['key']!r} differs from the entry's name")
                fields = {**fields, "key": key}
            out[key] = fields
        return out

    @field_validator("outcomes")
    @classmethod
    def _some_outcome(cls, value: dict[str, OutcomeSpec]) -> dict[str, OutcomeSpec]:
        if not value:
            raise ValueError("a spec needs at least one outcome")
        return value

    @model_validator(mode="after")
    def _check_columns(self) -> DatasetSpec:
        roles: dict[str, list[str]] = {}
        for column in self.baseline_score_columns():
            roles.setdefault(column, []).append("baseline")
        for name, outcome in self.outcomes.items():
            for column in outcome.observed_columns():
                roles.setdefault(column, []).append(f"outcome {name}")
        for column in self.covariates:
            roles.setdefault(column, []).append("covariate")
        for analyte, lab in self.labs.items():
            roles.setdefault(lab.column, []).append(f"lab {analyte}")
        roles.setdefault(self.id_column, []).append("id")
        roles.setdefault(self.arm.column, []).append("arm")
        for column in self.auxiliary:
            roles.setdefault(column, []).append("auxiliary")
        truth = [c for c in roles if c.startswith(GROUND_TRUTH_PREFIX)]
        if truth:
            raise ValueError(f"columns starting with {GROUND_TRUTH_PREFIX!r} are ground truth and cannot be used: {truth}")
        clashes = {c: r for c, r in roles.items() if len(r) > 1}
        if clashes:
            shown = "; ".join(f"{c!r} is {' and '.join(r)}" for c, r in clashes.items())
            raise ValueError(
                f"columns with more than one role: {shown} (outcomes may share a baseline, nothing else may be shared)"
            )
        for column in self.baseline_score_columns():
            scales = {tuple(o.scale or ()) for o in self.outcomes.values() if o.baseline == column}
            if len(scales) > 1:
                raise ValueError(f"outcomes sharing the baseline {column!r} must share its scale, not {sorted(scales)}")
        if not self.feature_input_columns():
            raise ValueError("the spec names no model input: give at least one baseline score, covariate or lab")
        for role in ("age", "sex"):
            column = getattr(self.roles, role)
            if column is not None and column not in self.covariates:
                raise ValueError(f"roles.{role} names {column!r}, which is not a covariate")
        sex = self.covariates.get(self.roles.sex) if self.roles.sex else None
        for role in ("female", "male"):
            code = getattr(self.roles, role)
            if code is not None and sex is not None and sex.kind == "categorical" and code not in sex.level_codes():
                raise ValueError(f"roles.{role} {code!r} is not a code of the sex covariate {self.roles.sex!r} (its codes: {sex.level_codes()})")
        if self.cognitive_dominance is not None:
            baselines = set(self.baseline_score_columns())
            for column in (self.cognitive_dominance.memory, self.cognitive_dominance.pain):
                if column not in baselines and column not in self.covariates:
                    raise ValueError(f"cognitive_dominance names {column!r}, which is not a baseline column")
        return self

    # Column roles -------------------------------------------------------------
    def baseline_score_columns(self) -> list[str]:
        """Baseline score columns, once each (outcomes at several follow-up times share one)."""
        return list(dict.fromkeys(o.baseline for o in self.outcomes.values() if o.baseline is not None))

    def baseline_outcome(self, column: str) -> OutcomeSpec:
        """The first outcome measured from ``column`` at baseline (its scale, unit and label describe it)."""
        return next(o for o in self.outcomes.values() if o.baseline == column)

    def baseline_label(self, column: str) -> str:
        """What the baseline column measures: ``baseline_label``, else "Baseline <label>" without the follow-up time.

        "BDI depression score (0-63), month 2" measured at baseline is "Baseline
        BDI depression score (0-63)": a trailing time (", month 2", " at week 12")
        names the follow-up, not the baseline.
        """
        outcome = self.baseline_outcome(column)
        return outcome.baseline_label or f"Baseline {inline(FOLLOWUP_TIME.sub('', outcome.label))}"

    def followup_columns(self) -> list[str]:
        """The columns observed at the end of the trial: follow-up scores and binary events."""
        return list(dict.fromkeys(c for o in self.outcomes.values() for c in o.observed_columns()))

    def event_by_outcomes(self) -> dict[str, OutcomeSpec]:
        return {k: o for k, o in self.outcomes.items() if o.kind == "event_by"}

    def event_outcomes(self) -> dict[str, OutcomeSpec]:
        return {k: o for k, o in self.outcomes.items() if o.kind == "binary"}

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
            if outcome.kind != "score":
                continue
            if outcome.baseline is not None:
                ranges.setdefault(outcome.baseline, outcome.scale)
            ranges[outcome.column] = outcome.scale
        for column, cov in self.covariates.items():
            if cov.kind == "numeric":
                ranges[column] = cov.range
        for outcome in self.event_by_outcomes().values():
            assert outcome.event_by is not None
            ranges[outcome.event_by.time] = None  # a number; a negative time is refused by validate, naming rows
        for column, aux in self.auxiliary.items():
            if aux.range is not None:  # an auxiliary column without a range may hold anything (text, flags)
                ranges[column] = aux.range
        return ranges

    def lab_catalog(self, base: LabCatalog | None = None) -> LabCatalog:
        """The lab catalog this trial's labs are read with: ``base`` (default: the packaged one) and the declared analytes."""
        return (base or load_catalog()).extended(self.analytes)

    def analyte_for_column(self) -> dict[str, str]:
        return {lab.column: analyte for analyte, lab in self.labs.items()}

    def check_catalog(self, catalog: LabCatalog) -> None:
        catalog = catalog.extended(self.analytes)
        unknown = [a for a in self.labs if a not in catalog]
        if unknown:
            raise ValueError(f"spec {self.name!r} names labs missing from the lab catalog: {unknown}")
        for analyte, lab in self.labs.items():
            if lab.unit is not None:
                try:
                    catalog[analyte].factor(lab.unit)
                except KeyError:
                    raise ValueError(f"spec {self.name!r}: unknown unit {lab.unit!r} for {analyte}") from None

    def comparisons(self) -> list[Comparison]:
        """The trial's comparisons, each with the two-arm spec a job fits it with.

        A two-arm trial: one comparison, this spec itself (``key`` None, so model
        names, runs and responses are as they always were). Three or more arms:
        one per :meth:`ArmSpec.pairs`, named ``<treated>-vs-<control>``; its spec
        is this one narrowed to the two arms, named ``<name>-<key>`` (so its
        registered models are ``<name>-<key>-<outcome>``).
        """
        if not self.arm.multi:
            return [Comparison(None, self.arm.treated, self.arm.control, self)]
        out = []
        for treated, control in self.arm.pairs():
            key = self.arm.comparison_key(treated, control)
            arm = ArmSpec(
                column=self.arm.column, treated=treated, control=control, treated_fraction=self.arm.fraction(treated, control),
                treated_name=self.arm.arm_name(treated), control_name=self.arm.arm_name(control),
            )
            out.append(Comparison(key, treated, control, self.model_copy(update={"name": f"{self.name}-{key}", "arm": arm})))
        return out

    def model_keys(self) -> list[tuple[str, str, str]]:
        """(key, outcome, registered model name) of every served model: the key is the outcome for a
        two-arm trial and ``<comparison>/<outcome>`` with three or more arms."""
        return [
            (outcome if c.key is None else f"{c.key}/{outcome}", outcome, c.spec.registered_model_name(outcome))
            for c in self.comparisons()
            for outcome in self.outcomes
        ]

    def registered_model_name(self, outcome: str) -> str:
        return f"{self.name}-{outcome}"

    def treated_display(self) -> str:
        if self.arm.multi:  # three or more arms: every compared arm (each comparison's spec names its own)
            return " / ".join(dict.fromkeys(self.arm.arm_name(t) for t, _ in self.arm.pairs()))
        return self.arm.treated_name or str(self.arm.treated)

    def control_display(self) -> str:
        if self.arm.multi:
            return " / ".join(dict.fromkeys(self.arm.arm_name(c) for _, c in self.arm.pairs()))
        return self.arm.control_name or str(self.arm.control)

    def treated_inline(self) -> str:
        """The active arm's name inside a sentence ("on low-dose naltrexone")."""
        return inline(self.treated_display())

    def control_inline(self) -> str:
        return inline(self.control_display())

    def to_yaml(self) -> str:
        # Only what the spec's author set: defaults stay implicit, and a binary outcome's ignored score fields stay out.
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True, exclude_unset=True), sort_keys=False)


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
            spec = parse_spec(path.read_text(encoding="utf-8"), source, base_dir=path.parent)
        elif resources.files("core").joinpath("specs", f"{path_or_name}.yaml").is_file():
            spec = _packaged(str(path_or_name))
        else:
            packaged = [p.name.removesuffix(".yaml") for p in resources.files("core").joinpath("specs").iterdir() if p.name.endswith(".yaml")]
            raise ConfigError(source, [f"no such file, and no packaged spec of that name{did_you_mean(path_or_name, packaged)}"])
    base = catalog or load_catalog()
    problems = [
        f"analytes.{key}: already in the lab catalog; use it as it is (labs.{key}: {{column: ...}}) or declare it under another key"
        for key in spec.analytes if key in base
    ]
    catalog = spec.lab_catalog(base)
    for analyte, lab in spec.labs.items():
        if analyte not in catalog:
            problems.append(
                f"labs.{analyte}: not in the lab catalog{did_you_mean(analyte, catalog.analytes, 'labs.')}; "
                f"declare it in the spec under analytes.{analyte} with the catalog's fields (name, label, unit, units, "
                "plausible; optionally lod, lower_reference, upper_reference, positive_at, loinc, group), "
                "or list a file in that schema under lab_catalog_files (see docs/wider-trials.md)"
            )
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


def parse_spec(text: str, source: str = "spec", base_dir: Path | None = None) -> DatasetSpec:
    """Validate spec YAML text; problems raise ``ConfigError`` (one line each, with suggestions).

    ``lab_catalog_files`` (paths relative to ``base_dir``, the spec file's folder) are read here and their
    analytes joined to the spec's ``analytes``, so the validated spec carries every lab fact it uses.
    """
    data = yaml_mapping(text, source)
    if "lab_catalog_files" in data:
        data = _with_catalog_files(data, source, base_dir or Path.cwd())
    try:
        return DatasetSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, validation_problems(err, DatasetSpec, spec_columns(data))) from None


def _with_catalog_files(data: dict[str, Any], source: str, base_dir: Path) -> dict[str, Any]:
    files = data.pop("lab_catalog_files")
    files = [files] if isinstance(files, str) else files
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ConfigError(source, ["lab_catalog_files: a list of catalog file paths (relative to the spec's folder)"])
    declared = dict(data.get("analytes") or {})
    origin = {key: "analytes" for key in declared}
    problems = []
    for i, name in enumerate(files):
        path = base_dir / name
        try:
            analytes = read_analytes(path)
        except (OSError, ValueError, yaml.YAMLError) as err:
            problems.append(f"lab_catalog_files[{i}]: {path}: {err}")
            continue
        for key, fields in analytes.items():
            if key in declared:
                problems.append(f"lab_catalog_files[{i}]: analyte {key!r} of {name} is also declared in {origin[key]}")
                continue
            declared[key], origin[key] = fields, name
    if problems:
        raise ConfigError(source, problems)
    return {**data, "analytes": declared}


@dataclass(frozen=True)
class Comparison:
    """One comparison of a trial (see :meth:`DatasetSpec.comparisons`)."""

    key: str | None  # None for a two-arm trial
    treated: Level
    control: Level
    spec: DatasetSpec  # the two-arm spec it is fitted with

    def rows(self, frame: pd.DataFrame) -> np.ndarray:
        """The rows of the comparison's two arms."""
        codes = frame[self.spec.arm.column].map(level_key).astype(str)
        return codes.isin(self.spec.arm.labels).to_numpy(dtype=bool)

    def result_key(self, outcome: str) -> str:
        return outcome if self.key is None else f"{self.key}/{outcome}"

    def describe(self) -> dict[str, Any]:
        return {
            "key": self.key, "treated": self.treated, "control": self.control,
            "treated_name": self.spec.treated_display(), "control_name": self.spec.control_display(),
        }


@lru_cache(maxsize=8)
def _packaged(name: str) -> DatasetSpec:
    folder = resources.files("core").joinpath("specs")
    text = folder.joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return parse_spec(text, base_dir=Path(str(folder)))
