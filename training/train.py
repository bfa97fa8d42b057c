"""The training job: fit (:class:`training.estimator.ResponderEstimator`), then track -> register -> gate -> promote -> report.

The fit (validate, nested CV, heterogeneity test, answers, final fits) is the
library API's, unchanged; this module adds what a job needs around it. One
MLflow parent run per job (open during the fit, so an interrupted or failed fit
is recorded); a child run per outcome, and under it a child
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
from contextlib import ExitStack
from datetime import UTC, datetime
from html import escape
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from core.config import TrainConfig
from core.data import file_digest, ground_truth_columns, load_trial
from core.progress import JobSteps, deferred_interrupt
from core.registry import check_tracking_uri, resolve_tracking_uri
from core.spec import DatasetSpec
from training.estimator import ResponderEstimator
from training.executor import WORKER_MODULES, make_executor, start_local_workers
from training.reports.cohort import cohort_figures, png_from_uri, render_cohort_report
from training.reports.evaluation import EvaluationInputs, draw_evaluation_figures
from training.reports.payload import add_registry, build_cohort_payload, data_provenance
from training.results import HEADLINE, OutcomeResult, TrainSummary, _clean, _fmt

# The steps of a fit live in training.steps (shared with the library API); importable from here by name too.
from training.steps import (  # noqa: F401
    FinalFits,
    average_effect,
    decide_answers,
    evaluate_outcome,
    evidence_of,
    evidence_sentence,
    final_fits,
    fit_champion,
    outcome_data,
)
from training.timing import PhaseClock
from training.tracking import (
    NOTE,
    JobOpening,
    candidate_note,
    code_version,
    current_champion,
    describe_job,
    job_note,
    job_run,
    load_registered,
    log_metrics,
    log_responder_model,
    outcome_note,
    register,
    set_champion,
    trial_dataset,
)

log = logging.getLogger("responders.train")



def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def job_run_name(spec: DatasetSpec, data_path: Path, now: datetime | None = None) -> str:
    """A training job's run name: trial, outcomes and date, then the data file ("indo-rct: pancreatitis, 2026-12-04 21:30 UTC (indo_rct.csv)")."""
    moment = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    return f"{spec.name}: {', '.join(spec.outcomes)}, {moment} ({data_path.name})"


def _log_table(frame: pd.DataFrame, path: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(path).name
        if local.suffix == ".csv":
            frame.to_csv(local)
        else:
            frame.to_parquet(local)
        mlflow.log_artifact(str(local), artifact_path=str(Path(path).parent) if Path(path).parent != Path(".") else None)


def _evaluation_inputs(result: OutcomeResult, spec: DatasetSpec, config: TrainConfig) -> EvaluationInputs:
    """What the outcome's evaluation figures are drawn from: the served procedure's out-of-fold predictions and the test.

    Only the columns the figures read: this is sent to the workers that draw them.
    """
    cv, data = result.cv, result.data
    p = cv.oof[result.procedure].mean(axis=0)
    tau = cv.mean_benefit(result.procedure)
    oof = pd.DataFrame({"t": data.t, "y": data.y, "p1": p[:, 0], "p0": p[:, 1], "benefit": tau, "psi": cv.psi.mean(axis=0)})
    perm = result.permutation
    evidence = {"tested": perm.tested, "null": perm.null, "statistic": perm.statistic, "p_value": perm.p_value, "statistic_label": perm.label}
    arm_labels = (spec.treated_display(), spec.control_display())
    return EvaluationInputs(result.outcome, oof, evidence, arm_labels, config.seed, cv.summary.loc[result.procedure].to_dict())


def _evaluation_table(result: OutcomeResult, inputs: EvaluationInputs, config: TrainConfig) -> pd.DataFrame:
    """The outcome run's out-of-fold table: the figures' columns and every candidate's mean benefit."""
    return inputs.oof.assign(**{f"benefit_{name}": result.cv.mean_benefit(name) for name in config.candidates.enabled})


def _log_outcome_artifacts(result: OutcomeResult, inputs: EvaluationInputs, config: TrainConfig) -> None:
    """The outcome run's evaluation tables, its figures (``result.figures``, drawn already) and the test's null."""
    cv, perm = result.cv, result.permutation
    _log_table(cv.summary, "evaluation/candidates.csv")
    _log_table(cv.per_repeat.set_index(["candidate", "repeat"]), "evaluation/per_repeat.csv")
    _log_table(_evaluation_table(result, inputs, config), "evaluation/oof_predictions.parquet")
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


# The gate's checks of a model's answers (finite, probabilities in [0, 1], benefit inside its interval) read every
# patient of a trial up to this many, and a seeded random sample of this many above: properties of the served
# model, not of particular patients. Every patient at 10^6 held each served draw of every patient in memory at once
# (several GB for a BCF champion's 200 draws) for minutes of the job's MLflow phase.
GATE_PATIENTS = 20_000


def gate_rows(n: int, seed: int) -> np.ndarray | None:
    """The rows the gate's answer checks read (sorted), or None for every patient."""
    if n <= GATE_PATIENTS:
        return None
    return np.sort(np.random.default_rng([seed, 2718]).choice(n, GATE_PATIENTS, replace=False))


def _validate_model(result: OutcomeResult, config: TrainConfig) -> list[str]:
    """Checks a model must pass before it can be champion; returns the failures."""
    problems = []
    model = result.model
    assert model is not None
    rows = gate_rows(len(result.data.X), config.seed)
    X = result.data.X if rows is None else result.data.X.iloc[rows].reset_index(drop=True)
    predictions = model.predict(X)
    where = "" if rows is None else f" (checked on a random {len(rows):,} of the {len(result.data.X):,} patients)"
    numbers = predictions[["p_response_treated", "p_response_control", "benefit_lower", "benefit_upper"]].to_numpy()
    if not np.isfinite(numbers).all():
        problems.append("non-finite predictions" + where)
    probabilities = predictions[["p_response_treated", "p_response_control"]].to_numpy()
    if (probabilities < 0).any() or (probabilities > 1).any():
        problems.append("probabilities outside [0, 1]" + where)
    if ((predictions["benefit_lower"] > predictions["benefit"] + 1e-9) | (predictions["benefit"] > predictions["benefit_upper"] + 1e-9)).any():
        problems.append("benefit outside its interval" + where)
    excess = result.cv.metric(result.procedure, "brier_mean") - result.cv.metric(result.procedure, "brier_null_mean")
    if excess > config.gate.max_brier_excess:
        problems.append(f"cross-validated Brier exceeds the no-information Brier by {excess:.3f} > {config.gate.max_brier_excess}")
    loaded = load_registered(f"models:/{result.registered_model}/{result.version}")
    again = loaded.predict(X.head(10))
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


def _by_comparison(
    results: dict[str, OutcomeResult], frame: pd.DataFrame, spec: DatasetSpec
) -> list[tuple[str | None, pd.DataFrame, DatasetSpec, dict[str, OutcomeResult]]]:
    """Per comparison: its key, rows, two-arm spec and results keyed by outcome (a two-arm trial: one, unchanged)."""
    if not spec.arm.multi:
        return [(None, frame, spec, results)]
    out = []
    for comparison in spec.comparisons():
        group = {r.outcome: r for r in results.values() if r.comparison is not None and r.comparison.key == comparison.key}
        out.append((comparison.key, frame.loc[comparison.rows(frame)].reset_index(drop=True), comparison.spec, group))
    return out


def _comparisons_index(spec: DatasetSpec, results: dict[str, OutcomeResult]) -> str:
    """Three or more arms: a page listing each comparison's cohort report with its average effects (Holm across all)."""
    rows = []
    for result in results.values():
        own, effect = result.spec, result.average_effect
        rd = "n/a" if effect is None or effect.risk_difference is None else f"{effect.risk_difference:+.3f} [{_fmt(effect.ci_low)}, {_fmt(effect.ci_high)}]"
        rows.append(
            f"<tr><td><a href=\"cohort-{escape(result.comparison.key)}.html\">{escape(own.treated_display())} vs {escape(own.control_display())}</a></td>"
            f"<td>{escape(spec.outcomes[result.outcome].label)}</td><td>{escape(rd)}</td><td>{_fmt(_clean(effect.p_adjusted)) if effect else 'n/a'}</td>"
            f"<td>{_fmt(_clean(result.p_adjusted))}</td><td>{escape(result.answer)}</td></tr>"
        )
    return (
        f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(spec.name)}: comparisons</title></head><body>"
        f"<h1>{escape(spec.name)}: {len(spec.comparisons())} comparisons</h1>"
        "<p>Each comparison is fitted on its two arms' patients. Holm's procedure runs across every comparison and outcome "
        "(the average effects' adjusted p-values and the heterogeneity tests).</p>"
        "<table><thead><tr><th>Comparison</th><th>Outcome</th><th>Responder risk difference [CI]</th><th>Holm-adjusted p (average effect)</th>"
        "<th>Holm-adjusted p (heterogeneity)</th><th>Answer</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></body></html>"
    )


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
    check_tracking_uri(resolve_tracking_uri(tracking_uri))  # a store MLflow refuses stops the job before any work
    clock = PhaseClock()
    clock.start("load and validate the data", "data")
    data_path = Path(data_path)
    frame, validation = load_trial(data_path, spec)
    if config.executor.kind == "local" and config.executor.scheduler is None:
        # The workers start and import the training modules while the fit begins (`responders train` has started
        # them already, before its own imports: then this does nothing).
        start_local_workers(config.executor.workers, WORKER_MODULES)
    digest = file_digest(data_path)
    provenance = data_provenance(frame, data_path, digest, spec)
    # Per outcome: nested CV, permutation test; then refit/register, report analysis, gate/promote, report.
    steps = JobSteps(2 * len(spec.model_keys()) + 4)
    note = job_note(data_path.name, len(frame), digest, spec.name, list(spec.outcomes), config.model_dump(mode="json"))
    model_inputs = frame.drop(columns=ground_truth_columns(frame))  # what the run records as its dataset (a copy)
    with warnings.catch_warnings():  # here, not in the thread below: the filters are the process's, not a thread's
        warnings.simplefilter("ignore", UserWarning)  # MLflow cannot tell which local-file source class to use
        dataset = trial_dataset(model_inputs, source=str(data_path.resolve()), name=data_path.stem, digest=digest[:16])

    def record_start() -> None:
        """What the parent run records first: tags, parameters, the dataset, the validation report, spec and config."""
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
        mlflow.log_input(dataset, context="training", tags={"spec": spec.name, "rows": str(len(frame))})
        mlflow.log_text(validation.render(), "data/validation_report.txt")
        mlflow.log_dict(validation.to_dict(), "data/validation_report.json")
        mlflow.log_text(spec.to_yaml(), "data/spec.yaml")
        mlflow.log_text(config.to_yaml(), "config.yaml")

    # The store, the experiment and the parent run open in a thread while the fit starts (the workers would idle
    # for those seconds otherwise); the parent run is this thread's from the fit's end, and a failed or
    # interrupted fit is recorded in it as FAILED or KILLED all the same.
    opening = JobOpening(tracking_uri, spec.name, job_run_name(spec, data_path), note, record_start)

    # The fit: exactly ResponderEstimator.fit (the library API), on this job's executor, telling the
    # progress line and the phase clock where it is. Every run below is made from its results.
    def phase(label: str, kind: str, step: bool = False, outcome: str | None = None) -> None:
        opening.check()  # a store that cannot be opened stops the job at the fit's next phase
        if kind == "final fits" and step:
            steps.start("refit, log and register the champions")
            clock.start("final fits: champions and bootstrap refits", kind)
            return
        named = f"{outcome}: {label}" if outcome else label
        if step:
            steps.start(named)
        clock.start(named, kind)

    started_on = datetime.now(UTC).strftime("%Y-%m-%d")
    # One executor for the whole job: its workers start once and serve every resampling loop and the final fits.
    with ExitStack() as stack:
        failure: BaseException | None = None
        try:
            clock.start("start the executor", "executor")
            executor = stack.enter_context(make_executor(config.executor.kind, config.executor.workers, config.executor.scheduler))
            fitted = ResponderEstimator(spec, config).fit(
                frame, str(data_path), validation=validation, provenance=provenance, executor=executor, phase=phase
            )
        except BaseException as err:  # noqa: BLE001 - raised again below, inside the job's run (FAILED or KILLED)
            failure = err
        clock.start("MLflow: the job's run (opened beside the fit)", "mlflow")
        while True:
            try:
                opened = opening.result()
                break
            except KeyboardInterrupt as err:  # Ctrl-C while the run is still opening: recorded in it once it is open
                if isinstance(failure, KeyboardInterrupt):
                    raise  # a second one: leave without waiting
                failure = err
            except BaseException as err:
                if failure is not None and failure is not err and not isinstance(failure, KeyboardInterrupt):
                    err.add_note(f"the fit had failed too: {type(failure).__name__}: {failure}")
                raise
        clock.beside("MLflow: store, experiment, job run, dataset and parameters", "mlflow", opened.seconds)
        resolved_uri, client, experiment_id = opened.tracking_uri, opened.client, opened.experiment_id
        # Ctrl-C: the runs end KILLED and JobInterrupted names the step (training.tracking.job_run).
        with job_run("", steps, run_id=opened.run_id) as parent:
            if failure is not None:
                raise failure
            results: dict[str, OutcomeResult] = fitted.results

            # Every outcome's evaluation figures, drawn once in the executor's workers (one task per figure, in
            # parallel): logged below as each outcome run's plots/ and embedded in the cohort report.
            clock.start("evaluation figures", "reports")
            inputs = {outcome: _evaluation_inputs(result, result.spec or spec, config) for outcome, result in results.items()}
            for result, drawn in zip(results.values(), draw_evaluation_figures(list(inputs.values()), executor), strict=True):
                result.figures = drawn

            # Tracking: per outcome a run with its candidates' runs under it, the served model logged and registered.
            # The key is the outcome (two arms) or "<comparison>/<outcome>" (three or more arms, each with its two-arm spec).
            for outcome, result in results.items():
                own = result.spec or spec
                clock.start(f"{outcome}: MLflow logging and registration", "mlflow")
                counts, cv = result.counts, result.cv
                log.info("%s: %d patients, %d responders (%s)", outcome, counts.n, counts.responders, counts.rule)
                tested = result.permutation.tested
                verdict, _ = evidence_of(result, config)
                result.registered_model = own.registered_model_name(result.outcome)
                with mlflow.start_run(run_name=f"{spec.name}/{outcome} {started_on}", nested=True) as outcome_run:
                    result.run_id = outcome_run.info.run_id
                    mlflow.set_tags({"outcome": result.outcome, "spec": spec.name})
                    if result.spec is not None:
                        mlflow.set_tags({"comparison": result.comparison.key, "treated_arm": own.treated_display(), "control_arm": own.control_display()})
                    mlflow.set_tag(NOTE, outcome_note(outcome, counts.rule, counts.n, counts.responders, counts.missing_followup, counts.missing_policy))
                    mlflow.log_params({"responder_rule": counts.rule, "missing_followup": counts.missing_policy})
                    log_metrics(counts.as_metrics())
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
                                # SD added to the served interval (0: none; the summary JSON says how it was measured)
                                "calibration_allowance": float(result.model.calibration_allowance) if result.model is not None else float("nan"),
                            }.items()
                            if np.isfinite(v)
                        }
                    )
                    mlflow.set_tags({"champion_candidate": result.champion, "verdict": verdict, "answer": result.answer})
                    _log_outcome_artifacts(result, inputs[outcome], config)
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
            reports = []  # one cohort report per comparison (a two-arm trial: one, as always)
            for key, sub, own, group in _by_comparison(results, frame, spec):
                payload = build_cohort_payload(
                    sub, own, config.resolved(len(sub)), group, provenance, validation, parent.info.run_id, experiment_id
                )
                payload.meta["config"]["digest"] = config.digest()  # the job's config (with its auto settings), as tagged
                images = cohort_figures(payload, drawn={name: r.figures for name, r in group.items()})
                reports.append((key, payload, images, group))
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
            pages = {}
            for key, payload, images, group in reports:
                where = "reports" if key is None else f"reports/{key}"
                add_registry(payload, group)
                payload.log_to_mlflow(where)
                html = render_cohort_report(payload, images=images)
                mlflow.log_text(html, f"{where}/cohort.html")
                _log_shap_plots(images, group, client)
                pages["cohort.html" if key is None else f"cohort-{key}.html"] = html
            if len(reports) > 1:  # three or more arms: cohort.html lists the comparisons' reports
                pages["cohort.html"] = _comparisons_index(spec, results)
                mlflow.log_text(pages["cohort.html"], "reports/cohort.html")
            if report_dir is not None:
                Path(report_dir).mkdir(parents=True, exist_ok=True)
                for name, html in pages.items():
                    (Path(report_dir) / name).write_text(html, encoding="utf-8")
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
