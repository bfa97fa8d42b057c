"""Shared helpers for tests that train: tiny, seeded settings that keep CI fast."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from core.config import TrainConfig, smoke_config, smoke_settings

# The smoke settings (core/configs/smoke.yaml), shared with the benchmarks' quick runs and the examples.
FAST = smoke_settings()


# A second, differently named trial layout: other ids, arm labels, a higher-is-better outcome
# with an absolute responder rule, a categorical covariate and labs under other names and units.
OTHER_SPEC = """
name: other-trial
id_column: subject
arm: {column: group, treated: active, control: sham, treated_fraction: 0.5}
outcomes:
  wellbeing:
    label: Well-being (0-100, higher is better)
    baseline: wb_0
    followup: wb_26
    scale: [0, 100]
    better: higher
    responder: {rule: absolute, threshold: 10}
covariates:
  years: {kind: numeric, range: [18, 90], required: true}
  site: {kind: categorical, levels: [north, south]}
labs:
  crp: {column: hs_crp, unit: mg/dL}
  il6: {column: interleukin_6}
  ana: {column: ana_titre}
"""


def fast_config(**overrides) -> TrainConfig:
    return smoke_config(**overrides)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@contextmanager
def running(command: list[str], url: str, env: dict | None = None, cwd: str | Path | None = None, timeout: float = 90.0):
    """Start a server process, wait until ``url`` answers, stop it afterwards (the test owns its lifetime)."""
    log = Path(cwd or ".") / f"server-{os.getpid()}-{time.monotonic_ns()}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=cwd)
        try:
            wait_http(url, timeout, process)
            yield process
        except BaseException:
            out.flush()
            sys.stderr.write(log.read_text()[-4000:])
            raise
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


_SERVING_STORE: dict = {}


def serving_store(tmp_path_factory) -> dict:
    """Champions trained once per test session on a simulated trial, in a fresh sqlite store.

    Shared by the serving test modules (training takes a while); callers must not
    change the store. Returns the tracking ``uri``, the directory ``tmp``, the
    trial ``frame`` and the training ``summary``.
    """
    if not _SERVING_STORE:
        from core.spec import load_spec
        from training.simulate import simulate
        from training.train import run_training

        tmp = tmp_path_factory.mktemp("serving-store")
        # A strong-subgroup trial large enough for the conditional answer (BCF, drivers of benefit): with the fast
        # settings and the control-arm prognosis statistic both outcomes reject (Holm p = 0.033); the tests read
        # each outcome's answer from the response rather than assume one.
        frame = simulate("strong", 400, 8)
        frame.to_csv(tmp / "trial.csv", index=False)
        uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
        summary = run_training(tmp / "trial.csv", load_spec(), fast_config(evidence={"replicates": 59}), tracking_uri=uri)
        _SERVING_STORE.update(uri=uri, tmp=tmp, frame=frame, summary=summary)
    return dict(_SERVING_STORE)


def port_is_free(port: int) -> bool:
    """Nothing listens on ``port``: a new server could bind it.

    With SO_REUSEADDR, as servers (uvicorn included) bind: a connection the
    server closed itself lingers in TIME_WAIT for a minute after the process is
    gone, and would make a plain bind fail although the port is free.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def rounded(value):
    """A JSON answer with floats rounded to 12 decimals (vectorised maths may differ in the last bit)."""
    if isinstance(value, float):
        return round(value, 12)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def score_rows(scorer, rows: list[dict], chunk: int = 2_000):
    """The reference ``responders predict`` is tested against (it scores column by column:
    :func:`serving.batch.score_file_to_table`): file rows validated and scored chunk by chunk through
    :meth:`serving.scoring.Scorer.predict`, the API's per-patient path; one response, rows in file order, a patient
    without an id named by its row of the file (``row-2001``)."""
    from core.progress import task_progress
    from serving import schemas as S

    id_column = scorer.spec.id_column
    results: list[S.PatientPrediction] = []
    with task_progress(len(rows), "scoring", unit="patient") as progress:
        for start in range(0, len(rows), chunk):
            block = rows[start : start + chunk]
            validated = scorer.validate_rows(block)
            patients = [clean if clean is not None else {id_column: block[i].get(id_column)} for i, (clean, _) in enumerate(validated)]
            prior = {i: problems for i, (_, problems) in enumerate(validated) if problems}
            answered = scorer.predict(patients, prior_errors=prior).results
            for i, (patient, result) in enumerate(zip(patients, answered, strict=True)):
                if not patient.get(id_column):  # predict numbers the rows of its own batch: here, of the file
                    result.patient_id = f"row-{start + i + 1}"
            results.extend(answered)
            progress.update(len(block))
    scored = sum(r.predictions is not None for r in results)
    return S.PredictResponse(
        results=results, n_scored=scored, n_failed=len(results) - scored, models=scorer.refs, simulated_training_data=scorer.simulated
    )
