"""The hardened clinic API (issue 14), against real processes where it matters.

- schemathesis with every check on against a real ``bentoml serve`` (started here
  on 127.0.0.1, plain BentoML command line, no ``--host``): zero failures;
- bounded requests on the real server: a 10 MB body is refused without growing it;
- unknown paths add no series to ``/metrics``; the server binds loopback by default;
- fail fast: no champion, or a truncated model file, ends the command with one
  line before the port is bound; a worker that cannot start stops the supervisor;
- a killed worker is logged; SIGTERM to ``responders serve`` leaves no server behind;
- censored labs follow the detection-limit rule; ``make serve`` / ``make bento`` exist.

In-process checks of the same behaviour (status codes, messages) are in test_serving.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest
from helpers import free_port, port_is_free, running, serving_store, wait_http

from core.spec import load_spec
from features.catalog import load_catalog
from features.labs import LabValueError, parse_lab_value
from serving.scoring import read_patients
from training.simulate import simulate

TOKEN = "hardening-token-not-a-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SERVICE = "serving.service:ResponderService"


# Censored labs: the detection-limit rule ----------------------------------------------------------------------
CATALOG = load_catalog()
CRP = CATALOG["crp"]


@pytest.mark.parametrize(
    ("raw", "unit", "value", "below"),
    [
        ("<0.3", None, 0.3 / math.sqrt(2), True),  # at the LOD
        ("<0.0001", None, 0.3 / math.sqrt(2), True),  # far below it: below the LOD, not extrapolated
        ("<=0.1", None, 0.3 / math.sqrt(2), True),
        ("<0.001", "mg/dL", 0.3 / math.sqrt(2), True),  # 0.01 mg/L after conversion
        ("0", None, 0.3 / math.sqrt(2), True),
        (0.0, None, 0.3 / math.sqrt(2), True),
        ("<5", None, 5 / math.sqrt(2), True),  # a reporting limit above the LOD keeps its own value
        (">0.3", None, 0.3, False),
        (">200", None, 200.0, False),
        ("2,5", None, 2.5, False),
    ],
)
def test_censored_values_never_fall_below_the_detection_limit(raw, unit, value, below):
    result = parse_lab_value(raw, CRP, unit)
    assert result.value == pytest.approx(value) and result.below_lod == below


@pytest.mark.parametrize("raw", ["<0", "<0.0", "<=0", "≤0", ">0", ">0.1", "<-1", "-0.5", True, False])
def test_censored_values_that_say_nothing_usable_are_refused(raw):
    with pytest.raises(LabValueError) as refused:
        parse_lab_value(raw, CRP)
    assert refused.value.analyte == "crp"


def test_no_quantitative_analyte_yields_a_value_below_its_detection_limit_substitute():
    for analyte in CATALOG.analytes.values():
        if analyte.kind != "quantitative" or analyte.lod is None:
            continue
        floor = analyte.lod / math.sqrt(2)
        for raw in ("<0.000001", f"<{analyte.lod:g}", f"<{analyte.lod / 7:g}", "0", 0, analyte.lod / 3, f"{analyte.lod / 2:g}"):
            result = parse_lab_value(raw, analyte)
            assert result.below_lod and result.value == pytest.approx(floor), (analyte.key, raw)


# The real server ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return serving_store(tmp_path_factory)


@pytest.fixture(scope="module")
def patients(store):
    path = store["tmp"] / "hardening-patients.csv"
    simulate("final", 4, 5).to_csv(path, index=False)
    return read_patients(path, load_spec())


def _env(store, **extra) -> dict:
    return {"RESPONDERS_API_TOKEN": TOKEN, "MLFLOW_TRACKING_URI": store["uri"], "RESPONDERS_MAX_BATCH": "50", **extra}


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    """Plain `bentoml serve serving.service:ResponderService --port P`, no --host: as an operator would type it."""
    cwd = tmp_path_factory.mktemp("hardening-server")
    port = free_port()
    command = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--port", str(port)]
    with running(command, f"http://127.0.0.1:{port}/readyz", env=_env(store), cwd=cwd, timeout=240) as process:
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "process": process, "log": next(cwd.glob("server-*.log"))}


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _tree_rss(pid: int) -> int:
    return sum(p.memory_info().rss for p in _tree(pid))


def _workers(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children() if "_bentoml_impl.worker.service" in p.cmdline()]


@pytest.mark.integration
def test_binds_loopback_unless_told_otherwise(server):
    listening = [c.laddr for c in psutil.Process(server["process"].pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert listening and {addr.ip for addr in listening} == {"127.0.0.1"}, listening


@pytest.mark.integration
def test_oversized_malformed_bodies_are_refused_without_growing_the_server(server, patients):
    pid = server["process"].pid
    before = _tree_rss(pid)
    ten_mb = b'{"patients":[' + b",".join([b"1"] * 5_000_000) + b"]}"
    four_hundred_kb = b'{"patients":[' + b",".join([b"1"] * 200_000) + b"]}"
    with httpx.Client(base_url=server["url"], timeout=120, headers={**AUTH, "content-type": "application/json"}) as http:
        declared = http.post("/predict", content=ten_mb)
        assert declared.status_code == 413 and "RESPONDERS_MAX_BODY_BYTES" in declared.json()["detail"]
        assert "1048576 bytes" in declared.json()["detail"]

        def chunked():
            for start in range(0, len(ten_mb), 1 << 20):
                yield ten_mb[start : start + (1 << 20)]

        streamed = http.post("/explain", content=chunked())
        assert streamed.status_code == 413
        batch = http.post("/predict", content=four_hundred_kb)
        assert batch.status_code == 413 and "200000 patients sent; the limit is 50" in batch.json()["detail"]
        assert len(batch.content) < 1000  # not a 422 listing 200,000 errors
        assert http.get("/readyz").status_code == 200
        assert http.post("/predict", json={"patients": patients[:2]}).status_code == 200
    grown = _tree_rss(pid) - before
    assert grown < 100 * 2**20, f"server grew by {grown / 2**20:.0f} MiB"


@pytest.mark.integration
def test_unknown_paths_create_no_metric_series(server):
    with httpx.Client(base_url=server["url"], timeout=30) as http:
        http.post("/predict", json={}, headers=AUTH)  # a known endpoint is measured
        before = [line for line in http.get("/metrics").text.splitlines() if line and not line.startswith("#")]
        for i in range(300):
            assert http.get(f"/x-{i}").status_code == 404
        assert http.post("/predict/../x", headers=AUTH).status_code == 404
        after = [line for line in http.get("/metrics").text.splitlines() if line and not line.startswith("#")]
    assert not [line for line in after if "/x-" in line]
    series = {line.rsplit(" ", 1)[0] for line in after}
    assert series == {line.rsplit(" ", 1)[0] for line in before}, series ^ {line.rsplit(" ", 1)[0] for line in before}
    assert any('endpoint="/predict"' in line for line in after)


@pytest.mark.integration
def test_index_page_and_non_json_bodies_on_the_real_server(server):
    with httpx.Client(base_url=server["url"], timeout=30) as http:
        index = http.get("/")
        assert index.status_code == 200 and "<script" not in index.text and "googletagmanager" not in index.text
        for path in ("/predict", "/explain", "/report", "/metadata"):
            response = http.post(path, content=b"--x--", headers={**AUTH, "content-type": "multipart/form-data"})
            assert response.status_code == 415, (path, response.text)


SCHEMATHESIS_CONFIG = """\
# Every check on; the expectations below are the published contract, not exceptions to it.
generation.max-examples = 20
# A batch over maxItems is refused with the documented 413 (RESPONDERS_MAX_BATCH), not 400/422.
checks.negative_data_rejection.expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]

# /explain takes the same patients as /predict (covered field by field there); SHAP per case is costly.
[[operations]]
include-path = "/explain"
phases.coverage.enabled = false

# A schema-valid patient whose lab text cannot be used (free text, implausible value) cannot have a
# report: /report answers the documented 422 where /predict returns per-patient errors.
[[operations]]
include-path = "/report"
phases.coverage.enabled = false
generation.max-examples = 8
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "422"]
"""


@pytest.mark.integration
def test_schemathesis_all_checks_against_the_real_server(server, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    report = tmp_path / "schemathesis.json"
    command = [
        str(BIN / "schemathesis"), "--config-file", str(config), "run", f"{server['url']}/docs.json",
        "--checks", "all", "--mode", "all", "--seed", "20241", "--workers", "1",
        "-H", f"Authorization: Bearer {TOKEN}", "--report", "json", "--report-json-path", str(report),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    summary = json.loads(report.read_text())
    assert summary["failures"] == [] and summary["errors"] == [], done.stdout[-6000:]
    assert done.returncode == 0, done.stdout[-6000:]
    assert summary["operations"]["tested"] == 9 and summary["test_cases"]["generated"] > 200  # GET /metadata is the 9th (issue 22)
    log = server["log"].read_text()
    assert "Traceback" not in log and "status=500" not in log


@pytest.mark.integration
def test_a_killed_worker_is_logged_and_replaced(server):
    """Last of the server tests: the worker is killed, the log says so, a replacement answers again."""
    [worker] = _workers(server["process"].pid)
    worker.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 120
    needle = f"worker process {worker.pid} died"
    while needle not in server["log"].read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert needle in server["log"].read_text()
    wait_http(f"{server['url']}/readyz", timeout=240, process=server["process"])
    assert "replacement worker process" in server["log"].read_text()
    assert httpx.post(f"{server['url']}/metadata", json={}, headers=AUTH, timeout=30).status_code == 200


# Fail fast ------------------------------------------------------------------------------------------------------
def _refused_start(command: list[str], env: dict, cwd: Path) -> tuple[int, list[str], str]:
    done = subprocess.run(command, env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return done.returncode, lines, done.stdout + done.stderr


@pytest.mark.integration
def test_no_champion_exits_with_one_line_before_binding(store, tmp_path):
    from training.tracking import setup_tracking

    port = free_port()
    empty = f"sqlite:///{tmp_path / 'empty' / 'mlflow.db'}"
    setup_tracking(empty)[1].search_registered_models()  # a store that exists and has no champion (a missing one: test_deployment)
    env = _env(store, MLFLOW_TRACKING_URI=empty)
    status, lines, output = _refused_start([str(BIN / "responders"), "serve", "--port", str(port)], env, tmp_path)
    assert status != 0
    assert lines[-1].startswith("ldn-responders cannot start: no 'champion' version of registered model 'fibromyalgia-ldn-pain'")
    assert "listening on" not in output and port_is_free(port)


@pytest.mark.integration
def test_truncated_model_file_exits_with_one_line_naming_model_version_and_file(store, tmp_path):
    from training.tracking import current_champion, setup_tracking

    _, client = setup_tracking(store["uri"])
    version = current_champion(client, "fibromyalgia-ldn-memory")
    location = client.get_model_version_download_uri("fibromyalgia-ldn-memory", version.version)
    artifact = Path(location.removeprefix("file://")) / "artifacts" / "responder.joblib"
    intact = artifact.read_bytes()
    port = free_port()
    try:
        artifact.write_bytes(intact[: len(intact) // 2])
        status, lines, output = _refused_start([sys.executable, "-m", "bentoml", "serve", SERVICE, "--port", str(port)], _env(store), tmp_path)
    finally:
        artifact.write_bytes(intact)  # the store is shared with the other serving tests
    assert status != 0
    line = lines[-1]
    assert line.startswith("ldn-responders cannot start: registered model 'fibromyalgia-ldn-memory'")
    assert f"version {version.version}" in line and str(artifact) in line
    assert "listening on" not in output and port_is_free(port)


def test_a_worker_that_cannot_start_stops_its_supervisor(tmp_path):
    """The fallback for failures after the start-up check: the arbiter stops with status 3 and the worker's line."""
    arbiter = tmp_path / "arbiter.py"
    arbiter.write_text(
        textwrap.dedent(
            """
            import signal, subprocess, sys, time
            from serving import supervision

            supervision.start_supervision(interval=0.1)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # as circus does: a SIGTERM stops the arbiter
            worker = "from serving import supervision; print('stopped:', supervision.stop_supervisor('cannot start: model m version 7'), flush=True)"
            subprocess.Popen([sys.executable, "-c", worker])
            time.sleep(120)  # until the worker's SIGTERM arrives
            """
        )
    )
    done = subprocess.run([sys.executable, str(arbiter)], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert "stopped: True" in done.stdout
    assert done.returncode == 3
    assert done.stderr.strip().splitlines()[-1] == "cannot start: model m version 7"
    # Outside a supervised server (tests, in-process apps) a failing worker just raises.
    from serving import supervision

    assert supervision.stop_supervisor("not supervised") is False


# responders serve and make ---------------------------------------------------------------------------------------
@pytest.mark.integration
def test_sigterm_to_responders_serve_leaves_no_server(store, tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(BIN / "responders"), "serve", "--port", str(port), "--spec", "fibromyalgia-ldn"],
            env={**os.environ, **_env(store)}, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", timeout=240, process=process)
            # The command became the server (no wrapper process left to orphan it).
            assert "bentoml" in process_cmdline(process.pid) and "serve" in process_cmdline(process.pid)
            tree = _tree(process.pid)
            assert len(tree) >= 2
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    for member in tree:
        assert not member.is_running() or member.status() == psutil.STATUS_ZOMBIE, member
    assert port_is_free(port), log.read_text()[-3000:]
    assert "died" not in log.read_text()  # a shutdown is not a worker death


def process_cmdline(pid: int) -> str:
    return " ".join(psutil.Process(pid).cmdline())


def test_serve_environment_resolves_the_spec_and_refuses_bad_ones(tmp_path, monkeypatch):
    import typer

    from serving.cli import serve_command, serve_environment

    spec_file = tmp_path / "trial.yaml"
    spec_file.write_text((ROOT / "core" / "specs" / "fibromyalgia-ldn.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    env = serve_environment({"RESPONDERS_API_TOKEN": "t"}, spec="trial.yaml")
    assert env["RESPONDERS_SPEC"] == str(spec_file.resolve())
    assert serve_environment({"RESPONDERS_API_TOKEN": "t"}, spec="fibromyalgia-ldn")["RESPONDERS_SPEC"] == "fibromyalgia-ldn"
    with pytest.raises(typer.Exit) as bad:
        serve_environment({"RESPONDERS_API_TOKEN": "t"}, spec="no-such-spec")
    assert bad.value.exit_code == 2
    with pytest.raises(typer.Exit):
        serve_environment({}, spec=None)
    assert serve_environment({}, insecure_dev=True)["RESPONDERS_INSECURE_DEV"] == "1"
    assert serve_command(3001, "127.0.0.1")[-4:] == ["--host", "127.0.0.1", "--port", "3001"]


def test_make_serve_and_bento_have_recipes():
    serve = subprocess.run(["make", "-n", "serve", "PORT=4123", "SPEC=trial.yaml"], cwd=ROOT, capture_output=True, text=True)
    assert serve.returncode == 0 and "responders serve --port 4123 --spec trial.yaml" in serve.stdout
    default = subprocess.run(["make", "-n", "serve"], cwd=ROOT, capture_output=True, text=True)
    assert "responders serve --port 3000 --insecure-dev" in default.stdout and "--spec" not in default.stdout
    bento = subprocess.run(["make", "-n", "bento"], cwd=ROOT, capture_output=True, text=True)
    assert bento.returncode == 0 and "responders bento" in bento.stdout


def test_a_replacement_seen_in_the_same_poll_as_the_death_is_logged_as_one(tmp_path, monkeypatch, caplog):
    """The watch's race (CI, 2026-12-05): BentoML restarted the worker before the next poll, so the new pid and the
    missing old one were seen together, and the new one was taken for a first start (no 'replacement' line)."""
    import logging

    from serving import supervision

    class Child:
        def __init__(self, pid):
            self.pid = pid

        def create_time(self):
            return 0.0

    polls = iter([[Child(101)], [Child(102)]])  # poll 1: the worker; poll 2: it died and its replacement runs

    class Me:
        def children(self):
            try:
                return next(polls)
            except StopIteration:
                state.rename(tmp_path / "gone")  # ends the watch's loop
                return []

    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setattr(supervision.psutil, "Process", lambda: Me())
    monkeypatch.setattr(supervision, "_is_worker", lambda process: True)
    with caplog.at_level(logging.WARNING, logger="responders.supervision"):
        supervision.WorkerWatch(state, interval=0.0).run()
    text = caplog.text
    assert "worker process 101 died" in text and "replacement worker process 102 started" in text
    assert "replacement worker process 101" not in text
