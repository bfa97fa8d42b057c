"""What a clinic deploys, tested as built (issue 23), and the last holes in the running service.

- The wheel, installed non-editable into a fresh virtual environment: a tiny trial
  trained and one request served from that install, outside the repository.
- The Bento built by ``responders bento``: served with ``bentoml serve <tag>`` by an
  environment that holds only the dependencies (the project comes from the Bento),
  from a temporary directory, answering the example patient as the service in
  process does; its generated Dockerfile copies the Bento and starts the server.
- Deep nesting on the real server is an ordinary, counted 422 (the in-process
  checks of nesting, NaN/Infinity and unknown top-level fields are in test_serving.py).
- Start-up: an unreachable or missing registry ends the start with one line naming
  it, leaving no ``mlflow.db`` behind; the worker is warm before ``/readyz`` is 200;
  a SIGKILL of the server's process group leaves no worker holding the port.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from helpers import FAST, free_port, port_is_free, rounded, serving_store, wait_http

TOKEN = "deployment-token-not-a-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SERVICE = "serving.service:ResponderService"
EXAMPLE = json.loads((ROOT / "examples" / "patient.json").read_text())


def _clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without anything pointing back into the repository's sources or settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESPONDERS_", "PYTEST_", "VIRTUAL_ENV")) and k != "PYTHONPATH"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return {**env, "RESPONDERS_API_TOKEN": TOKEN, **extra}


class Server:
    """A server process in a session of its own (as an operator's shell would start it), stopped by the test."""

    def __init__(self, command: list[str], env: dict, cwd: Path, port: int):
        self.log = cwd / f"server-{port}.log"
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 240) -> None:
        try:
            wait_http(f"{self.url}/readyz", timeout, self.process)
        except BaseException:
            sys.stderr.write(self.log.read_text()[-4000:])
            raise

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return serving_store(tmp_path_factory)


# The warm-up -------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # the shared serving store: a whole training job (about 35 s)
def test_synthetic_warm_up_patients_carry_no_patient_data(store):
    from core.spec import load_spec
    from serving.readiness import synthetic_patients
    from serving.scoring import Scorer, resolve_champions

    spec = load_spec()
    scorer = Scorer(spec, resolve_champions(spec, store["uri"]))
    patients = synthetic_patients(scorer, 3)
    assert [p["patient_id"] for p in patients] == ["warm-up-1", "warm-up-2", "warm-up-3"]
    assert scorer.predict(patients).n_scored == 3  # the typical patient is valid and scored
    trial_ids = set(store["frame"]["patient_id"].astype(str))
    assert not trial_ids & {p["patient_id"] for p in patients}


# The registry at start-up ---------------------------------------------------------------------------------------
def test_check_registry_names_a_missing_store_without_creating_it(tmp_path, monkeypatch):
    from serving.service import ConfigurationError, check_registry

    missing = tmp_path / "nowhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    with pytest.raises(ConfigurationError, match=re.escape(f"MLFLOW_TRACKING_URI=sqlite:///{missing} names a store that does not exist")):
        check_registry(f"sqlite:///{missing}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    with pytest.raises(ConfigurationError, match=re.escape(f"unset or empty and the default store sqlite:///{missing} does not exist")):
        check_registry(f"sqlite:///{missing}")
    assert not (tmp_path / "nowhere").exists()


def test_check_registry_gives_up_on_a_closed_port_with_the_uri_and_no_credentials(monkeypatch):
    from serving.service import ConfigurationError, check_registry

    port = free_port()
    with pytest.raises(ConfigurationError) as refused:
        check_registry(f"http://someone:secret-word@127.0.0.1:{port}/prefix", timeout=1)
    message = str(refused.value)
    assert f"http://127.0.0.1:{port}/prefix is unreachable" in message and "secret-word" not in message


@pytest.mark.integration
@pytest.mark.parametrize("uri", ["closed port", "empty", "missing sqlite"])
def test_a_start_without_a_registry_fails_with_one_line_and_leaves_no_mlflow_db(tmp_path, uri):
    port = free_port()
    value = {
        "closed port": f"http://127.0.0.1:{free_port()}",
        "empty": "",
        "missing sqlite": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
    }[uri]
    env = _clean_env(MLFLOW_TRACKING_URI=value)
    done = subprocess.run(
        [str(BIN / "responders"), "serve", "--port", str(port)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0
    assert lines[-1].startswith("ldn-responders cannot start: "), done.stderr[-2000:]
    shown = value or f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert shown in lines[-1]
    assert not list(tmp_path.rglob("mlflow.db")), list(tmp_path.rglob("*"))
    assert port_is_free(port)


# The real server: warm before ready, nesting on /metrics, no worker outliving a SIGKILL ---------------------------
def _request_count(metrics: str, endpoint: str, status: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("bentoml_service_request_total{") and f'endpoint="{endpoint}"' in line and f'http_response_code="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.integration
def test_real_server_is_warm_when_ready_counts_deep_nesting_and_dies_with_its_process_group(store, tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", "127.0.0.1", "--port", str(port)]
    server = Server(command, _clean_env(MLFLOW_TRACKING_URI=store["uri"]), tmp_path, port)
    try:
        # Ready means warm: polled from the start, no /readyz answered 200 before the worker had logged its warm-up.
        answers = _poll_readyz(server)
        log_at_ready = server.log.read_text()
        assert answers[-1] == (200, True), answers[-5:]
        assert all(warm_logged for status, warm_logged in answers if status == 200), answers
        warm_line = re.search(r"warm: .*", log_at_ready)
        assert warm_line, log_at_ready[-3000:]
        assert re.search(r"/predict of 500 synthetic patients took ", warm_line[0]) and re.search(r"/explain of \d+ synthetic patients took ", warm_line[0]), warm_line[0]
        with httpx.Client(base_url=server.url, timeout=60) as http:
            metrics = http.get("/metrics").text
            # The warm-up covered a full batch of /predict (the default limit) and /explain.
            assert re.search(r'responders_warm_up_patients\{endpoint="/predict"[^}]*\} 500\.0', metrics), metrics[-3000:]
            assert re.search(r'responders_warm_up_patients\{endpoint="/explain"[^}]*\} [1-9]', metrics), metrics[-3000:]
            assert 'responders_warm_up_seconds{endpoint="/explain"' in metrics
            started = time.perf_counter()
            first = http.post("/explain", json={"patients": [EXAMPLE]}, headers=AUTH)
            first_explain = time.perf_counter() - started
            assert first.status_code == 200, first.text
            print(f"first /explain after ready: {first_explain * 1000:.0f} ms; warm-up: {log_at_ready.split('warm: ')[-1].splitlines()[0]}")
            # Deep nesting is an ordinary 422: answered, logged and counted.
            before = _request_count(http.get("/metrics").text, "/predict", "422")
            nested = http.post("/predict", content=b"[" * 100_000 + b"]" * 100_000, headers={**AUTH, "Content-Type": "application/json"})
            assert nested.status_code == 422 and nested.json()["detail"][0]["type"] == "json_too_deep"
            after = http.get("/metrics").text
            assert _request_count(after, "/predict", "422") == before + 1
            assert _request_count(after, "/predict", "500") == 0
        assert any("path=/predict" in line and "status=422" in line for line in server.log.read_text().splitlines())
        workers = [p for p in psutil.Process(server.process.pid).children(recursive=True)]
        assert workers and any("_bentoml_impl.worker.service" in " ".join(p.cmdline()) for p in workers)
        # SIGKILL to the server's process group: the workers live in sessions of their own, and must still go.
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (not port_is_free(port) or any(_alive(p) for p in workers)):
            time.sleep(0.2)
        assert port_is_free(port), "a worker still holds the port after the server's process group was killed"
        assert not [p.pid for p in workers if _alive(p)]
    finally:
        server.stop()


def _poll_readyz(server: Server, timeout: float = 240) -> list[tuple[int | str, bool]]:
    """``/readyz`` polled until it answers 200: each answer (status, or the error's name while the worker is not
    serving yet) with whether the worker's warm-up line was in the log when the answer came."""
    answers: list[tuple[int | str, bool]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited: {server.log.read_text()[-3000:]}")
        try:
            status: int | str = httpx.get(f"{server.url}/readyz", timeout=1).status_code
        except httpx.HTTPError as err:
            status = type(err).__name__
        answers.append((status, re.search(r"warm: /(predict|explain) of", server.log.read_text()) is not None))
        if status == 200:
            return answers
        time.sleep(0.05)
    raise TimeoutError(f"/readyz not 200 within {timeout:.0f} s: {answers[-5:]}")


def test_the_service_listens_beyond_loopback_only_inside_its_container(monkeypatch):
    from serving.service import _default_host

    monkeypatch.delenv("BENTOML_CONTAINERIZED", raising=False)
    assert _default_host() == "127.0.0.1"
    monkeypatch.setenv("BENTOML_CONTAINERIZED", "true")  # set by the Bento's generated Dockerfile
    assert _default_host() == "0.0.0.0"


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# What ships: the wheel and the Bento ----------------------------------------------------------------------------
def _uv_env() -> dict[str, str]:
    # The project's uv cache (filled by `make install`): a fresh environment is linked from it in seconds.
    return {**os.environ, "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR", str(ROOT / ".cache" / "uv")), "UV_NO_PROGRESS": "1"}


def _fresh_venv(path: Path, *requirements: str) -> Path:
    """A new virtual environment with ``requirements`` installed (non-editable) under the project's pins."""
    uv = BIN / "uv"
    subprocess.run([str(uv), "venv", "-q", "--python", sys.executable, str(path)], check=True, env=_uv_env(), timeout=120)
    python = path / "bin" / "python"
    subprocess.run(
        [str(uv), "pip", "install", "-q", "--python", str(python), "-c", str(ROOT / "requirements" / "lock.txt"), *requirements],
        check=True, env=_uv_env(), timeout=600,
    )  # fmt: skip
    return python


def _in_process_prediction(uri: str, patient: dict) -> dict:
    from core.spec import load_spec
    from serving.scoring import Scorer, resolve_champions

    spec = load_spec()
    scorer = Scorer(spec, resolve_champions(spec, uri))
    [clean] = [c for c, _ in scorer.validate_rows([patient])]
    return scorer.predict([clean]).model_dump(mode="json")


@pytest.mark.slow
@pytest.mark.integration
def test_wheel_installed_into_a_fresh_venv_trains_and_serves_outside_the_repository(tmp_path):
    dist = tmp_path / "dist"
    # The sdist first, then the wheel from the unpacked sdist (uv build's default): as a package index builds it,
    # and never from a stale build/lib of the working tree (which would ship modules and templates since deleted).
    subprocess.run([str(BIN / "uv"), "build", "-q", "--out-dir", str(dist), str(ROOT)], check=True, env=_uv_env(), timeout=300)
    [wheel] = dist.glob("ldn_responders-*.whl")
    python = _fresh_venv(tmp_path / "venv", str(wheel))
    venv_bin = python.parent
    work = tmp_path / "clinic"
    work.mkdir()
    env = _clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlruns' / 'mlflow.db'}", BENTOML_HOME=str(work / "bentoml"))
    where = subprocess.run([str(python), "-c", "import core.runtime.plan, serving; print(serving.__file__)"], env=env, cwd=work,
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.strip().startswith(str(tmp_path / "venv")), where.stdout  # the installed copy, not the sources
    # A tiny trial, trained by the installed command.
    config = work / "tiny.yaml"
    config.write_text(yaml.safe_dump({**FAST, "evidence": {**FAST["evidence"], "replicates": 9}}))
    responders = str(venv_bin / "responders")
    subprocess.run([responders, "simulate", "--scenario", "strong", "--n", "120", "--seed", "3", "--out", "trial.csv"],
                   env=env, cwd=work, check=True, capture_output=True, timeout=300)  # fmt: skip
    trained = subprocess.run([responders, "train", "trial.csv", "--config", str(config), "--report-dir", "reports"],
                             env=env, cwd=work, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    port = free_port()
    server = Server([responders, "serve", "--port", str(port)], env, work, port)
    try:
        server.wait_ready()
        response = httpx.post(f"{server.url}/predict", json={"patients": [EXAMPLE]}, headers=AUTH, timeout=60)
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    assert response.json()["n_scored"] == 1
    assert rounded(response.json()) == rounded(_in_process_prediction(env["MLFLOW_TRACKING_URI"], EXAMPLE))
    # The installed batch command: it reads the scoring plan training stored beside each model (no scikit-learn),
    # and its POST /predict JSON gives the server's answers.
    models = list(work.rglob("scoring.joblib"))
    assert len(models) >= 2, "training stores a scoring plan beside every logged model"
    (work / "patient.json").write_text(json.dumps({"patients": [EXAMPLE]}))
    batch = subprocess.run([responders, "predict", "patient.json", "--out", "scores.json"], env=env, cwd=work,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert batch.returncode == 0 and batch.stdout.strip() == "wrote scores.json", batch.stderr[-3000:]
    assert rounded(json.loads((work / "scores.json").read_text())) == rounded(response.json())


@pytest.mark.slow
@pytest.mark.integration
def test_bento_serves_from_outside_the_repository_and_its_dockerfile_starts_it(store, tmp_path):
    import bentoml

    from serving.bento import build_bento

    version = f"deploy-{os.getpid()}"
    bento = build_bento(tracking_uri=store["uri"], version=version)
    tag = f"ldn-responders:{version}"
    src = Path(bento.path) / "src"
    shipped = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    packaged = {p.relative_to(ROOT).as_posix() for package in ("features", "core", "serving") for p in (ROOT / package).rglob("*")
                if p.is_file() and p.suffix in {".py", ".yaml", ".j2"}}  # fmt: skip
    assert packaged <= shipped, sorted(packaged - shipped)
    assert not {p for p in shipped if p.startswith(("tests/", "benchmarks/", "mlruns/", ".venv/"))}
    # Serving stands on core and features only (the import contract): the Bento carries no training code.
    assert not {p for p in shipped if p.startswith("training/")}
    # The container recipe BentoML generated: the pinned requirements, the whole Bento (sources and models) copied,
    # and an entrypoint that runs `bentoml serve` on it; the container flag makes the service listen beyond loopback.
    dockerfile = (Path(bento.path) / "env" / "docker" / "Dockerfile").read_text()
    assert "pip install -r $BENTO_PATH/env/python/requirements.txt" in dockerfile
    assert re.search(r"^COPY --chown=\S+ \. \./$", dockerfile, re.M), dockerfile
    assert "ENV BENTOML_CONTAINERIZED=true" in dockerfile and "EXPOSE 3000" in dockerfile
    assert 'ENTRYPOINT [ "/home/bentoml/bento/env/docker/entrypoint.sh" ]' in dockerfile
    entrypoint = (Path(bento.path) / "env" / "docker" / "entrypoint.sh").read_text()
    assert 'bentoml serve "$@" "$BENTO_PATH"' in entrypoint
    requirements = (Path(bento.path) / "env" / "python" / "requirements.txt").read_text()
    assert "bentoml==" in requirements and "lightgbm==" in requirements
    assert (Path(bento.path) / "bento.yaml").is_file() and "serving.service:ResponderService" in (Path(bento.path) / "bento.yaml").read_text()
    assert {str(m.tag) for m in bentoml.bentos.get(tag).info.models} == {
        f"fibromyalgia-ldn-{o}:mlflow-v{store['summary'].outcomes[o].version}" for o in ("pain", "memory")
    }
    # Served by an environment that has the dependencies but not the project: the code comes from the Bento.
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    python = _fresh_venv(tmp_path / "runtime", *dependencies)
    probe = subprocess.run([str(python), "-c", "import serving"], capture_output=True, text=True, cwd=tmp_path, env=_clean_env())
    assert probe.returncode != 0  # the project is not installed there
    cwd = tmp_path / "anywhere"
    cwd.mkdir()
    env = _clean_env(BENTOML_HOME=os.environ["BENTOML_HOME"], MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'no-registry.db'}")
    port = free_port()
    server = Server([str(python), "-m", "bentoml", "serve", tag, "--host", "127.0.0.1", "--port", str(port)], env, cwd, port)
    try:
        server.wait_ready()
        response = httpx.post(f"{server.url}/predict", json={"patients": [EXAMPLE]}, headers=AUTH, timeout=60)
        report = httpx.post(f"{server.url}/report", json={"patient": EXAMPLE}, headers=AUTH, timeout=120)
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    assert rounded(response.json()) == rounded(_in_process_prediction(store["uri"], EXAMPLE))
    assert report.status_code == 200 and report.text.lstrip().lower().startswith("<!doctype html"), report.text[:300]
    assert not (tmp_path / "no-registry.db").exists()  # the Bento never asked the registry
