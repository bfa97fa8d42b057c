"""The cohort report (with model card) as self-contained HTML; the one-patient report is :mod:`serving.reports`.

The names below are loaded on first use (PEP 562), so importing a light
submodule (``training.reports.evaluation``, which an executor worker imports
to draw a figure) does not import MLflow and the report templates.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.reports.cohort import render_cohort_report
    from training.reports.payload import CohortPayload, build_cohort_payload, latest_training_run

_WHERE = {
    "render_cohort_report": "training.reports.cohort",
    "CohortPayload": "training.reports.payload",
    "build_cohort_payload": "training.reports.payload",
    "latest_training_run": "training.reports.payload",
}

__all__ = ["CohortPayload", "build_cohort_payload", "latest_training_run", "render_cohort_report"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
