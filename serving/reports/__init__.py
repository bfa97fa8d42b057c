"""The one-patient report behind ``/report`` and ``responders report patient`` (self-contained HTML)."""

from serving.reports.patient import render_patient_report

__all__ = ["render_patient_report"]
