"""The cohort report (with model card) as self-contained HTML; the one-patient report is :mod:`serving.reports`."""

from training.reports.cohort import render_cohort_report
from training.reports.payload import CohortPayload, build_cohort_payload, latest_training_run

__all__ = ["CohortPayload", "build_cohort_payload", "latest_training_run", "render_cohort_report"]
