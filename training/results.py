"""The training job's result types, shared by the job, the reports and the API.

``training.train`` fills them, ``training.reports`` renders them and the job
summary (``--summary-json``) is their ``to_dict``: one definition, no import
cycle between the job and its reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.candidates import FLOOR, candidate_label
from core.data import ValidationReport
from core.effects import AverageEffect
from core.labelling import CONDITIONAL, Wording
from core.labels import LabelCounts
from core.runtime.artefact import ResponderModel
from core.spec import Comparison, DatasetSpec
from training.diagnostics import describe as describe_diagnostics
from training.evaluation import SELECTED, CVResult, OutcomeData
from training.inference import PermutationResult
from training.metrics import BENEFIT_CALIBRATION, describe_benefit_calibration
from training.path import PathAnalysis

HEADLINE = [
    "auc_treated",
    "auc_control",
    "brier_treated",
    "brier_control",
    "brier_mean",
    "brier_null_mean",
    "calibration_intercept_treated",
    "calibration_slope_treated",
    "calibration_intercept_control",
    "calibration_slope_control",
    "qini",
    "auuc",
    "autoc",
    "autoc_averaged",
    "rate_qini",
    "c_for_benefit",
    "tau_risk",
    *BENEFIT_CALIBRATION,
]


@dataclass
class OutcomeResult:
    outcome: str
    counts: LabelCounts
    data: OutcomeData
    cv: CVResult
    permutation: PermutationResult
    run_id: str = ""
    p_adjusted: float = float("nan")
    evidence: bool = False
    champion: str = FLOOR
    reason: str = ""
    model: ResponderModel | None = None
    registered_model: str = ""
    version: str = ""
    model_uri: str = ""
    promoted: bool = False
    gate: list[str] = field(default_factory=list)
    champion_version: str | None = None
    figures: dict[str, str] = field(default_factory=dict)  # evaluation plots as PNG data URIs (logged and reported)
    average_effect: AverageEffect | None = None
    # The average effect under the other missing-follow-up policy, when > 10% of follow-up is missing.
    average_effect_sensitivity: AverageEffect | None = None
    # An event_by outcome: censoring before the horizon (policy, counts) and the IPCW sensitivity estimate.
    censoring: dict[str, Any] | None = None
    path: PathAnalysis | None = None  # the risk-based (PATH) analysis
    answer: str = "average"  # conditional, risk_based or average (core.labelling)
    refused: dict[str, list[str]] = field(default_factory=dict)  # candidates that failed the served-model checks
    comparison: Comparison | None = None  # the arms compared (core.spec.DatasetSpec.comparisons); key None: a two-arm trial

    @property
    def spec(self) -> DatasetSpec | None:
        """With three or more arms: the comparison's two-arm spec (None: the job's spec)."""
        return self.comparison.spec if self.comparison is not None and self.comparison.key is not None else None

    @property
    def procedure(self) -> str:
        """The out-of-fold predictions that describe the served model honestly.

        For a conditional answer chosen by the selection criterion, the nested
        selection procedure's (the choice is part of the model); otherwise the
        served candidate's own (the risk model or the floor is fixed by the
        evidence and the prognosis, not picked by comparing out-of-fold scores).
        """
        if self.answer == CONDITIONAL and self.champion == self.cv.final_choice:
            return SELECTED
        return self.champion

    def summary(self) -> dict[str, Any]:
        metrics = {k: _clean(self.cv.summary.loc[self.procedure, k]) for k in HEADLINE if k in self.cv.summary.columns}
        return {
            "outcome": self.outcome,
            "champion": self.champion,
            "champion_label": candidate_label(self.champion),
            "reason": self.reason,
            "registered_model": self.registered_model,
            "version": self.version,
            "model_uri": self.model_uri,
            "promoted": self.promoted,
            "champion_version": self.champion_version,
            "gate": self.gate,
            "answer": self.answer,
            "estimand": self._estimand(),
            "event_to_prevent": wording.event if (wording := _wording(self)) is not None else None,
            "refused": self.refused,
            "evidence": self.evidence,
            "heterogeneity_null": self.permutation.details.get("null") if self.permutation.details else None,
            "heterogeneity_bcf_fit": (self.permutation.details or {}).get("bcf_fit"),  # the statistic's BCF (small trials)
            # The combined test's statistics (BCF's spread, the prespecified modifiers), each with its own p-value.
            "heterogeneity_components": (self.permutation.details or {}).get("components"),
            "heterogeneity_statistic_label": self.permutation.label,
            "p_value": _clean(self.permutation.p_value),
            "p_adjusted": _clean(self.p_adjusted),
            "heterogeneity_statistic": _clean(self.permutation.statistic),
            "permutations": int(self.permutation.permutations_run),
            "heterogeneity_test": self.permutation.method,
            "stopped_early": bool(self.permutation.stopped_early),
            "average_effect": _average_effect(self.average_effect),
            "path": self.path.to_dict() if self.path is not None else None,
            "diagnostics": self.model.metadata.get("bcf_diagnostics") if self.model is not None else None,
            "interval_bootstrap": self.model.metadata.get("interval_bootstrap") if self.model is not None else None,
            "calibration_allowance": self.model.metadata.get("calibration_allowance") if self.model is not None else None,
            "eligible": list(self.cv.eligible),
            "labels": self._labels(),
            "responder_rule": self.counts.rule,
            "n_patients": self.counts.n,
            "n_responders": self.counts.responders,
            "n_missing_followup": self.counts.missing_followup,
            "missing_followup_policy": self.counts.missing_policy,
            "n_counted_non_responder": self.counts.counted_non_responder,
            "n_excluded": self.counts.excluded,
            "average_effect_sensitivity": (
                self.average_effect_sensitivity.to_dict() if self.average_effect_sensitivity is not None else None
            ),
            "censoring": self.censoring,
            "selections": self.cv.selections,
            "metrics": metrics,
            "run_id": self.run_id,
            # Three or more arms: which comparison this is (a two-arm summary keeps its shape).
            **({"comparison": self.comparison.describe()} if self.spec is not None else {}),
        }

    def _estimand(self) -> str | None:
        if self.model is None or self.model.label_policy is None:
            return None
        return self.model.label_policy.estimand(*_arm_names(self), _wording(self))

    def _labels(self) -> dict[str, Any]:
        if self.model is None or self.model.label_policy is None:
            return {}
        policy = self.model.label_policy
        return {
            "mode": policy.mode,
            "rule": policy.describe(),
            "population_label": policy.population_label,
            "population_reason": policy.population_reason,
            "patient_labels": policy.mode == "individual",  # read from each patient's own interval
            "no_patient_label_reason": policy.no_patient_label_reason() if policy.mode != "individual" else None,
            "interval_kind": policy.interval_kind,
        }


def _wording(result: OutcomeResult) -> Wording | None:
    """How the outcome's numbers are told (an event to prevent as its risk); None without a model."""
    if result.model is None:
        return None
    return Wording.of(result.model.spec.outcomes.get(result.model.outcome))


def _versus(result: OutcomeResult) -> str:
    return f" ({result.spec.treated_display()} vs {result.spec.control_display()})" if result.spec is not None else ""


def _arm_names(result: OutcomeResult) -> tuple[str, str]:
    if result.model is None:
        return ("treatment", "control")
    return (result.model.spec.treated_inline(), result.model.spec.control_inline())  # names inside sentences


def _average_effect(effect: AverageEffect | None) -> dict[str, Any] | None:
    """The summary JSON's ``average_effect``: risk difference, 95% CI and p-value first, then the rest."""
    if effect is None:
        return None
    out = effect.to_dict()
    head = {k: out.pop(k) for k in ("risk_difference", "ci_low", "ci_high", "p_value")}
    return {**head, **{k: _clean(v) if not isinstance(v, dict) else v for k, v in out.items()}}


@dataclass
class TrainSummary:
    spec: str
    data: str
    dataset_digest: str
    config_digest: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    seconds: float
    outcomes: dict[str, OutcomeResult]
    validation: ValidationReport
    timing: dict[str, Any] = field(default_factory=dict)  # wall and CPU seconds per phase (training.timing)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "data": self.data,
            "dataset_digest": self.dataset_digest,
            "config_digest": self.config_digest,
            "tracking_uri": self.tracking_uri,
            "experiment_id": self.experiment_id,
            "parent_run_id": self.parent_run_id,
            "seconds": round(self.seconds, 1),
            "outcomes": {k: v.summary() for k, v in self.outcomes.items()},
            **({"comparisons": self.comparisons()} if self.comparisons() else {}),
            "timing": self.timing,
        }

    def comparisons(self) -> dict[str, dict[str, Any]]:
        """Three or more arms: per comparison its arms and its outcome keys (Holm ran across all of them)."""
        out: dict[str, dict[str, Any]] = {}
        for key, result in self.outcomes.items():
            if result.spec is not None:
                entry = out.setdefault(result.comparison.key, {**result.comparison.describe(), "outcomes": []})
                entry["outcomes"].append(key)
        return out

    def render(self) -> str:
        lines = [f"Training job {self.parent_run_id} on {self.data} (spec {self.spec}) took {self.seconds:.0f} s."]
        for result in self.outcomes.values():
            s = result.summary()
            m = s["metrics"]
            verdict = "EVIDENCE of effect modification" if s["evidence"] else "NO reliable evidence of effect modification"
            effect = result.average_effect
            labels = s["labels"]
            runs = {"permutation": "permutations", "imputed_randomisation": "null trials"}.get(s["heterogeneity_test"])
            test = f"{s['heterogeneity_test'].replace('_', ' ')} test" + (f", {s['permutations']} {runs}" if runs else "")
            held = result.permutation.details if s["heterogeneity_test"] == "held_out" else None
            if held:
                test = f"held-out test: BCF fitted on {held['n_fit']:,} patients, tested on the other {held['n_test']:,}, {s['permutations']} null trials"
            lines += [
                f"- {s['outcome']}{_versus(result)}: {verdict} (p = {_fmt(s['p_value'])}, Holm-adjusted p = {_fmt(s['p_adjusted'])}; {test})",
                f"    average effect: {effect.describe(*_arm_names(result), _wording(result)) if effect is not None else 'n/a'}",
                f"    risk-based (PATH): {result.path.sentence() if result.path is not None else 'n/a'}",
                f"    answer: {s['answer']} ({s['reason']}); served model {s['champion']}",
                f"    estimand: {s['estimand']}",
                *[f"    not served: {name} ({'; '.join(problems)})" for name, problems in s["refused"].items()],
                *([f"    convergence: {describe_diagnostics(s['diagnostics'])}"] if s["diagnostics"] else []),
                f"    out-of-fold (nested CV): AUC treated {_fmt(m.get('auc_treated'))}, control {_fmt(m.get('auc_control'))}; "
                f"Brier {_fmt(m.get('brier_mean'))} (no-information {_fmt(m.get('brier_null_mean'))}); "
                f"AUTOC {_fmt(m.get('autoc_averaged'))} (descriptive); "
                f"c-for-benefit {_fmt(m.get('c_for_benefit'))}",
                f"    {describe_benefit_calibration(m)}",
                *([f"    interval: calibration allowance {s['calibration_allowance']['reason']}"] if s["calibration_allowance"] else []),
                f"    population label: {labels.get('population_label')}; patient labels: "
                + ("from each patient's interval" if labels.get("mode") == "individual" else "none (effect modification not established)"),
                f"    registry: {s['registered_model']} version {s['version']} -> "
                + ("promoted to @champion" if s["promoted"] else f"NOT promoted ({'; '.join(s['gate'])}); @champion is version {s['champion_version']}"),
                f"    MLflow run: {s['run_id']}",
            ]
        lines.append(f"Tracking: {self.tracking_uri} (experiment {self.experiment_id})")
        return "\n".join(lines)


def _clean(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"
