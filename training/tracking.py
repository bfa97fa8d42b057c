"""MLflow plumbing: tracking URI resolution, experiments, model logging, registry and the champion alias.

The embedded default is a sqlite store at ``mlruns/mlflow.db`` with artifacts
under ``mlruns/artifacts`` (MLflow 3 deprecates the plain-file store); setting
``MLFLOW_TRACKING_URI`` (or ``--tracking-uri``) points a job at any tracking
server. URIs are resolved by the command's entry point, never at import.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import joblib
import mlflow
from mlflow import ActiveRun, MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import ModelSignature
from mlflow.types.schema import ParamSchema, ParamSpec

from core.progress import JobInterrupted, JobSteps, deferred_interrupt

# The registry readers live in core (serving reads the registry too); re-exported for training's callers.
from core.registry import (  # noqa: F401
    CHAMPION,
    DEFAULT_DIR,
    current_champion,
    default_tracking_uri,
    load_registered,
    resolve_tracking_uri,
    setup_tracking,
)
from core.runtime.artefact import PYFUNC_ENTRY, ResponderModel, input_schema, predictions_schema
from core.runtime.compiled import SCORING_FILE, compile_model
from training.metrics import describe_benefit_calibration

PACKAGE = "ldn-responders"
NOTE = "mlflow.note.content"  # a run's or experiment's description (Markdown) in the MLflow UI
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # shown as "Machine learning" in MLflow 3's UI
KILLED = "KILLED"
FAILED = "FAILED"





def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The spec's experiment (created when missing), tagged as a model-training experiment.

    MLflow 3's UI otherwise treats an experiment as a GenAI one (an empty
    "Traces" page). A kind already set, e.g. by a person in the UI, is kept.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    artifact_location = None
    if tracking_uri.startswith("sqlite:///"):
        artifacts = Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        artifact_location = artifacts.resolve().as_uri()
    return client.create_experiment(name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


def code_version() -> dict[str, str]:
    """Package version and, when run from a git checkout, the commit (with a dirty flag)."""
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = "unknown"
    tags = {"code.package_version": version}
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            tags["code.git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
            tags["code.git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def pip_requirements() -> list[str]:
    """Explicit requirements (inference takes 4-7 s per model and guesses)."""
    names = ["numpy", "pandas", "scikit-learn", "lightgbm", "shap", "mlflow", "joblib", "pydantic", "pyyaml", "scipy"]
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    try:
        pins.append(f"{PACKAGE}=={metadata.version(PACKAGE)}")
    except metadata.PackageNotFoundError:
        pass
    return pins


def log_responder_model(model: ResponderModel, name: str = "model") -> Any:
    """Log a ResponderModel as an MLflow pyfunc with signature, params and a synthetic input example."""
    signature = ModelSignature(
        inputs=input_schema(model),
        outputs=predictions_schema(),
        params=ParamSchema([ParamSpec("output", "string", "predictions")]),
    )
    example = model.example_input()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "responder.joblib"
        joblib.dump(model, path, compress=3)
        # The same model compiled for scoring, read by `responders predict` without scikit-learn (core.runtime.compiled).
        scoring = Path(tmp) / SCORING_FILE
        joblib.dump(compile_model(model), scoring, compress=3)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(PYFUNC_ENTRY),
            artifacts={"responder": str(path), "scoring": str(scoring)},
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            metadata={
                "spec": model.spec.name,
                "outcome": model.outcome,
                "candidate": model.candidate_name,
                "evidence": model.evidence.to_dict(),
                "label_policy": model.label_policy.to_dict(),
                "average_effect": model.average_effect,
                "interval_level": model.interval_level,
            },
        )


def trial_dataset(inputs: Any, source: str, name: str, digest: str) -> Any:
    """The trial's model inputs as an MLflow dataset, its schema inferred from the rows that show every column's kinds.

    MLflow infers a pandas dataset's schema by looking at every cell of each
    text column (12 s for 10^5 patients, about two minutes for 10^6). The rows
    it needs to reach the same schema are fewer: the first 1,000, and for each
    column the first row where it is missing and the first row of each Python
    type its cells hold. tests/test_training.py checks the two schemas agree.
    """
    import numpy as np
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.pandas_dataset import PandasDataset

    class TrialDataset(PandasDataset):
        @cached_property
        def schema(self):
            rows = set(range(min(1_000, len(self.df))))
            for column in self.df.columns:
                values = self.df[column]
                missing = values.isna().to_numpy()
                if missing.any():
                    rows.add(int(np.argmax(missing)))
                if values.dtype == object:
                    kinds = values.map(type, na_action="ignore").to_numpy()
                    rows.update(int(np.argmax(kinds == kind)) for kind in set(kinds[~missing]))
            # MLflow's own inference on those rows, through its public dataset class (None where it finds no schema:
            # a text column with numbers and text among its cells).
            return PandasDataset(self.df.iloc[sorted(rows)], source=self.source, digest=self.digest).schema

    return TrialDataset(inputs, source=resolve_dataset_source(source), name=name, digest=digest)


def register(model_uri: str, name: str, tags: dict[str, Any]) -> ModelVersion:
    return mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})



def set_champion(client: MlflowClient, name: str, version: str) -> None:
    client.set_registered_model_alias(name, CHAMPION, version)



# Interrupted jobs --------------------------------------------------------------------------------


def metric_value(value: Any) -> float:
    """A metric as it is logged and shown: 4 significant digits below 1, 3 decimals from 1 up (counts stay exact).

    MLflow's run table shows what is logged; 0.6123 reads, 0.61234567891234567 does not. The cohort
    report's payload rounds the same way (:func:`training.reports.numbers._num`), so both show one number.
    """
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        return value
    return float(f"{value:.4g}") if abs(value) < 1 else round(value, 3)


def log_metrics(metrics: dict[str, Any]) -> None:
    """``mlflow.log_metrics`` with every value rounded by :func:`metric_value`."""
    mlflow.log_metrics({k: metric_value(v) for k, v in metrics.items()})


@dataclass
class OpenedJob:
    """What :class:`JobOpening` opened: the store, the experiment and the job's parent run."""

    tracking_uri: str
    client: MlflowClient
    experiment_id: str
    run_id: str
    seconds: float  # wall time the opening took, beside the fit


class JobOpening:
    """A job's MLflow store, experiment and parent run, opened in a thread while the job's fit starts.

    Opening a store (a fresh one runs MLflow's schema migrations), the
    experiment and the parent run with what it records first (``start()``:
    tags, parameters, the dataset, the files; called in the thread, the run
    active there) takes the driver 2-4 s, in which the executor's workers would
    otherwise idle. The fit needs none of it and no number depends on it.

    The caller's :func:`job_run` (``run_id=``) then makes the run its own, so
    a fit that fails or is interrupted is still recorded as FAILED or KILLED.
    :meth:`check` (between the fit's phases) raises an error of the opening as
    soon as one is known, so a store that cannot be opened still stops the job
    early; :meth:`result` waits for the opening.
    """

    def __init__(self, tracking_uri: str | None, experiment: str, run_name: str, description: str, start: Callable[[], None]):
        self._tracking_uri, self._experiment, self._run_name, self._description, self._start = tracking_uri, experiment, run_name, description, start
        self._done = threading.Event()
        self._opened: OpenedJob | None = None
        self._error: BaseException | None = None
        # A daemon: an interpreter that exits without waiting (the caller always waits) is not held by it.
        self._thread = threading.Thread(target=self._open, name="responders-open-job", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        began = time.perf_counter()
        try:
            resolved, client = setup_tracking(self._tracking_uri)
            experiment_id = ensure_experiment(client, self._experiment, resolved)
            mlflow.set_experiment(experiment_id=experiment_id)  # nested runs inherit the active experiment
            run = mlflow.start_run(run_name=self._run_name, description=self._description or None)  # this thread's active run
            try:
                self._start()
            except BaseException:
                mlflow.end_run(FAILED)
                raise
            self._opened = OpenedJob(resolved, client, experiment_id, run.info.run_id, time.perf_counter() - began)
        except BaseException as err:  # noqa: BLE001 - raised in the caller's thread by check() or result()
            self._error = err
        finally:
            self._done.set()

    def check(self) -> None:
        """Raise the opening's error, if it has failed; return at once otherwise."""
        if self._error is not None:
            raise self._error

    def result(self) -> OpenedJob:
        """Wait for the opening (in short waits, so Ctrl-C still reaches the caller) and return it, or raise its error."""
        while not self._done.wait(0.1):
            pass
        self.check()
        assert self._opened is not None
        return self._opened


@contextmanager
def job_run(run_name: str, steps: JobSteps | None = None, description: str = "", run_id: str | None = None) -> Iterator[ActiveRun]:
    """The job's parent run. On Ctrl-C its runs are marked KILLED and ``JobInterrupted`` is raised.

    MLflow's ``with start_run()`` would record an interrupted job as FAILED,
    which reads as a fault in the job rather than a person stopping it.
    ``steps`` names the phase the job was in. ``run_id``: a parent run already
    created (by :class:`JobOpening`), made this thread's active run.
    """
    started = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name=run_name, description=description or None)
    with started as run:
        run_id = run.info.run_id
        try:
            yield run
        except KeyboardInterrupt:
            with deferred_interrupt(reraise=False):  # a second Ctrl-C must not leave the runs half-marked
                while (active := mlflow.active_run()) is not None and active.info.run_id != run_id:
                    mlflow.end_run(KILLED)  # a nested run caught between its creation and its `with`
                mark_killed(MlflowClient(), run.info.experiment_id, run_id)
                mlflow.end_run(KILLED)
            raise JobInterrupted(run_id, steps.current if steps else None) from None


def mark_killed(client: MlflowClient, experiment_id: str, run_id: str) -> list[str]:
    """Mark a job's parent run, its outcome runs and any run under them still open (or FAILED by the interrupt) KILLED.

    Outcome runs are complete only when the job is (the model is logged into
    them last), so they are KILLED even if their first part had finished;
    candidate runs that finished keep FINISHED. Returns the ids marked.
    """
    from mlflow.entities import ViewType

    marked = []
    level, depth = [run_id], 0
    while level:
        below = []
        for parent_id in level:
            below += client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", run_view_type=ViewType.ALL)
        for child in below:
            if depth == 0 or child.info.status != "FINISHED":
                client.set_terminated(child.info.run_id, KILLED)
                marked.append(child.info.run_id)
        level, depth = [child.info.run_id for child in below], depth + 1
    if client.get_run(run_id).info.status != KILLED:
        client.set_terminated(run_id, KILLED)
    return [run_id, *marked]


def champions_set_by(client: MlflowClient, registered_models: list[str], parent_run_id: str) -> dict[str, str]:
    """Registered model -> version, for each ``@champion`` that now points at a version of this job."""
    moved = {}
    for name in registered_models:
        current = current_champion(client, name)
        if current is not None and current.tags.get("parent_run_id") == parent_run_id:
            moved[name] = str(current.version)
    return moved


# Descriptions shown in the MLflow UI -------------------------------------------------------------
#
# Runs and experiments: the ``mlflow.note.content`` tag; registered models and versions: their
# ``description``. All Markdown. Metrics stay logged at full precision (MLflow has no per-metric
# display format and rounds only in some views), so the descriptions carry the headline figures
# rounded. The builders take plain values (the job summary's dict, the config as a dict).


def _num(value: Any, digits: int = 3) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if number != number else f"{number:.{digits}f}"


MISSING_POLICY = {"non_responder": "counted as non-responders", "exclude": "excluded"}


def _plural(count: Any, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _candidate_name(name: str) -> str:
    from core.candidates import candidate_label

    try:
        return candidate_label(name)
    except KeyError:
        return name.replace("_", " ")


def verdict_text(evidence: bool, tested: bool) -> str:
    if evidence:
        return "evidence of effect modification"
    return "no reliable evidence of effect modification" if tested else "effect modification not tested"


def _test_text(evidence: dict[str, Any]) -> str:
    """How the job's settings test heterogeneity, in a few words."""
    method = evidence.get("method")
    if method == "imputed_randomisation":
        return (
            f"the imputed randomisation test with the Bayesian Causal Forest as its statistic (at most {evidence.get('replicates')} "
            f"null trials; above {2 * int(evidence.get('max_patients', 0)):,} patients the held-out test)"
        )
    if method == "split_rate":
        return "the split-sample RATE test"
    return f"a whole-pipeline permutation test ({evidence.get('permutations')} permutations)"


def job_note(data: str, n_rows: int, digest: str, spec: str, outcomes: list[str], settings: dict[str, Any]) -> str:
    """What a training job trains, on which data and how (the parent run's description)."""
    cv, evidence = settings.get("cv", {}), settings.get("evidence", {})
    candidates = ", ".join(_candidate_name(c) for c in settings.get("candidates", {}).get("enabled", []))
    return (
        f"**Training job** on `{Path(data).name}` ({n_rows} patients, SHA-256 `{digest[:12]}`), dataset spec `{spec}`.\n\n"
        f"Per outcome ({', '.join(outcomes)}): candidates {candidates} compared by nested cross-validation "
        f"({cv.get('folds')} folds x {_plural(cv.get('repeats'), 'repeat')}), heterogeneity tested by {_test_text(evidence)}, "
        f"Holm across outcomes, alpha {evidence.get('alpha')}; the champion is "
        "refitted on all data, registered and promoted only if it passes validation."
    )


def outcome_note(outcome: str, rule: str, n_patients: int, n_responders: int, n_missing: int, missing_policy: str) -> str:
    """What an outcome run evaluates and on which patients (its description while the job runs)."""
    return (
        f"**Outcome {outcome}**: responder = {rule}; {n_patients} patients, {n_responders} responders, "
        f"{n_missing} with missing follow-up ({MISSING_POLICY.get(missing_policy, missing_policy)})."
    )


def outcome_verdict_note(summary: dict[str, Any], verdict: str) -> str:
    """The outcome's verdict, champion and registry outcome, from one entry of the job summary."""
    m = summary.get("metrics", {})
    registry = f"registered `{summary['registered_model']}` version {summary['version']}: " + (
        "promoted to `@champion`."
        if summary.get("promoted")
        else f"**not promoted** ({'; '.join(summary.get('gate') or [])}); `@champion` is version {summary.get('champion_version')}."
    )
    effect = summary.get("average_effect") or {}
    labels = summary.get("labels") or {}
    test = summary.get("heterogeneity_test", "permutation")
    runs = f", {summary.get('permutations')} permutations" if test == "permutation" else ""
    average = (
        f"Average effect (responders, treated minus control): {_pp(effect.get('risk_difference'))} "
        f"(95% interval {_pp(effect.get('ci_low'))} to {_pp(effect.get('ci_high'))}, p = {_num(effect.get('p_value'))}; "
        f"Holm-adjusted p = {_num(effect.get('p_adjusted'))}, {'established' if effect.get('established') else 'not established'}). "
        if effect
        else ""
    )
    label_text = (
        f"Labels: one for every patient ({labels.get('population_label')})."
        if labels.get("mode") == "population"
        else "Labels: per patient, from the point estimate (subgroup evidence)." if labels else ""
    )
    return (
        f"**Verdict: {verdict}** ({test} test p = {_num(summary.get('p_value'))}, Holm-adjusted p = "
        f"{_num(summary.get('p_adjusted'))}{runs}).\n\n"
        + (f"{average}{label_text}\n\n" if average or label_text else "")
        + f"Champion candidate: **{summary.get('champion_label') or _candidate_name(summary['champion'])}** ({summary.get('reason')}). "
        f"Out of fold: AUC treated arm {_num(m.get('auc_treated'))}, control arm {_num(m.get('auc_control'))}; Brier "
        f"{_num(m.get('brier_mean'))} (no-information {_num(m.get('brier_null_mean'))}); c-for-benefit {_num(m.get('c_for_benefit'))}; "
        f"{describe_benefit_calibration(m)}.\n\n"
        + registry
    )


def _pp(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):+.1f} pp"


def candidate_note(candidate: str, outcome: str, metrics: dict[str, float], champion: str | None = None) -> str:
    """A candidate run's description: its out-of-fold performance and whether it became the champion."""
    times = metrics.get("times_selected")
    text = (
        f"**Candidate {_candidate_name(candidate)}** for {outcome}, evaluated by nested cross-validation (out of fold): "
        f"AUC treated arm {_num(metrics.get('auc_treated'))}, control arm {_num(metrics.get('auc_control'))}; Brier "
        f"{_num(metrics.get('brier_mean'))} (no-information {_num(metrics.get('brier_null_mean'))}); calibration slope "
        f"treated arm {_num(metrics.get('calibration_slope_treated'), 2)}, control arm {_num(metrics.get('calibration_slope_control'), 2)}; "
        f"AUTOC {_num(metrics.get('autoc'))}; c-for-benefit {_num(metrics.get('c_for_benefit'))}"
        + (f"; chosen by the inner loop in {int(times)} outer folds." if times is not None else ".")
    )
    if champion is not None:
        text += (
            f"\n\n**Champion** for {outcome} in this job."
            if champion == candidate
            else f"\n\nNot the champion for {outcome} ({_candidate_name(champion)} is)."
        )
    return text


def version_note(summary: dict[str, Any], data: str, digest: str, parent_run_id: str, verdict: str) -> str:
    """A model version's description: what was trained, on which data, the verdict and the gate.

    Plain text: the registry's version table shows it raw.
    """
    gate = (
        "Passed validation; promoted to @champion."
        if summary.get("promoted")
        else f"Not promoted: {'; '.join(summary.get('gate') or ['see the gate tag'])}."
    )
    metrics = summary.get("metrics", {})
    return (
        f"{summary.get('champion_label') or _candidate_name(summary['champion'])} for {summary['outcome']} "
        f"(responder = {summary.get('responder_rule')}), trained on {Path(data).name} "
        f"({summary.get('n_patients')} patients, SHA-256 {digest[:12]}) by training run {parent_run_id}. "
        f"Verdict: {verdict} (Holm-adjusted p = {_num(summary.get('p_adjusted'))}). "
        f"Out-of-fold Brier {_num(metrics.get('brier_mean'))} (no-information {_num(metrics.get('brier_null_mean'))}). {gate}"
    )


def registered_model_note(
    outcome: str, spec: str, rule: str | None, champion: str | None, champion_summary: str, event: str | None = None
) -> str:
    """A registered model's description: what its versions predict and which one is served (an event to prevent as its risk)."""
    what = (
        f"the risk of {event} (an event to prevent; the model's responder = {rule}) on the active arm and on control, "
        "the absolute risk reduction (the benefit) with an interval, the number needed to treat where it is defined"
        if event
        else f"the probability of a clinically meaningful response (responder = {rule}) on the active arm and on control, "
        "their difference (the benefit) with an interval"
    )
    return (
        f"Responder model for **{outcome}** (dataset spec `{spec}`): per patient, {what}, "
        f"and a label. Trained by `responders train`; the `@champion` alias is the version the API serves"
        + (f": currently version {champion} ({champion_summary})." if champion else "; no version has passed validation yet.")
    )


def ui_link(tracking_uri: str, experiment_id: str) -> str:
    """Where to read a job in the MLflow UI.

    MLflow 3.17's UI picks its GenAI or "Model training" view from a sidebar
    toggle remembered by the browser (default GenAI, which opens on Traces), not
    from the experiment's kind tag; ``workflowType=machine_learning`` in the
    link selects the training view and the Runs table.
    """
    page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}"
    return f"{mlflow_command()} ui --backend-store-uri {tracking_uri} (or: make mlflow), then open http://127.0.0.1:5000/{page}"


def mlflow_command() -> str:
    """The ``mlflow`` program of this environment as an absolute path: it works without an activated venv, from any directory."""
    return str(Path(sys.executable).with_name("mlflow"))


def experiment_note(spec: str, outcomes: list[str], registered_models: list[str]) -> str:
    return (
        f"Responder-subgroup models for the dataset spec `{spec}` (outcomes: {', '.join(outcomes)}). One parent run per "
        "training job (data, spec, config, cohort report), under it a run per outcome (evaluation, evidence, model) and "
        f"under that a run per candidate. Registered models: {', '.join(f'`{n}`' for n in registered_models)}."
    )


def describe_job(
    client: MlflowClient, experiment_id: str, spec: str, data: str, digest: str, parent_run_id: str, outcomes: dict[str, dict[str, Any]]
) -> None:
    """Write a job's descriptions once its champions are decided: experiment, runs, registered models, versions.

    ``outcomes`` maps each outcome to its summary (``OutcomeResult.summary()``);
    the verdict text is read back from each outcome run's ``verdict`` tag (what
    the job recorded).
    """
    names = [s["registered_model"] for s in outcomes.values()]
    client.set_experiment_tag(experiment_id, NOTE, experiment_note(spec, list(outcomes), names))
    lines = []
    for outcome, summary in outcomes.items():
        run = client.get_run(summary["run_id"])
        verdict = run.data.tags.get("verdict") or verdict_text(summary.get("evidence", False), summary.get("p_value") is not None)
        intro = run.data.tags.get(NOTE, "").split("\n\n**Verdict")[0]
        client.set_tag(summary["run_id"], NOTE, f"{intro}\n\n{outcome_verdict_note(summary, verdict)}".strip())
        for child in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{summary['run_id']}'"):
            candidate = child.data.tags.get("candidate")
            if candidate:
                client.set_tag(child.info.run_id, NOTE, candidate_note(candidate, outcome, child.data.metrics, summary["champion"]))
        client.update_model_version(
            summary["registered_model"], summary["version"], description=version_note(summary, data, digest, parent_run_id, verdict)
        )
        label = summary.get("champion_label") or _candidate_name(summary["champion"])
        served = (
            f"{label}, {verdict}, trained on `{Path(data).name}` by run `{parent_run_id}`"
            if summary.get("promoted")
            else f"from an earlier job; this job's version {summary['version']} was not promoted"
        )
        client.update_registered_model(
            summary["registered_model"],
            description=registered_model_note(
                outcome, spec, summary.get("responder_rule"), summary.get("champion_version"), served, summary.get("event_to_prevent")
            ),
        )
        state = "promoted to `@champion`" if summary.get("promoted") else "not promoted"
        lines.append(
            f"- **{outcome}**: {verdict} (Holm-adjusted p = {_num(summary.get('p_adjusted'))}); champion candidate "
            f"{label}; `{summary['registered_model']}` "
            f"version {summary['version']} {state}."
        )
    intro = client.get_run(parent_run_id).data.tags.get(NOTE, "").split("\n\n**Verdicts**")[0]
    client.set_tag(parent_run_id, NOTE, f"{intro}\n\n**Verdicts**\n\n" + "\n".join(lines))
