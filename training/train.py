"""The training job: validate -> evaluate (nested CV) -> test heterogeneity -> refit -> register -> gate -> promote.

One MLflow parent run per job; a child run per outcome, and under it a child
run per candidate. The ``champion`` alias moves last, only for outcomes whose
model passed validation and is not worse than the current champion on this
job's evaluation, so a job that fails or is interrupted leaves every previous
champion in place.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from core.candidates import BCF, BenefitCandidate, BootstrapEnsemble, candidate_label, make_candidate
from core.config import TrainConfig
from core.data import file_digest, ground_truth_columns, load_trial, model_inputs
from core.effects import AverageEffect, adjust, ancova, risk_difference
from core.labelling import Wording, build_policy
from core.labels import LabelCounts, censoring_sensitivity, responder_labels, sensitivity_effects
from core.progress import JobSteps, deferred_interrupt
from core.runtime.artefact import Evidence, ResponderModel
from core.spec import DatasetSpec, inline
from training.answer import choose_answer
from training.diagnostics import bcf_diagnostics, thin_and_measure
from training.evaluation import (
    OutcomeData,
    cross_validate,
    features_of,
    fit_pipeline,
    holm,
    parsed_inputs,
    with_parsed,
)
from training.executor import Executor, make_executor
from training.heterogeneity import heterogeneity_test
from training.path import path_analysis
from training.reports.cohort import cohort_figures, evaluation_figures, png_from_uri, render_cohort_report
from training.reports.payload import add_registry, build_cohort_payload, data_provenance
from training.results import HEADLINE, OutcomeResult, TrainSummary, _clean, _fmt
from training.timing import PhaseClock
from training.tracking import (
    NOTE,
    candidate_note,
    code_version,
    current_champion,
    describe_job,
    ensure_experiment,
    job_note,
    job_run,
    load_registered,
    log_metrics,
    log_responder_model,
    outcome_note,
    register,
    set_champion,
    setup_tracking,
)

log = logging.getLogger("responders.train")

def outcome_data(
    frame: pd.DataFrame, spec: DatasetSpec, outcome: str, config: TrainConfig, parsed: pd.DataFrame | None = None
) -> tuple[OutcomeData, LabelCounts]:
    """One outcome's patients (those with a label), arms and labels; ``parsed``: the whole frame's
    model inputs already lab-parsed (:func:`training.evaluation.parsed_inputs`), row for row."""
    labels, counts = responder_labels(
        frame, spec.outcomes[outcome], config.responder_rules.get(outcome), config.missing_followup
    )
    keep = labels.notna().to_numpy()
    X = model_inputs(frame, spec).loc[keep].reset_index(drop=True)
    t = spec.arm.is_treated(frame[spec.arm.column])[keep].astype(int)
    y = labels.to_numpy()[keep].astype(int)
    rows = parsed.loc[keep].reset_index(drop=True) if parsed is not None else None
    return OutcomeData(X, t, y, spec.arm.treated_fraction, rows), counts


def average_effect(frame: pd.DataFrame, spec: DatasetSpec, outcome: str, config: TrainConfig) -> AverageEffect:
    """The outcome's responder risk difference under the rule and missing-follow-up policy it is trained with."""
    labels, counts = responder_labels(frame, spec.outcomes[outcome], config.responder_rules.get(outcome), config.missing_followup)
    treated = spec.arm.is_treated(frame[spec.arm.column])
    effect = risk_difference(outcome, counts.rule, counts.missing_policy, labels.to_numpy(dtype=float), treated)
    o = spec.outcomes[outcome]
    if o.kind == "score" and o.baseline in frame.columns and o.followup in frame.columns:
        effect.ancova = ancova(
            pd.to_numeric(frame[o.baseline], errors="coerce").to_numpy(dtype=float),
            pd.to_numeric(frame[o.followup], errors="coerce").to_numpy(dtype=float),
            treated,
        )
        effect.ancova.unit = o.unit
    return effect


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


# Final fits in the worker pool -------------------------------------------------------------------------
@dataclass
class FinalFits:
    """One outcome's served parts, fitted before the champion is assembled (:func:`final_fits`)."""

    pipeline: Any
    F: pd.DataFrame
    candidate: BenefitCandidate
    bootstrap: list[BenefitCandidate] | None  # refits for the interval (candidates without posterior draws)


@dataclass(frozen=True)
class _FinalShared:
    data: dict[str, tuple[pd.DataFrame, np.ndarray, np.ndarray, float]]  # outcome -> (F, t, y, treated fraction)
    champions: dict[str, str]
    configs: dict[str, TrainConfig]


def _final_task(task: tuple, shared: _FinalShared):
    kind, outcome, payload = task
    F, t, y, e = shared.data[outcome]
    config, name = shared.configs[outcome], shared.champions[outcome]
    if kind == "champion":
        return make_candidate(name, config.candidates, e, config.seed, final=True).fit(F, t, y)
    template, resamples = payload
    return [BootstrapEnsemble.refit(template, F, t, y, rows, seed) for rows, seed in resamples]


def final_fits(results: dict[str, OutcomeResult], spec: DatasetSpec, config: TrainConfig, executor: Executor) -> dict[str, FinalFits]:
    """Every outcome's champion fit and bootstrap refits, in the worker pool.

    The same fits, seeds and resamples as :func:`fit_champion` makes by itself
    (the resamples are drawn here, in order), so the served models are identical.
    Two passes: the champions (whose chosen penalty the refits may keep), then
    the bootstrap refits of every outcome together.
    """
    shared_data, configs, pipelines = {}, {}, {}
    for outcome, result in results.items():
        data = with_parsed(result.data, spec)
        pipelines[outcome], F = fit_pipeline(spec, data.X, data.parsed)
        configs[outcome] = config.resolved(len(data.y))
        shared_data[outcome] = (F, data.t, data.y, data.treated_fraction)
    shared = _FinalShared(shared_data, {k: r.champion for k, r in results.items()}, configs)
    champions = dict(zip(results, executor.map(_final_task, [("champion", o, None) for o in results], desc="final fits: champions", shared=shared), strict=True))
    tasks: list[tuple] = []
    workers = max(1, getattr(executor, "workers", 2))
    for outcome, candidate in champions.items():
        if candidate.has_draws:
            continue
        intervals = configs[outcome].intervals
        ensemble = BootstrapEnsemble(candidate, intervals.bootstrap_models, intervals.level, configs[outcome].seed, intervals.bootstrap_penalty)
        resamples, template = ensemble.resamples(results[outcome].data.t), ensemble.template()
        chunks = max(1, min(len(resamples), 2 * workers))
        tasks += [("bootstrap", outcome, (template, resamples[i::chunks])) for i in range(chunks)]
    answers = executor.map(_final_task, tasks, desc="final fits: bootstrap refits", shared=shared) if tasks else []
    fits = {}
    for outcome in results:
        chunks = [models for (kind, o, _), models in zip(tasks, answers, strict=True) if kind == "bootstrap" and o == outcome]
        bootstrap = None
        if chunks:
            # Back into resample order: chunk i holds resamples i, i + k, i + 2k, ... (k chunks)
            bootstrap = [None] * sum(len(models) for models in chunks)
            for i, models in enumerate(chunks):
                bootstrap[i :: len(chunks)] = models
        fits[outcome] = FinalFits(pipelines[outcome], shared_data[outcome][0], champions[outcome], bootstrap)
    return fits


def job_run_name(spec: DatasetSpec, data_path: Path, now: datetime | None = None) -> str:
    """A training job's run name: trial, outcomes and date, then the data file ("indo-rct: pancreatitis, 2026-12-04 21:30 UTC (indo_rct.csv)")."""
    moment = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    return f"{spec.name}: {', '.join(spec.outcomes)}, {moment} ({data_path.name})"


def evidence_sentence(result: OutcomeResult, spec: DatasetSpec) -> str:
    """The effect-modification verdict in one sentence (it starts every patient-label reason)."""
    name = inline(spec.outcomes[result.outcome].label.split(" (")[0])
    if not result.permutation.tested:
        return f"Whether the effect on {name} differs between patients was not tested."
    p = _fmt(_clean(result.p_adjusted))
    beyond = " beyond what their baseline risk explains" if result.permutation.method == "imputed_randomisation" else ""
    if result.evidence:
        return f"There is evidence that the effect on {name} differs between patients{beyond} (Holm-adjusted p = {p})."
    return f"There is no reliable evidence that the effect on {name} differs between patients{beyond} (Holm-adjusted p = {p})."


def fit_champion(
    result: OutcomeResult,
    spec: DatasetSpec,
    config: TrainConfig,
    evidence: Evidence,
    provenance: dict[str, Any] | None = None,
    fitted: FinalFits | None = None,
) -> ResponderModel:
    """Refit the chosen candidate on all patients with its interval machinery and fix the answer and label rule.

    ``fitted``: the parts :func:`final_fits` already made in the worker pool (else they are fitted here).
    """
    data = result.data
    config = config.resolved(len(data.y))
    if fitted is None:
        data = with_parsed(data, spec)
        pipeline, F = fit_pipeline(spec, data.X, data.parsed)
        candidate = make_candidate(result.champion, config.candidates, data.treated_fraction, config.seed, final=True).fit(F, data.t, data.y)
        bootstrap = None
    else:
        pipeline, F, candidate, bootstrap = fitted.pipeline, fitted.F, fitted.candidate, fitted.bootstrap
    ensemble = None
    if not candidate.has_draws:
        ensemble = BootstrapEnsemble(
            candidate, config.intervals.bootstrap_models, config.intervals.level, config.seed, config.intervals.bootstrap_penalty
        ).fit(F, data.t, data.y, models=bootstrap)
    model = ResponderModel(
        spec=spec,
        outcome=result.outcome,
        pipeline=pipeline,
        candidate=candidate,
        ensemble=ensemble,
        label_policy=None,  # type: ignore[arg-type]  # fitted below
        evidence=evidence,
        interval_level=config.intervals.level,
        average_effect=result.average_effect.to_dict() if result.average_effect is not None else {},
        metadata={
            "candidate_label": candidate_label(result.champion),
            "reason": result.reason,
            "responder_rule": result.counts.rule,
            "n_train": len(data.y),
            "n_responders": int(data.y.sum()),
            "answer": result.answer,
            "refused": result.refused,  # candidates that failed the served-model checks, with the failed checks
            "path": result.path.to_dict() if result.path is not None else None,
            # Convergence of the served posterior (several chains); None for models without MCMC draws.
            "bcf_diagnostics": _bcf_diagnostics(candidate, F, config) if candidate.name == BCF else None,
            # The patient report and the API show a simulated-data banner from this record.
            "data_provenance": dict(provenance or {}),
        },
    )
    model.label_policy = build_policy(
        config.labels,
        answer=result.answer,
        answer_reason=result.reason[0].upper() + result.reason[1:] + "." if result.reason else "",
        evidence_sentence=evidence_sentence(result, spec),
        average_effect=result.average_effect,
        level=config.intervals.level,
        interval_kind="credible" if candidate.has_draws else "confidence",
        treated=spec.treated_inline(),  # inside sentences
        control=spec.control_inline(),
        wording=Wording.of(spec.outcomes[result.outcome]),
    )
    return model


def _bcf_diagnostics(candidate: BenefitCandidate, F: pd.DataFrame, config: TrainConfig) -> dict[str, Any]:
    """Convergence of the served BCF on all its retained draws, then its thinning for serving (measured)."""
    diagnostics = bcf_diagnostics(candidate, F, config.seed)
    diagnostics["thinning"] = thin_and_measure(candidate, F, config.candidates.bcf.serve_draws, config.intervals.level, config.seed)
    return diagnostics


def _log_table(frame: pd.DataFrame, path: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(path).name
        if local.suffix == ".csv":
            frame.to_csv(local)
        else:
            frame.to_parquet(local)
        mlflow.log_artifact(str(local), artifact_path=str(Path(path).parent) if Path(path).parent != Path(".") else None)


def _log_outcome_artifacts(result: OutcomeResult, spec: DatasetSpec, config: TrainConfig) -> None:
    cv, data = result.cv, result.data
    _log_table(cv.summary, "evaluation/candidates.csv")
    _log_table(cv.per_repeat.set_index(["candidate", "repeat"]), "evaluation/per_repeat.csv")
    p = cv.oof[result.procedure].mean(axis=0)
    tau = cv.mean_benefit(result.procedure)
    oof = pd.DataFrame({"t": data.t, "y": data.y, "p1": p[:, 0], "p0": p[:, 1], "benefit": tau, "psi": cv.psi.mean(axis=0)})
    for name in config.candidates.enabled:
        oof[f"benefit_{name}"] = cv.mean_benefit(name)
    _log_table(oof, "evaluation/oof_predictions.parquet")
    arm_labels = (spec.treated_display(), spec.control_display())
    perm = result.permutation
    evidence = {"tested": perm.tested, "null": perm.null, "statistic": perm.statistic, "p_value": perm.p_value, "statistic_label": perm.label}
    # Drawn once: logged here as files and embedded in the cohort report.
    result.figures = evaluation_figures(result.outcome, oof, evidence, arm_labels, config.seed, cv.summary.loc[result.procedure].to_dict())
    with tempfile.TemporaryDirectory() as tmp:
        for key, uri in result.figures.items():
            (Path(tmp) / f"{key}.png").write_bytes(png_from_uri(uri))
            mlflow.log_artifact(str(Path(tmp) / f"{key}.png"), artifact_path="plots")
    mlflow.log_dict(
        {"null": perm.null.tolist(), "observed": perm.statistic, "per_candidate": perm.per_candidate, "statistic": perm.label},
        "evaluation/permutation.json",
    )


def _log_shap_plots(images: dict[str, dict[str, str]], results: dict[str, OutcomeResult], client: MlflowClient) -> None:
    """The cohort report's SHAP figures also as PNG artifacts of each outcome run (plots/shap_*.png)."""
    with tempfile.TemporaryDirectory() as tmp:
        for outcome, figures in images.items():
            for key, uri in figures.items():
                if key.startswith(("beeswarm", "bar_", "dependence_")):
                    path = Path(tmp) / outcome / f"shap_{key}.png"
                    path.parent.mkdir(exist_ok=True)
                    path.write_bytes(png_from_uri(uri))
                    client.log_artifact(results[outcome].run_id, str(path), artifact_path="plots")


def _validate_model(result: OutcomeResult, config: TrainConfig) -> list[str]:
    """Checks a model must pass before it can be champion; returns the failures."""
    problems = []
    model = result.model
    assert model is not None
    predictions = model.predict(result.data.X)
    numbers = predictions[["p_response_treated", "p_response_control", "benefit_lower", "benefit_upper"]].to_numpy()
    if not np.isfinite(numbers).all():
        problems.append("non-finite predictions")
    probabilities = predictions[["p_response_treated", "p_response_control"]].to_numpy()
    if (probabilities < 0).any() or (probabilities > 1).any():
        problems.append("probabilities outside [0, 1]")
    if ((predictions["benefit_lower"] > predictions["benefit"] + 1e-9) | (predictions["benefit"] > predictions["benefit_upper"] + 1e-9)).any():
        problems.append("benefit outside its interval")
    excess = result.cv.metric(result.procedure, "brier_mean") - result.cv.metric(result.procedure, "brier_null_mean")
    if excess > config.gate.max_brier_excess:
        problems.append(f"cross-validated Brier exceeds the no-information Brier by {excess:.3f} > {config.gate.max_brier_excess}")
    loaded = load_registered(f"models:/{result.registered_model}/{result.version}")
    again = loaded.predict(result.data.X.head(10))
    if not np.allclose(again[["p_response_treated", "benefit"]].to_numpy(), predictions.head(10)[["p_response_treated", "benefit"]].to_numpy()):
        problems.append("the registered model does not reproduce the in-memory predictions")
    return problems


def _compare_with_champion(result: OutcomeResult, client: MlflowClient, config: TrainConfig) -> list[str]:
    current = current_champion(client, result.registered_model)
    if current is None:
        return []
    previous = current.tags.get("candidate")
    if previous not in result.cv.summary.index:
        return []
    if current.tags.get("answer") != result.answer:
        # A different estimand (the evidence or the prognosis changed what a trial can tell a patient): the
        # evidence decides which answer serves, not a Brier comparison across answers.
        return []
    new = result.cv.metric(result.champion, "brier_mean")
    old = result.cv.metric(previous, "brier_mean")
    if new > old + config.gate.max_brier_worse_than_champion:
        return [
            f"worse than the current champion's candidate ({previous}, version {current.version}) on this evaluation: "
            f"Brier {new:.4f} vs {old:.4f}"
        ]
    return []


def validate_for_promotion(results: dict[str, OutcomeResult], client: MlflowClient, config: TrainConfig) -> None:
    """Phase 2: decide, per outcome, whether the new version may become champion (no alias moves here)."""
    for result in results.values():
        result.gate = _validate_model(result, config) + _compare_with_champion(result, client, config)


def promote(results: dict[str, OutcomeResult], client: MlflowClient) -> None:
    """Phase 3, last: move ``champion`` for every outcome whose model passed."""
    for result in results.values():
        if not result.gate:
            set_champion(client, result.registered_model, result.version)
            result.promoted = True
            client.set_model_version_tag(result.registered_model, result.version, "gate", "passed")
        else:
            client.set_model_version_tag(result.registered_model, result.version, "gate", "; ".join(result.gate)[:5000])
        current = current_champion(client, result.registered_model)
        result.champion_version = str(current.version) if current else None


# The steps of a fit, shared by the job (run_training) and the library API (training.estimator) ------------
def evaluate_outcome(
    data: OutcomeData,
    spec: DatasetSpec,
    config: TrainConfig,
    executor: Executor,
    outcome: str,
    phase: Callable[..., None] | None = None,
    after_cv: Callable[[Any], None] | None = None,
) -> tuple[Any, Any, Any]:
    """One outcome's nested cross-validation, risk-based (PATH) analysis and heterogeneity test: (cv, path, test).

    ``phase(label, kind, step=False)`` is told when each step starts (the job's progress and
    timing); ``after_cv(cv)`` runs right after the cross-validation (the job logs its candidate runs).
    """
    phase = phase or (lambda *args, **kwargs: None)
    phase("nested cross-validation", "cv", step=True)
    cv = cross_validate(data, spec, config, executor, desc=f"{outcome}: nested CV")
    if after_cv is not None:
        after_cv(cv)
    phase("risk-based (PATH) analysis", "test")
    path = path_analysis(features_of(spec, with_parsed(data, spec).parsed), data.t, data.y, config.resolved(len(data.y)))
    phase("heterogeneity test", "test", step=True)
    permutation = heterogeneity_test(data, spec, config, executor, desc=f"{outcome}: heterogeneity test")
    return cv, path, permutation


def decide_answers(results: dict[str, OutcomeResult], frame: pd.DataFrame, spec: DatasetSpec, config: TrainConfig) -> None:
    """Holm over the outcomes' tests, the adjusted average effects, and each outcome's answer and champion (in place)."""
    adjusted = holm({k: r.permutation.p_value for k, r in results.items()})
    effects = adjust(
        {k: average_effect(frame, spec, k, config) for k in results},
        alpha=config.evidence.alpha,
    )
    for outcome, result in results.items():
        result.p_adjusted = adjusted[outcome]
        result.average_effect = effects[outcome]
        tested = result.permutation.tested
        result.evidence = bool(tested and result.p_adjusted < config.evidence.alpha)
        choice = choose_answer(
            result.cv, result.data.y, result.data.t, result.evidence, tested,
            bool(result.path is not None and result.path.discriminates), list(config.candidates.enabled), config.intervals.level,
        )
        result.answer, result.champion, result.reason, result.refused = choice.answer, choice.champion, choice.reason, choice.refused


def evidence_of(result: OutcomeResult, config: TrainConfig) -> tuple[str, Evidence]:
    """The verdict sentence and the heterogeneity record the served model carries."""
    tested = result.permutation.tested
    verdict = (
        "evidence of effect modification"
        if result.evidence
        else "no reliable evidence of effect modification" if tested else "effect modification not tested"
    )
    evidence = Evidence(
        tested=tested,
        subgroup_evidence=result.evidence,
        p_value=_clean(result.permutation.p_value),
        p_adjusted=_clean(result.p_adjusted),
        statistic=_clean(result.permutation.statistic),
        alpha=config.evidence.alpha,
        permutations=int(result.permutation.permutations_run),
        verdict=verdict,
        method=result.permutation.method,
    )
    return verdict, evidence


def run_training(
    data_path: str | Path,
    spec: DatasetSpec,
    config: TrainConfig,
    tracking_uri: str | None = None,
    summary_json: str | Path | None = None,
    report_dir: str | Path | None = None,
) -> TrainSummary:
    """Run one training job end to end; raises on bad data or any failure (champion untouched).

    The cohort report is logged to the parent run (``reports/cohort.html``, with
    the payload it is rendered from) and, when ``report_dir`` is given, also
    written to ``report_dir/cohort.html``.
    """
    started = time.perf_counter()
    clock = PhaseClock()
    clock.start("load and validate the data", "data")
    data_path = Path(data_path)
    frame, validation = load_trial(data_path, spec)
    resolved_uri, client = setup_tracking(tracking_uri)
    experiment_id = ensure_experiment(client, spec.name, resolved_uri)
    digest = file_digest(data_path)
    provenance = data_provenance(frame, data_path, digest, spec)
    results: dict[str, OutcomeResult] = {}
    # Per outcome: nested CV, permutation test; then refit/register, report analysis, gate/promote, report.
    steps = JobSteps(2 * len(spec.outcomes) + 4)
    note = job_note(data_path.name, len(frame), digest, spec.name, list(spec.outcomes), config.model_dump(mode="json"))

    mlflow.set_experiment(experiment_id=experiment_id)  # nested runs inherit the active experiment
    # Ctrl-C: the runs end KILLED and JobInterrupted names the step (training.tracking.job_run).
    # One executor for the whole job: its workers start once and serve every resampling loop and the final fits.
    started_on = datetime.now(UTC).strftime("%Y-%m-%d")
    with job_run(job_run_name(spec, data_path), steps, description=note) as parent, ExitStack() as stack:
        clock.start("start the executor", "executor")
        executor = stack.enter_context(make_executor(config.executor.kind, config.executor.workers, config.executor.scheduler))
        clock.start("MLflow: job run, dataset and parameters", "mlflow")
        run_config = config.resolved(len(frame))
        mlflow.set_tags({**code_version(), "spec": spec.name, "dataset.digest": digest, "config.digest": config.digest(), "job": "train"})
        mlflow.log_params(
            {
                "data": data_path.name,
                "n_rows": len(frame),
                "seed": config.seed,
                "cv.folds": run_config.cv.folds,
                "cv.repeats": run_config.cv.repeats,
                "cv.inner_folds": run_config.cv.inner_folds,
                "evidence.permutations": config.evidence.permutations,
                "evidence.alpha": config.evidence.alpha,
                "intervals.bootstrap_models": run_config.intervals.bootstrap_models,
                "intervals.level": config.intervals.level,
                "candidates": ",".join(config.candidates.enabled),
                "executor": config.executor.kind,
            }
        )
        inputs = frame.drop(columns=ground_truth_columns(frame))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MLflow cannot tell which local-file source class to use
            dataset = mlflow.data.from_pandas(inputs, source=str(data_path.resolve()), name=data_path.stem, digest=digest[:16])
        mlflow.log_input(dataset, context="training", tags={"spec": spec.name, "rows": str(len(frame))})
        mlflow.log_text(validation.render(), "data/validation_report.txt")
        mlflow.log_dict(validation.to_dict(), "data/validation_report.json")
        mlflow.log_text(spec.to_yaml(), "data/spec.yaml")
        mlflow.log_text(config.to_yaml(), "config.yaml")

        clock.start("parse the lab values once", "data")
        parsed = parsed_inputs(spec, model_inputs(frame, spec))
        for outcome in spec.outcomes:
            clock.start(f"{outcome}: MLflow outcome run", "mlflow")
            data, counts = outcome_data(frame, spec, outcome, config, parsed)
            log.info("%s: %d patients, %d responders (%s)", outcome, counts.n, counts.responders, counts.rule)
            with mlflow.start_run(run_name=f"{spec.name}/{outcome} {started_on}", nested=True) as outcome_run:
                mlflow.set_tags({"outcome": outcome, "spec": spec.name})
                mlflow.set_tag(NOTE, outcome_note(outcome, counts.rule, counts.n, counts.responders, counts.missing_followup, counts.missing_policy))
                mlflow.log_params({"responder_rule": counts.rule, "missing_followup": counts.missing_policy})
                log_metrics(counts.as_metrics())

                def phase(label: str, kind: str, step: bool = False, outcome: str = outcome) -> None:
                    if step:
                        steps.start(f"{outcome}: {label}")
                    clock.start(f"{outcome}: {label}", kind)

                def log_candidates(cv, outcome: str = outcome) -> None:
                    clock.start(f"{outcome}: MLflow candidate runs", "mlflow")
                    for name in config.candidates.enabled:
                        with mlflow.start_run(run_name=f"{outcome}/{name}", nested=True):
                            mlflow.set_tags({"outcome": outcome, "candidate": name})
                            settings = getattr(config.candidates, name, None)
                            params = settings.model_dump(mode="json") if settings is not None else {}
                            if params:
                                mlflow.log_params({k: json.dumps(v) if isinstance(v, dict) else v for k, v in params.items()})
                            log_metrics({k: float(v) for k, v in cv.summary.loc[name].items() if np.isfinite(v)})
                            log_metrics({"times_selected": cv.selections[name]})
                            mlflow.set_tag(NOTE, candidate_note(name, outcome, {**cv.summary.loc[name].to_dict(), "times_selected": cv.selections[name]}))

                cv, path, permutation = evaluate_outcome(data, spec, config, executor, outcome, phase=phase, after_cv=log_candidates)
                results[outcome] = OutcomeResult(outcome, counts, data, cv, permutation, run_id=outcome_run.info.run_id, path=path)

        # Sensitivity analysis: with > 10% missing follow-up, the average effect under the other policy too.
        for outcome, effect in sensitivity_effects(frame, spec, config).items():
            results[outcome].average_effect_sensitivity = effect
        # Event by a horizon: the IPCW estimate beside the primary analysis, which excludes early censoring.
        for outcome in spec.event_by_outcomes():
            if outcome in results:
                results[outcome].censoring = censoring_sensitivity(frame, spec, outcome, seed=config.seed)

        steps.start("refit, log and register the champions")
        clock.start("final fits: champions and bootstrap refits", "final fits")
        decide_answers(results, frame, spec, config)
        fitted = final_fits(results, spec, config, executor)
        for outcome, result in results.items():
            tested = result.permutation.tested
            verdict, evidence = evidence_of(result, config)
            clock.start(f"{outcome}: assemble the served model", "final fits")
            result.model = fit_champion(result, spec, config, evidence, provenance, fitted[outcome])
            clock.start(f"{outcome}: MLflow logging and registration", "mlflow")
            result.registered_model = spec.registered_model_name(outcome)
            with mlflow.start_run(run_id=result.run_id, nested=True):
                selected = result.cv.summary.loc[result.procedure]
                log_metrics({k: float(selected[k]) for k in HEADLINE if k in selected and np.isfinite(selected[k])})
                effect = result.average_effect
                log_metrics(
                    {
                        k: v
                        for k, v in {
                            "p_value": result.permutation.p_value if tested else float("nan"),
                            "p_adjusted": result.p_adjusted if tested else float("nan"),
                            "heterogeneity_statistic": result.permutation.statistic,
                            "subgroup_evidence": float(result.evidence),
                            "permutations_run": float(result.permutation.permutations_run),
                            "average_effect.risk_difference": _nan(effect.risk_difference),
                            "average_effect.ci_low": _nan(effect.ci_low),
                            "average_effect.ci_high": _nan(effect.ci_high),
                            "average_effect.p_value": _nan(effect.p_value),
                            "average_effect.p_adjusted": _nan(effect.p_adjusted),
                            "average_effect.established": float(effect.established),
                        }.items()
                        if np.isfinite(v)
                    }
                )
                mlflow.set_tags({"champion_candidate": result.champion, "verdict": verdict, "answer": result.answer})
                _log_outcome_artifacts(result, spec, config)
                info = log_responder_model(result.model)
            result.model_uri = info.model_uri
            version = register(
                info.model_uri,
                result.registered_model,
                tags={
                    "candidate": result.champion,
                    "subgroup_evidence": result.evidence,
                    "p_adjusted": _fmt(_clean(result.p_adjusted)),
                    "verdict": verdict,
                    "dataset_digest": digest,
                    "config_digest": config.digest(),
                    "training_run_id": result.run_id,
                    "parent_run_id": parent.info.run_id,
                    "brier_mean_cv": f"{result.cv.metric(result.champion, 'brier_mean'):.5f}",
                    "label_mode": result.model.label_policy.mode,
                    "answer": result.answer,
                },
            )
            result.version = str(version.version)
            # The parent run's table shows each outcome's headline: evidence, average effect and the served procedure's fit.
            headline = {
                "p_adjusted": result.p_adjusted,
                "subgroup_evidence": float(result.evidence),
                "average_effect.risk_difference": _nan(effect.risk_difference),
                "n_patients": float(result.counts.n),
                **{k: float(selected[k]) for k in ("auc_treated", "auc_control", "brier_mean") if k in selected},
            }
            log_metrics({f"{outcome}.{k}": v for k, v in headline.items() if np.isfinite(v)})

        # The report's analysis and figures (SHAP on the cohort, ANCOVA, Table 1) are made before the
        # gate, so a failure there fails the job while every previous champion is still in place;
        # only the registry outcome is filled in after promotion.
        steps.start("cohort report: analysis and figures")
        clock.start("cohort report: analysis and figures", "reports")
        report_started = time.perf_counter()
        payload = build_cohort_payload(
            frame, spec, run_config, results, provenance, validation, parent.info.run_id, experiment_id
        )
        payload.meta["config"]["digest"] = config.digest()  # the job's config (with its auto settings), as tagged
        images = cohort_figures(payload, drawn={name: r.figures for name, r in results.items()})
        report_seconds = time.perf_counter() - report_started

        steps.start("validate and promote")
        clock.start("validate and promote", "mlflow")
        validate_for_promotion(results, client, config)
        with deferred_interrupt():  # all aliases move, or none
            promote(results, client)
        describe_job(client, experiment_id, spec.name, data_path.name, digest, parent.info.run_id, {k: r.summary() for k, r in results.items()})

        steps.start("cohort report: render and log")
        clock.start("cohort report: render and log", "reports")

        report_started = time.perf_counter()
        add_registry(payload, results)
        payload.log_to_mlflow()
        html = render_cohort_report(payload, images=images)
        mlflow.log_text(html, "reports/cohort.html")
        _log_shap_plots(images, results, client)
        if report_dir is not None:
            Path(report_dir).mkdir(parents=True, exist_ok=True)
            (Path(report_dir) / "cohort.html").write_text(html, encoding="utf-8")
            log.info("cohort report written to %s", Path(report_dir) / "cohort.html")
        report_seconds += time.perf_counter() - report_started
        log_metrics({"report_seconds": report_seconds})

        clock.start("MLflow: summary", "mlflow")
        summary = TrainSummary(
            spec=spec.name,
            data=str(data_path),
            dataset_digest=digest,
            config_digest=config.digest(),
            tracking_uri=resolved_uri,
            experiment_id=experiment_id,
            parent_run_id=parent.info.run_id,
            seconds=time.perf_counter() - started,
            outcomes=results,
            validation=validation,
        )
        mlflow.log_dict(summary.to_dict(), "summary.json")
        log_metrics({"job_seconds": summary.seconds})
        clock.stop()
        summary.timing = clock.to_dict()
        mlflow.log_dict(summary.timing, "timing.json")
    if summary_json:
        Path(summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(summary_json).write_text(json.dumps(summary.to_dict(), indent=2))
    return summary
