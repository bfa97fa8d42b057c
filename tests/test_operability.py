"""Operability: one-line config and spec errors, progress without a terminal, Ctrl-C, and a readable MLflow UI."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml
from helpers import FAST, fast_config
from mlflow import MlflowClient
from typer.testing import CliRunner

from core.config import load_config
from core.errors import ConfigError
from core.progress import JobInterrupted, JobSteps, on_terminal
from core.spec import load_spec
from responders.cli import app
from training.cli import interruption_message
from training.executor import LocalExecutor
from training.simulate import simulate
from training.tracking import CHAMPION, EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, NOTE, ui_link
from training.train import run_training

ROOT = Path(__file__).resolve().parents[1]


def _problems(call) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        call()
    return caught.value.problems


# How a finished command ends -----------------------------------------------------------------------

_ENDING = """
import atexit, sys, threading, time
from core import cli

cli.end_after_exit_handlers()  # as the console script does before anything else


class FreedAtTeardown:
    def __del__(self):
        sys.stdout.write("teardown\\n")
        sys.stdout.flush()


kept = FreedAtTeardown()  # a module global: freed only by the interpreter's teardown
joined = []
threading.Thread(target=lambda: (time.sleep(0.3), joined.append("thread joined"))).start()  # not a daemon
atexit.register(lambda: print("library exit handler ran after", joined, flush=True))  # as MLflow registers its flush
if sys.argv[1] == "armed":  # the command returned normally
    cli.skip_teardown()
print("command done", flush=True)
"""


@pytest.mark.parametrize("how", ["armed", "not armed"])
def test_a_finished_command_ends_after_every_exit_handler_without_the_teardown(how):
    """`responders train` arms core.cli.skip_teardown as its last act: the libraries' exit handlers (MLflow's
    flush) still run, after the threads were joined, and only freeing the modules one by one is skipped."""
    done = subprocess.run([sys.executable, "-c", _ENDING, how], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["command done", "library exit handler ran after ['thread joined']"], done.stdout
    assert ("teardown" in lines) is (how != "armed"), done.stdout  # unarmed (a test's runner, a failed command): as usual


# Config and spec errors ----------------------------------------------------------------------------


def test_unknown_config_keys_are_named_with_the_nearest_known_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seeed: 3\ncv:\n  fold: 5\ncandidates:\n  t_learner:\n    lightgbm:\n      n_estimator: 10\nzzz: 1\n")
    problems = _problems(lambda: load_config(path))
    assert sorted(problems) == sorted(
        [
            "unknown key seeed (did you mean seed?)",
            "unknown key cv.fold (did you mean cv.folds?)",
            "unknown key candidates.t_learner.lightgbm.n_estimator (did you mean candidates.t_learner.lightgbm.n_estimators?)",
            "unknown key zzz (known keys: candidates, cv, evidence, executor, gate, intervals, labels, "
            "missing_followup, responder_rules, seed, selection)",
        ]
    )
    # A key under a free-form mapping (per-outcome responder rules) is checked against the rule's fields.
    path.write_text("responder_rules:\n  pain: {rul: absolute}\n")
    assert _problems(lambda: load_config(path)) == ["unknown key responder_rules.pain.rul (did you mean responder_rules.pain.rule?)"]


def test_wrong_types_and_values_are_one_line_each(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("cv: {folds: five}\nevidence: {statistic: beyond_risks}\ncandidates: {enabled: [risk_model, dr_lerner]}\n")
    error = pytest.raises(ConfigError, load_config, path).value
    assert len(error.problems) == 3
    lines = error.lines()
    assert all(line.startswith(f"config {path}: ") for line in lines)
    text = "\n".join(lines)
    assert "cv.folds: Input should be a valid integer" in text and "(got 'five')" in text
    assert "evidence.statistic: Input should be 'beyond_risk' or 'rate' (got 'beyond_risks'; did you mean 'beyond_risk'?)" in text
    assert "candidates.enabled[1]:" in text and "did you mean 'dr_learner'?" in text
    path.write_text("cv: [1, 2\n")
    [problem] = _problems(lambda: load_config(path))
    assert problem.startswith("line 2, column 1: not valid YAML")
    path.write_text("- a list\n")
    assert _problems(lambda: load_config(path)) == ["must be a mapping of keys to values, not a list"]


def test_spec_errors_name_keys_columns_and_labs(tmp_path):
    text = load_spec().to_yaml()
    path = tmp_path / "spec.yaml"
    path.write_text(text.replace("id_column:", "id_colum:"))
    assert _problems(lambda: load_spec(path)) == ["unknown key id_colum (did you mean id_column?)"]
    # roles.age must name one of the spec's own covariates
    data = yaml.safe_load(text)
    data["roles"]["age"] = "agee"
    path.write_text(yaml.safe_dump(data))
    assert _problems(lambda: load_spec(path)) == ["roles.age names 'agee', which is not a covariate (did you mean 'age'?)"]
    data = yaml.safe_load(text)
    data["cognitive_dominance"]["memory"] = "memory_basline"
    path.write_text(yaml.safe_dump(data))
    [problem] = _problems(lambda: load_spec(path))
    assert "'memory_basline'" in problem and problem.endswith("(did you mean 'memory_baseline'?)")
    data = yaml.safe_load(text)
    data["labs"]["cpr"] = data["labs"].pop("crp")
    path.write_text(yaml.safe_dump(data))
    [problem] = _problems(lambda: load_spec(path))
    assert problem.startswith("labs.cpr: not in the lab catalog (did you mean labs.crp?); declare it in the spec under analytes.cpr")
    data = yaml.safe_load(text)
    data["labs"]["crp"]["unit"] = "mmol/L"
    path.write_text(yaml.safe_dump(data))
    [problem] = _problems(lambda: load_spec(path))
    assert problem.startswith("labs.crp.unit: unknown unit 'mmol/L' (known: mg/L") and "did you mean" not in problem  # units are never guessed
    assert _problems(lambda: load_spec("fibromyalgia-ldm")) == ["no such file, and no packaged spec of that name (did you mean fibromyalgia-ldn?)"]


def test_cli_prints_config_and_spec_problems_one_per_line_and_exits_2(tmp_path):
    data = tmp_path / "trial.csv"
    simulate("final", 20, 1).to_csv(data, index=False)
    config = tmp_path / "bad.yaml"
    config.write_text("cv:\n  fold: 5\n  repeats: many\n")
    result = CliRunner().invoke(app, ["train", str(data), "--config", str(config), "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}"])
    assert result.exit_code == 2
    assert sorted(result.stderr.splitlines()) == [
        f"config {config}: cv.repeats: Input should be a valid integer, unable to parse string as an integer (got 'many')",
        f"config {config}: unknown key cv.fold (did you mean cv.folds?)",
    ]
    assert "Traceback" not in result.output and not (tmp_path / "x.db").exists()
    result = CliRunner().invoke(app, ["validate", str(data), "--spec", "fibromyalgia-ldm"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "spec fibromyalgia-ldm: no such file, and no packaged spec of that name (did you mean fibromyalgia-ldn?)"


# Progress ---------------------------------------------------------------------------------------


def _square(x: int) -> int:
    return x * x


def test_without_a_terminal_loops_log_progress_lines_with_eta(caplog):
    caplog.set_level(logging.INFO, logger="responders.progress")
    assert LocalExecutor(workers=1).map(_square, list(range(20)), desc="demo loop") == [x * x for x in range(20)]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("demo loop:")]
    # every 10% (2 of 20 tasks), rate-limited: no line per task
    assert [re.match(r"demo loop: (\d+)/20 tasks", line).group(1) for line in lines] == [str(k) for k in range(2, 21, 2)]
    assert "(10%)" in lines[0] and "ETA" in lines[0] and "elapsed" in lines[-1] and "ETA" not in lines[-1]
    steps = JobSteps(3)
    steps.start("pain: nested cross-validation")
    steps.start("pain: permutation test")
    assert steps.current == "step 2/3: pain: permutation test"
    assert "step 1/3: pain: nested cross-validation" in caplog.messages


def test_bars_only_on_a_terminal_with_a_width():
    leader, follower = pty.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 0, 0, 0))
            assert tty.isatty() and not on_terminal(tty)  # width 0: tqdm would draw nothing
            fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
            assert on_terminal(tty)
    finally:
        os.close(leader)
        os.close(follower)
    with open(os.devnull, "w") as file:
        assert not on_terminal(file)


def test_on_a_real_terminal_loops_draw_a_bar_instead_of_log_lines():
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    script = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from training.executor import LocalExecutor\n"
        "LocalExecutor(workers=1).map(abs, list(range(50)), desc='demo loop')\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdin=follower, stdout=follower, stderr=follower, cwd=ROOT)
    os.close(follower)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        process.wait(timeout=60)
        os.close(leader)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    assert re.search(r"demo loop: +\d+%\|.*\| \d+/50 tasks \[", text), text  # tqdm's bar with its unit (cleared at the end: leave=False)
    assert "tasks (" not in text  # no log lines on a terminal


# A tracked job: interrupted, and described for the MLflow UI -------------------------------------------


def _uri(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory):
    """A tiny job run to the end: it leaves a champion per outcome and the descriptions."""
    tmp = tmp_path_factory.mktemp("operability")
    data = tmp / "trial.csv"
    simulate("final", 99, 61).to_csv(data, index=False)
    summary = run_training(data, load_spec(), fast_config(evidence={"replicates": 9}), tracking_uri=_uri(tmp))
    return tmp, data, summary


@pytest.mark.slow
def test_the_mlflow_ui_gets_a_training_experiment_and_descriptions(finished_job):
    tmp, data, summary = finished_job
    client = MlflowClient(_uri(tmp), registry_uri=_uri(tmp))
    experiment = client.get_experiment(summary.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert "fibromyalgia-ldn" in experiment.tags[NOTE]
    parent = client.get_run(summary.parent_run_id).data.tags[NOTE]
    assert "trial.csv" in parent and "99 patients" in parent and summary.dataset_digest[:12] in parent
    for outcome, result in summary.outcomes.items():
        verdict = client.get_run(result.run_id).data.tags["verdict"]
        assert f"**{outcome}**: {verdict}" in parent
        note = client.get_run(result.run_id).data.tags[NOTE]
        assert note.startswith(f"**Outcome {outcome}**") and f"**Verdict: {verdict}**" in note
        assert f"Holm-adjusted p = {result.p_adjusted:.3f}" in note
        candidates = client.search_runs([summary.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'")
        assert len(candidates) == len(summary.outcomes[outcome].cv.selections)
        for run in candidates:
            text = run.data.tags[NOTE]
            assert text.startswith("**Candidate ") and f" for {outcome}" in text
            # rounded for reading; the logged metric keeps full precision
            assert f"AUC treated arm {run.data.metrics['auc_treated']:.3f}" in text
            assert ("**Champion**" in text) == (run.data.tags["candidate"] == result.champion)
        model = client.get_registered_model(result.registered_model)
        assert f"**{outcome}**" in model.description and f"currently version {result.version}" in model.description
        version = client.get_model_version(result.registered_model, result.version)
        assert verdict in version.description and "trial.csv" in version.description
        assert ("promoted to @champion" in version.description) == result.promoted
        assert not version.description.startswith("*")  # the registry's version table shows it raw
    # MLflow 3.17's UI picks its view from a browser-side toggle, not from the kind tag: the link selects it.
    assert ui_link("http://mlflow.example:5000/", "7") == "http://mlflow.example:5000/#/experiments/7/runs?workflowType=machine_learning"
    # The printed command works without an activated venv: the environment's own mlflow, by path (issue 22).
    command = ui_link(_uri(tmp), "7").split(" ui --backend-store-uri")[0]
    assert Path(command).name == "mlflow" and Path(command).is_file() and (Path(command).is_absolute() or "/" in command)
    assert ui_link(_uri(tmp), "7").startswith(f"{command} ui --backend-store-uri {_uri(tmp)} (or: make mlflow), then open http://127.0.0.1:5000/#/")


def _wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise AssertionError(f"job ended ({process.returncode}) before {text!r}:\n{path.read_text()[-3000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"{text!r} not seen within {timeout:.0f} s")


def _restore_sigint() -> None:
    # A shell that started pytest in the background ignores SIGINT, and children inherit that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_after_ctrl_c_only_loky_managers_keyerror_is_not_printed():
    """loky's manager thread can race the cancelled calls after Ctrl-C (seen once in CI as a KeyError traceback under
    'Training interrupted'): that one error is dropped once SIGINT has arrived, every other thread error still prints."""
    script = """
import os, signal, threading, time
from training.executor import quiet_pool_race_on_interrupt

def fail(name, error):
    def run():
        raise error(name)
    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join()

quiet_pool_race_on_interrupt()
quiet_pool_race_on_interrupt()  # a second call keeps one handler
fail("ExecutorManagerThread", KeyError)  # before any interrupt: printed
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(10)  # the handler runs at once and interrupts the sleep
    raise SystemExit("no KeyboardInterrupt")
except KeyboardInterrupt:
    print("interrupted")
fail("ExecutorManagerThread", KeyError)  # after it: dropped
fail("ExecutorManagerThread", ValueError)  # another error: printed
fail("SomethingElse", KeyError)  # another thread: printed
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          preexec_fn=_restore_sigint)
    assert done.returncode == 0 and done.stdout.strip() == "interrupted", done.stderr
    assert done.stderr.count("Traceback") == 3
    assert done.stderr.count("KeyError: 'ExecutorManagerThread'") == 1
    assert "ValueError: ExecutorManagerThread" in done.stderr and "KeyError: 'SomethingElse'" in done.stderr


@pytest.mark.slow
def test_ctrl_c_during_training_marks_runs_killed_and_leaves_the_champions(finished_job):
    tmp, data, first = finished_job
    uri = _uri(tmp)
    client = MlflowClient(uri, registry_uri=uri)
    before = {r.registered_model: str(client.get_model_version_by_alias(r.registered_model, CHAMPION).version) for r in first.outcomes.values()}
    versions_before = len(client.search_model_versions("name LIKE 'fibromyalgia-ldn-%'"))

    # Long enough a heterogeneity test (no early stop) that the interrupt lands inside it.
    config = tmp / "slow.yaml"
    config.write_text(yaml.safe_dump({**FAST, "evidence": {**FAST["evidence"], "replicates": 2000, "sequential_h": 0}}))
    stderr = tmp / "interrupted.err"
    with open(stderr, "w") as err, open(tmp / "interrupted.out", "w") as out:
        # Its own process group, signalled as a whole: what Ctrl-C in a terminal does (workers included).
        process = subprocess.Popen(
            [sys.executable, "-m", "training.cli", "train", str(data), "--config", str(config), "--tracking-uri", uri,
             "--report-dir", str(tmp / "reports-interrupted")],
            stdout=out, stderr=err, cwd=ROOT, start_new_session=True, preexec_fn=_restore_sigint,
        )  # fmt: skip
        try:
            _wait_for(stderr, "step 2/8: pain: heterogeneity test", process)
            os.killpg(process.pid, signal.SIGINT)
            code = process.wait(timeout=300)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    log = stderr.read_text()
    assert code == 130, log[-3000:]
    assert "Traceback" not in log
    # Output to a file: progress came as log lines (the 3 outer folds of the tiny config), not bars.
    assert "pain: nested CV: 3/3 tasks (100%)" in log and "\r" not in log
    [line] = [x for x in log.splitlines() if x.startswith("Training interrupted")]
    match = re.fullmatch(
        r"Training interrupted at step 2/8: pain: heterogeneity test; MLflow run (\w+) and its outcome runs are marked KILLED; "
        r"the champions are unchanged \(no @champion alias was moved\)\.",
        line,
    )
    assert match, line
    run_id = match.group(1)
    assert client.get_run(run_id).info.status == "KILLED"
    # The job is fit, then track: during the fit only the parent run exists (outcome runs are made from the results).
    children = client.search_runs([first.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert children == []
    everything = client.search_runs([first.experiment_id])
    assert not [r for r in everything if r.info.status in ("RUNNING", "FAILED")]
    after = {name: str(client.get_model_version_by_alias(name, CHAMPION).version) for name in before}
    assert after == before
    assert len(client.search_model_versions("name LIKE 'fibromyalgia-ldn-%'")) == versions_before


@pytest.mark.slow
def test_interrupt_after_registration_keeps_champions_and_after_promotion_says_they_moved(finished_job, monkeypatch):
    tmp, data, first = finished_job
    uri = _uri(tmp)
    client = MlflowClient(uri, registry_uri=uri)
    spec = load_spec()
    names = [spec.registered_model_name(o) for o in spec.outcomes]
    before = {name: str(client.get_model_version_by_alias(name, CHAMPION).version) for name in names}
    config = fast_config(evidence={"permutations": 0, "replicates": 0})

    import training.train as job

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    # Between registration and promotion: new versions exist, no alias has moved.
    with monkeypatch.context() as patch:
        patch.setattr(job, "build_cohort_payload", interrupt)
        with pytest.raises(JobInterrupted) as caught:
            run_training(data, spec, config, tracking_uri=uri)
    err = caught.value
    assert err.phase == "step 6/8: cohort report: analysis and figures"
    assert client.get_run(err.run_id).info.status == "KILLED"
    outcome_runs = client.search_runs([first.experiment_id], f"tags.mlflow.parentRunId = '{err.run_id}'")
    assert len(outcome_runs) == 2 and all(r.info.status == "KILLED" for r in outcome_runs)
    assert {name: str(client.get_model_version_by_alias(name, CHAMPION).version) for name in names} == before
    registered = {v.run_id for name in names for v in client.search_model_versions(f"name = '{name}'")}
    assert {r.info.run_id for r in outcome_runs} <= registered  # registered, yet not champion
    assert interruption_message(err, spec, uri).endswith("the champions are unchanged (no @champion alias was moved).")

    # After promotion the line says which aliases moved to this job's versions.
    with monkeypatch.context() as patch:
        patch.setattr(job, "add_registry", interrupt)
        with pytest.raises(JobInterrupted) as caught:
            run_training(data, spec, config, tracking_uri=uri)
    err = caught.value
    assert err.phase == "step 8/8: cohort report: render and log"
    moved = {name: str(client.get_model_version_by_alias(name, CHAMPION).version) for name in names}
    message = interruption_message(err, spec, uri)
    changed = {name: v for name, v in moved.items() if v != before[name]}
    assert changed, "the fresh job should have promoted at least one outcome"
    for name, version in changed.items():
        assert f"{name}@champion -> version {version}" in message
        # the registry's descriptions were written with the promotion, not at the job's very end
        assert f"currently version {version} " in client.get_registered_model(name).description
    assert "after promotion" in message and "unchanged" not in message


# The job's MLflow run, opened beside the fit ---------------------------------------------------------------------


def test_a_fit_that_fails_is_recorded_in_the_run_opened_beside_it(tmp_path, monkeypatch):
    # The store, experiment and parent run open in a thread while the fit starts; a fit that fails is still
    # recorded in that run (FAILED, with what it logged first), as when the run was opened before the fit.
    import training.train as job

    data = tmp_path / "trial.csv"
    simulate("final", 60, 3).to_csv(data, index=False)
    uri = _uri(tmp_path)

    def broken(self, *args, **kwargs):
        raise RuntimeError("the fit broke")

    monkeypatch.setattr(job.ResponderEstimator, "fit", broken)
    with pytest.raises(RuntimeError, match="the fit broke"):
        run_training(data, load_spec(), fast_config(), tracking_uri=uri)
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name(load_spec().name).experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.params["n_rows"] == "60" and run.data.tags["job"] == "train"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["trial"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "data")} >= {"data/validation_report.json", "data/spec.yaml"}


def test_a_store_that_cannot_be_opened_stops_the_job_at_the_fits_first_phase(tmp_path, caplog):
    data = tmp_path / "trial.csv"
    simulate("final", 60, 3).to_csv(data, index=False)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder would be")
    with caplog.at_level(logging.INFO, logger="responders"), pytest.raises(OSError):
        run_training(data, load_spec(), fast_config(), tracking_uri=f"sqlite:///{blocker}/mlflow.db")
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    # The opening fails in milliseconds; the fit stops at its next phase, long before the heterogeneity test.
    assert len(steps) <= 1 and not any("heterogeneity" in s for s in steps), steps
