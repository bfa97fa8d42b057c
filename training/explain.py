"""Moved to :mod:`core.runtime.explain` (the one explanation function, run by the scoring plan); kept for old imports."""

from core.runtime.explain import (
    NO_DEPENDENCE,
    Driver,
    OutputExplanation,
    PatientExplanation,
    explain_patients,
    targets,
)

__all__ = ["NO_DEPENDENCE", "Driver", "OutputExplanation", "PatientExplanation", "explain_patients", "targets"]
