"""The cohort report's payload: every number and array the cohort report shows, computed once at training time.

A training job builds the payload from the trial frame and its
:class:`~training.train.OutcomeResult` objects and logs it to the parent MLflow
run (``reports/payload.json`` plus Parquet parts under ``reports/payload/``),
so ``responders report cohort --run RUN_ID`` re-renders the same report from
MLflow alone, without the data file or a refit. Metrics are copied from the
same cross-validation summary the job logs as MLflow metrics, never
recomputed, so the report and the tracking store cannot disagree.

Numbers that are not logged metrics are computed here once, at training time,
from the same out-of-fold predictions and responder labels: bootstrap
intervals for AUC and Brier, the worse-than-chance flags, the prespecified
subgroups and, for a simulated trial, its distance from the published one
(``training.reports.analysis``, ``training.published``).

Parts hold pseudonymised per-patient arrays (no patient ids): out-of-fold
predictions for the calibration, Qini, TOC, calibration-for-benefit and
decision curves, and SHAP contributions of the champion on the training cohort
for the beeswarm and dependence plots.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.candidates import candidate_label
from core.candidates.ensemble import describe_refits
from core.labelling import Wording
from core.spec import DEFAULT_SPEC, DatasetSpec
from training.diagnostics import describe as describe_diagnostics
from training.metrics import describe_benefit_calibration
from training.published import PUBLISHED_FINAL, comparison
from training.reports.analysis import subgroup_effects
from training.reports.model_parts import METRIC_BOOTSTRAP, _verdict, candidate_rows, oof_frame, shap_cohort
from training.reports.numbers import _num
from training.reports.trial_tables import outcome_changes, responder_rates, table_one
from training.results import HEADLINE

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from core.config import TrainConfig
    from core.data import ValidationReport
    from training.results import OutcomeResult

log = logging.getLogger("responders.reports")

SCHEMA_VERSION = 3  # 3: answers (estimands), PATH analysis, calibrated heterogeneity test
ARTIFACT_DIR = "reports"
PAYLOAD_FILE = "payload.json"
PARTS_DIR = "payload"

SIMULATED_NAME = re.compile(r"^(?P<scenario>final|null|strong)-n(?P<n>\d+)-seed(?P<seed>\d+)$")


# Provenance -------------------------------------------------------------------------------------
def data_provenance(frame: pd.DataFrame, data_path: str | Path, digest: str, spec: DatasetSpec) -> dict[str, Any]:
    """Where the training data came from, and whether it is simulated.

    A file with ``true_*`` ground-truth columns is simulated (only the
    simulator writes them). ``responders simulate`` names files
    ``<scenario>-n<N>-seed<S>`` (the Makefile's default); when the name says
    so, the scenario is recorded. The published FINAL figures are set beside
    the results for simulated data from the default spec unless the file is
    known to come from another scenario than ``final``.
    """
    truth = [c for c in frame.columns if str(c).startswith("true_")]
    simulated = bool(truth)
    match = SIMULATED_NAME.match(Path(data_path).stem)
    scenario = match.group("scenario") if (simulated and match) else None
    seed = int(match.group("seed")) if (simulated and match) else None
    return {
        "source": Path(data_path).name,
        "digest": digest,
        "n_rows": len(frame),
        "simulated": simulated,
        "scenario": scenario,
        "seed": seed,
        "ground_truth_columns": len(truth),
        "compare_published": simulated and spec.name == DEFAULT_SPEC and scenario in (None, "final"),
    }


# The payload ------------------------------------------------------------------------------------------
@dataclass
class CohortPayload:
    """Everything the cohort report shows: JSON-able ``meta`` plus per-patient ``parts`` (Parquet)."""

    meta: dict[str, Any]
    parts: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def outcomes(self) -> dict[str, dict[str, Any]]:
        """Per outcome: metrics as logged, candidates, evidence, SHAP feature metadata, registry outcome."""
        return self.meta["outcomes"]

    def part(self, outcome: str, name: str) -> pd.DataFrame:
        """One per-patient table of an outcome: ``oof``, ``shap_benefit``, ``shap_p_treated``, ``features`` or ``base``."""
        return self.parts[f"{outcome}__{name}"]

    def save(self, directory: str | Path) -> Path:
        """Write ``payload.json`` and ``payload/<part>.parquet`` under ``directory``."""
        directory = Path(directory)
        (directory / PARTS_DIR).mkdir(parents=True, exist_ok=True)
        (directory / PAYLOAD_FILE).write_text(json.dumps(self.meta, indent=1, allow_nan=False))
        for name, frame in self.parts.items():
            frame.to_parquet(directory / PARTS_DIR / f"{name}.parquet", index=False)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> CohortPayload:
        directory = Path(directory)
        meta = json.loads((directory / PAYLOAD_FILE).read_text())
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"report payload schema {meta.get('schema_version')!r} is not {SCHEMA_VERSION}: re-run the training job")
        parts = {p.stem: pd.read_parquet(p) for p in sorted((directory / PARTS_DIR).glob("*.parquet"))}
        return cls(meta, parts)

    def log_to_mlflow(self, artifact_dir: str = ARTIFACT_DIR) -> None:
        """Log the payload to the active MLflow run under ``reports/`` (a comparison's: ``reports/<comparison>/``)."""
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            self.save(tmp)
            mlflow.log_artifact(str(Path(tmp) / PAYLOAD_FILE), artifact_path=artifact_dir)
            mlflow.log_artifacts(str(Path(tmp) / PARTS_DIR), artifact_path=f"{artifact_dir}/{PARTS_DIR}")

    @classmethod
    def from_mlflow(cls, run_id: str, tracking_uri: str, artifact_dir: str = ARTIFACT_DIR) -> CohortPayload:
        """Download and load the payload logged by the training job ``run_id`` (a comparison's: ``reports/<comparison>``)."""
        import mlflow
        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / ARTIFACT_DIR
            try:
                for name in (PAYLOAD_FILE, PARTS_DIR):
                    mlflow.artifacts.download_artifacts(
                        run_id=run_id, artifact_path=f"{artifact_dir}/{name}", dst_path=str(local), tracking_uri=tracking_uri
                    )
            except (MlflowException, OSError) as err:
                raise LookupError(f"run {run_id} has no cohort report payload ({artifact_dir}/{PAYLOAD_FILE}): {err}") from err
            return cls.load(local)


def latest_training_run(client: MlflowClient, experiment_name: str) -> str:
    """The newest finished training job of an experiment (the parent run, tagged ``job = train``)."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise LookupError(f"no MLflow experiment {experiment_name!r}: run `responders train` first")
    runs = client.search_runs(
        [experiment.experiment_id],
        "tags.job = 'train' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise LookupError(f"no finished training run in experiment {experiment_name!r}")
    return runs[0].info.run_id


def build_cohort_payload(
    frame: pd.DataFrame,
    spec: DatasetSpec,
    config: TrainConfig,
    results: dict[str, OutcomeResult],
    provenance: dict[str, Any],
    validation: ValidationReport,
    parent_run_id: str,
    experiment_id: str,
) -> CohortPayload:
    """Compute the cohort payload from a training job's frame and results (before promotion; see :func:`add_registry`)."""
    started = time.perf_counter()
    published = bool(provenance.get("compare_published"))
    parts: dict[str, pd.DataFrame] = {}
    outcomes: dict[str, dict[str, Any]] = {}
    for name, result in results.items():
        assert result.model is not None, "build the payload after the champion is fitted"
        perm = result.permutation
        tested = bool(perm.tested)
        shap_meta, shap_parts = shap_cohort(result.model, result.data.X, config.seed)
        for part, table in shap_parts.items():
            parts[f"{name}__{part}"] = table
        parts[f"{name}__oof"] = oof_frame(result)
        outcome = spec.outcomes[name]
        wording = Wording.of(outcome)
        candidates = candidate_rows(result, HEADLINE, (spec.treated_display(), spec.control_display()), config.seed, config.intervals.level)
        outcomes[name] = {
            "label": outcome.label,
            "responder_rule": result.counts.rule,
            "n_patients": result.counts.n,
            "n_responders": result.counts.responders,
            "n_missing_followup": result.counts.missing_followup,
            "missing_policy": result.counts.missing_policy,
            "run_id": result.run_id,
            "procedure": result.procedure,
            "champion": result.champion,
            "champion_label": candidate_label(result.champion),
            "reason": result.reason,
            "metrics": {k: _num(result.cv.summary.loc[result.procedure, k]) for k in HEADLINE if k in result.cv.summary.columns},
            "candidates": candidates,
            "worse_than_chance": [c["label"].split(" (")[0] for c in candidates if c["flags"] and not c["is_procedure"]],
            "procedure_flags": next((c["flags"] for c in candidates if c["is_procedure"]), []),
            "subgroups": subgroup_effects(result.data.X, result.data.t, result.data.y, spec, name),
            "evidence": {
                "tested": tested,
                "subgroup_evidence": bool(result.evidence),
                "statistic": _num(perm.statistic),
                "statistic_label": perm.label,
                "per_candidate": {k: _num(v) for k, v in perm.per_candidate.items()},
                "p_value": _num(perm.p_value) if tested else None,
                "p_adjusted": _num(result.p_adjusted) if tested else None,
                "permutations": int(len(perm.null)),
                "method": perm.method,
                "null_hypothesis": perm.details.get("null") if perm.details else None,
                # A combined test (BCF's spread and the prespecified modifiers): each statistic, its own p-value, the rule.
                "components": (perm.details or {}).get("components"),
                "combination": (perm.details or {}).get("combination"),
                "stopping": (perm.details or {}).get("stopping"),
                "sequential_h": config.evidence.sequential_h,
                "n_fit": (perm.details or {}).get("n_fit"),
                "n_test": (perm.details or {}).get("n_test"),
                "stopped_early": bool(perm.stopped_early),
                "null": [float(v) for v in perm.null if math.isfinite(v)],
                "alpha": config.evidence.alpha,
                "verdict": _verdict(bool(result.evidence), tested),
            },
            "interval_level": result.model.interval_level,
            "label_rule": result.model.label_policy.describe(),
            "label_mode": result.model.label_policy.mode,
            "answer": result.answer,
            "answer_reason": result.model.label_policy.answer_reason,
            "estimand": result.model.label_policy.estimand(spec.treated_inline(), spec.control_inline(), wording),
            "event": wording.event,  # an event to prevent is told as its risk (core.labelling.Wording)
            "population_nnt": _population_nnt(wording, result.average_effect),
            "interval_kind": result.model.label_policy.interval_kind,
            "population_label": result.model.label_policy.population_label,
            "refused": result.refused,
            "path": _json_safe(result.path.to_dict()) if result.path is not None else None,
            "path_sentence": result.path.sentence() if result.path is not None else None,
            "diagnostics": _json_safe(result.model.metadata.get("bcf_diagnostics")),
            "diagnostics_sentence": describe_diagnostics(result.model.metadata.get("bcf_diagnostics")),
            "benefit_calibration_sentence": describe_benefit_calibration(result.summary()["metrics"]),
            "interval_bootstrap": _json_safe(result.model.metadata.get("interval_bootstrap")),
            "calibration_allowance": _json_safe(result.model.metadata.get("calibration_allowance")),
            "average_effect": _json_safe(result.average_effect.to_dict()) if result.average_effect is not None else None,
            "shap": shap_meta,
            "registry": {},
        }
    any_tested = any(o["evidence"]["tested"] for o in outcomes.values())
    with_evidence = [k for k, o in outcomes.items() if o["evidence"]["subgroup_evidence"]]
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "title": f"Cohort report: {spec.name}",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": {"parent_run_id": parent_run_id, "experiment_id": experiment_id},
        "spec": {
            "name": spec.name,
            "description": spec.description,
            "treated": spec.treated_display(),
            "control": spec.control_display(),
            "treated_fraction": spec.arm.treated_fraction,
            "n_labs": len(spec.labs),
            # The lab groups the dependence plots and subgroups can speak of (none for a trial without labs).
            "lab_groups": [g for g in ("inflammation", "autoantibody") if any(spec.lab_catalog()[a].group == g for a in spec.labs)],
        },
        "data": {
            **provenance,
            "validation": {"errors": len(validation.errors), "warnings": len(validation.warnings), "counts": validation.counts()},
        },
        "config": {
            "seed": config.seed,
            "cv_folds": config.cv.folds,
            "cv_repeats": config.cv.repeats,
            "inner_folds": config.cv.inner_folds,
            "criterion": config.selection.criterion,
            "floor_margin_se": config.selection.floor_margin_se,
            "candidates": list(config.candidates.enabled),
            "permutations": config.evidence.permutations,
            "evidence_method": config.evidence.method,
            "replicates": config.evidence.replicates,
            "alpha": config.evidence.alpha,
            "bootstrap_models": config.intervals.bootstrap_models,
            "bootstrap_refits": describe_refits(config.intervals.bootstrap_models, config.intervals.bootstrap_fraction),
            "interval_level": config.intervals.level,
            "metric_bootstrap": METRIC_BOOTSTRAP,
            "digest": config.digest(),
        },
        "published": PUBLISHED_FINAL if published else None,
        "published_comparison": comparison(frame, provenance.get("seed")) if published else None,
        "table1": table_one(frame, spec, published),
        "changes": outcome_changes(frame, spec, published),
        "responders": _with_effects(responder_rates(frame, spec, config, published), results),
        "outcomes": outcomes,
        "verdict": {
            "tested": any_tested,
            "evidence_outcomes": with_evidence,
            "text": _verdict(bool(with_evidence), any_tested),
        },
    }
    json.dumps(meta, allow_nan=False)  # fail now, before the champion gate, rather than when the payload is logged
    log.info("cohort report payload built in %.1f s", time.perf_counter() - started)
    return CohortPayload(meta, parts)


def _population_nnt(wording: Wording, effect: Any) -> str:
    """The number needed to treat of the trial's average effect (its Holm-adjusted interval when there is one)."""
    if effect is None or effect.risk_difference is None:
        return ""
    adjusted = effect.ci_low_adjusted is not None
    low, high = (effect.ci_low_adjusted, effect.ci_high_adjusted) if adjusted else (effect.ci_low, effect.ci_high)
    return wording.nnt(effect.risk_difference, low, high, effect.adjusted_level if adjusted and effect.adjusted_level else effect.level)


def _with_effects(rows: list[dict[str, Any]], results: dict[str, OutcomeResult]) -> list[dict[str, Any]]:
    """Each responder row with the job's average effect and its sensitivity analysis (the other missing-follow-up policy)."""
    for row in rows:
        result = results.get(row["outcome"])
        effect = getattr(result, "average_effect", None)
        row["effect"] = _json_safe(effect.to_dict()) if effect is not None else None
        sensitivity = getattr(result, "average_effect_sensitivity", None)
        row["sensitivity"] = _json_safe(sensitivity.to_dict()) if sensitivity is not None else None
        row["censoring"] = _json_safe(getattr(result, "censoring", None))
    return rows


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return _num(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def add_registry(payload: CohortPayload, results: dict[str, OutcomeResult]) -> None:
    """Record the registry outcome (version, promotion, gate) once the champion aliases have been decided."""
    for name, result in results.items():
        payload.outcomes[name]["registry"] = {
            "registered_model": result.registered_model,
            "version": result.version,
            "promoted": bool(result.promoted),
            "gate": list(result.gate),
            "champion_version": result.champion_version,
        }
