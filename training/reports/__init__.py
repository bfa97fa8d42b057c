"""SHAP explanation reports: the cohort report (with model card) and the one-patient report, as self-contained HTML."""

from training.reports.cohort import render_cohort_report
from training.reports.patient import render_patient_report
from training.reports.payload import CohortPayload, build_cohort_payload, latest_training_run

__all__ = ["CohortPayload", "build_cohort_payload", "latest_training_run", "render_cohort_report", "render_patient_report"]
