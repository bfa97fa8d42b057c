"""The lab catalog: analyte facts loaded from ``lab_catalog.yaml`` into typed objects."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_CATALOG = "lab_catalog.yaml"


class Analyte(BaseModel):
    """Facts about one analyte; all limits are in the canonical ``unit``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    name: str
    label: str
    group: Literal["inflammation", "autoantibody"] | None = Field(
        None, description="feature group; none: the lab's own value and reference flags (docs/wider-trials.md)"
    )
    loinc: str | None = None
    kind: Literal["quantitative", "titre"] = "quantitative"
    unit: str
    units: dict[str, float]
    lod: float | None = None
    upper_reference: float | None = None
    lower_reference: float | None = None
    reference_rule: Literal["westergren_age_sex"] | None = None
    plausible: tuple[float, float]
    positive_at: float | None = None
    reference_dilution: int | None = None
    negative_dilution: int | None = None

    @model_validator(mode="after")
    def _check(self) -> Analyte:
        if self.unit not in self.units or self.units[self.unit] != 1.0:
            raise ValueError(f"{self.key}: canonical unit {self.unit!r} must be in units with factor 1")
        if self.plausible[0] > self.plausible[1]:
            raise ValueError(f"{self.key}: plausible range is reversed")
        if self.lower_reference is not None and self.upper_reference is not None and self.lower_reference >= self.upper_reference:
            raise ValueError(f"{self.key}: lower_reference must be below upper_reference")
        if self.kind == "titre" and (self.reference_dilution is None or self.negative_dilution is None):
            raise ValueError(f"{self.key}: a titre needs reference_dilution and negative_dilution")
        return self

    def factor(self, unit: str | None) -> float:
        """Factor converting ``unit`` to the canonical unit; ``KeyError`` when unknown."""
        if unit is None or unit == "":
            return 1.0
        if unit in self.units:
            return self.units[unit]
        folded = {u.casefold().replace(" ", ""): f for u, f in self.units.items()}
        key = unit.casefold().replace(" ", "")
        if key in folded:
            return folded[key]
        raise KeyError(unit)


class LabCatalog(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    analytes: dict[str, Analyte] = Field(default_factory=dict)

    def __getitem__(self, key: str) -> Analyte:
        return self.analytes[key]

    def __contains__(self, key: str) -> bool:
        return key in self.analytes

    def extended(self, analytes: Mapping[str, Analyte]) -> LabCatalog:
        """This catalog with ``analytes`` added (a trial's declared labs); a key of both takes the declared facts."""
        if not analytes:
            return self
        return LabCatalog(version=self.version, analytes={**self.analytes, **analytes})


def load_catalog(path: str | Path | None = None) -> LabCatalog:
    """Load a lab catalog YAML (the packaged default when ``path`` is None)."""
    if path is None:
        return _default_catalog()
    return _parse(Path(path).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _default_catalog() -> LabCatalog:
    text = resources.files("features").joinpath(DEFAULT_CATALOG).read_text(encoding="utf-8")
    return _parse(text)


def _parse(text: str) -> LabCatalog:
    raw = yaml.safe_load(text)
    analytes = {key: Analyte(key=key, **fields) for key, fields in raw.get("analytes", {}).items()}
    return LabCatalog(version=raw.get("version", 1), analytes=analytes)


def read_analytes(path: str | Path) -> dict[str, dict]:
    """The ``analytes:`` mapping of an extra catalog file (same schema as ``lab_catalog.yaml``), unvalidated."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or not isinstance(raw.get("analytes"), dict):
        raise ValueError("a lab catalog file needs an 'analytes:' mapping, as in features/lab_catalog.yaml")
    return raw["analytes"]
