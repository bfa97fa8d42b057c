"""Section 2: serving load on 127.0.0.1, our BentoML service vs ``mlflow models serve`` on the same champions.

- Champions: a training job on ``simulate("final", 99, DEFAULT_SEED)`` (the default job's trial) into a fresh
  sqlite store (the default config, fewer permutations: the heterogeneity
  test does not change serving cost).
- Our service answers both outcomes (pain and memory) plus input warnings per
  request. ``mlflow models serve --env-manager local`` serves one registered
  model per process (one outcome per request), so the same answers take two
  MLflow servers (pain, memory) called one after the other; the pain server
  alone is measured too. Two ratios are reported, both from the measured rows:
  per request (ours / the pain server) and per outcome answer (patients x
  outcomes answered per second, ours / the two MLflow servers together). Same patients, same concurrency levels (1, 8, 32), single patient and a
  batch of 100, bounded in requests and time.
- The first calls after ready (issue 26): as soon as ``/readyz`` first says 200, one
  ``/explain`` of examples/patient.json and one 500-patient ``/predict``, each
  repeated once, with the time and the RSS step of the server's process tree of each call.
- ``/explain`` latency; the in-process floor (``Scorer.predict`` and
  ``Scorer.explain`` per patient, no HTTP) and the ratio of served latency to it.
- The compiled scoring plan per candidate type (issue 13): every type fitted
  with the served settings (100 refits, 200 posterior draws) on the same
  trial, one patient's predict and explain in process, and a cProfile summary
  of one ``/predict`` request's scoring.
- Batch scoring: ``responders predict`` on 10^5 simulated patients, CSV to JSON and, per
  ``BATCH_TABLES``, CSV or Parquet to Parquet or JSON lines (a child
  process, wall time and the rate).
- Adaptive batching: the same scorer behind a ``batchable=True`` BentoML API
  (``benchmarks/batched_service.py``), measured at the same levels, to decide
  whether it helps (the product's /predict is not batchable unless it does).
- Resident memory of each server's process tree before and after its load.
- Load test of our service (issue 14): 20,000 single-patient ``/predict``
  requests at concurrency 8 against one ``bentoml serve``, with the error
  count and the RSS of the server's process tree (arbiter and worker) before,
  at its peak during, and after the run: flat memory and zero errors are the
  expectation.

Servers run one at a time (started, measured, stopped), and the load
generator (asyncio + httpx) runs in this process on the same 2 cores, so the
absolute figures are pessimistic; compare the rows.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import QUIET_ENV, REPO, TreeMemory, mb, md_table, quiet_environment, tree_rss
from training.published import DEFAULT_SEED

TOKEN = "bench-token-not-a-secret"
TWO_WORKERS = "BentoML /predict, 2 workers"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass(frozen=True)
class Settings:
    levels: tuple[int, ...] = (1, 8, 32)
    single_requests: int = 300  # per level (bounded also by seconds)
    batch_requests: int = 40
    seconds: float = 30.0
    explain_requests: int = 100
    plain_requests: int = 2_000  # one at a time over one socket, without an HTTP client library (see _plain_client)
    floor_repeats: int = 50
    load_requests: int = 20_000
    load_concurrency: int = 8
    load_seconds: float = 3600.0  # a safety cap against a stuck server, not part of the design
    plan_repeats: int = 200
    batch_patients: int = 100_000
    candidate_config: dict = field(default_factory=dict)  # the served settings
    train_overrides: dict = field(default_factory=lambda: {"evidence": {"permutations": 19}})


FULL = Settings()
QUICK = Settings(
    levels=(1, 8),
    single_requests=20,
    batch_requests=4,
    seconds=10.0,
    explain_requests=10,
    plain_requests=30,
    floor_repeats=5,
    load_requests=200,
    load_seconds=120.0,
    plan_repeats=20,
    batch_patients=2_000,
    candidate_config={"intervals": {"bootstrap_models": 8}, "candidates": {"bcf": {"num_gfr": 3, "num_mcmc": 40}}},
    train_overrides={
        "cv": {"folds": 3, "repeats": 1, "inner_folds": 2},
        "evidence": {"permutations": 9, "rate_bootstrap": 50},
        "intervals": {"bootstrap_models": 8},
    },
)


@dataclass
class LoadResult:
    target: str
    payload: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds else float("nan")

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.latencies, q)) * 1000 if self.latencies else float("nan")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree_rss(pid: int) -> int:
    return tree_rss(pid)[0]


@contextmanager
def _server(command: list[str], ready_url: str, env: dict, log: Path, timeout: float = 180.0, poll: float = 0.5):
    with open(log, "w") as out:
        # mlflow models serve starts `uvicorn` by name: the venv's bin must be on PATH.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        process = subprocess.Popen(
            command, cwd=REPO, env={**os.environ, **QUIET_ENV, **env, "PATH": path}, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited ({process.returncode}); see {log}")
                try:
                    if httpx.get(ready_url, timeout=2).status_code < 500:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{ready_url} not ready after {timeout:.0f} s; see {log}")
                time.sleep(poll)
            yield process
        finally:
            process.terminate()  # our own child, by its id
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _load(calls, concurrency: int, total: int, seconds: float) -> tuple[int, int, float, list[float]]:
    """Run ``total`` calls with ``concurrency`` in flight (stopping early after ``seconds``)."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def worker():
            nonlocal issued, errors
            while issued < total and time.perf_counter() - started < seconds:
                issued += 1
                t0 = time.perf_counter()
                try:
                    ok = await calls(client)
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += 0 if ok else 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return issued, errors, time.perf_counter() - started, latencies


@dataclass
class LoadTest:
    """One long run at fixed concurrency against one server, with its process tree's memory."""

    result: LoadResult
    rss_before: int
    rss_peak: int
    rss_after: int
    processes: int


def _load_test(calls, pid: int, settings: Settings) -> LoadTest:
    """``settings.load_requests`` requests at ``settings.load_concurrency``; RSS of the server tree before, peak, after."""
    before, _ = tree_rss(pid)
    with TreeMemory(pid, interval=1.0) as memory:
        issued, errors, elapsed, latencies = asyncio.run(
            _load(calls, settings.load_concurrency, settings.load_requests, settings.load_seconds)
        )
    after, processes = tree_rss(pid)
    result = LoadResult("BentoML /predict (ours)", "1 patient", settings.load_concurrency, issued, errors, elapsed, latencies)
    return LoadTest(result, before, max(memory.peak, before, after), after, processes)


FIRST_BATCH = 500  # the default RESPONDERS_MAX_BATCH: the largest /predict a client may send


def _first_after_ready(url: str, pid: int, example: dict, batch: list[dict]) -> dict[str, dict[str, float]]:
    """Issue 26: right after ``/readyz`` first said 200, the first ``/explain`` (one patient), then the first
    ``len(batch)``-patient ``/predict``, each followed by a second identical call: seconds and the RSS step of the
    server's process tree (MiB) of each call."""
    out: dict[str, dict[str, float]] = {}
    with httpx.Client(base_url=url, timeout=120, headers=AUTH) as client:
        for name, path, body in (("explain", "/explain", {"patients": [example]}), ("predict", "/predict", {"patients": batch})):
            for call in ("first", "second"):
                before = _tree_rss(pid)
                started = time.perf_counter()
                response = client.post(path, json=body)
                seconds = time.perf_counter() - started
                if response.status_code != 200:
                    raise RuntimeError(f"{path} after ready answered {response.status_code}: {response.text[:300]}")
                out.setdefault(name, {})[call] = seconds
                out[name][f"{call}_rss_mib"] = (_tree_rss(pid) - before) / 2**20
    out["predict"]["patients"] = len(batch)
    return out


def _plain_client(url: str, path: str, body_of, count: int, target: str, warm: int = 20) -> LoadResult:
    """``count`` requests one at a time over one keep-alive HTTP/1.1 socket, each request's bytes built before its clock
    starts: the server's latency plus the loopback, without an HTTP client library's own time (httpx's asyncio client,
    which the other rows use, runs in this process on the same 2 cores and adds its own parsing and scheduling)."""
    import socket

    host, port = url.removeprefix("http://").rsplit(":", 1)
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=60) as sock, sock.makefile("rb") as reader:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(warm + count):
            body = json.dumps(body_of(i)).encode()
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            request = head.encode() + body
            t0 = time.perf_counter()
            sock.sendall(request)
            status = reader.readline()
            length, chunked = 0, False
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
                elif name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
            if chunked:
                while (size := int(reader.readline().split(b";")[0], 16)) > 0:
                    reader.read(size + 2)  # the chunk and its CRLF
                reader.readline()
            else:
                reader.read(length)
            elapsed = time.perf_counter() - t0
            if i >= warm:
                latencies.append(elapsed)
                errors += 0 if status.split(b" ", 2)[1:2] == [b"200"] else 1
    return LoadResult(target, "1 patient", 1, count, errors, time.perf_counter() - started, latencies)


def _quantiles(r: LoadResult) -> dict[str, float]:
    return {"requests": r.requests, "errors": r.errors, "p50": r.quantile(0.5), "p99": r.quantile(0.99)}


def _measure(target: str, payload: str, calls, concurrency: int, total: int, seconds: float) -> LoadResult:
    asyncio.run(_load(calls, min(concurrency, 2), min(4, total), 10))  # warm-up
    issued, errors, elapsed, latencies = asyncio.run(_load(calls, concurrency, total, seconds))
    return LoadResult(target, payload, concurrency, issued, errors, elapsed, latencies)


# A trial whose heterogeneity test rejects for both outcomes with the default config, so that BCF serves both (the default
# trial's test does not reject: arm-only champions); the serving tests' store uses the same design.
BCF_TRIAL = ("strong", 400, 8)


def _train(work: Path, settings: Settings, trial: tuple[str, int, int] = ("final", 99, DEFAULT_SEED)) -> str:
    from core.config import load_config
    from core.spec import load_spec
    from training.simulate import simulate
    from training.train import run_training

    work.mkdir(parents=True, exist_ok=True)
    data = work / "trial.csv"
    simulate(*trial).to_csv(data, index=False)
    uri = f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
    run_training(data, load_spec(), load_config(None, **settings.train_overrides), tracking_uri=uri)
    return uri


def _patients(work: Path, n: int = 100, seed: int = 77) -> list[dict]:
    from core.spec import load_spec
    from serving.scoring import read_patients
    from training.simulate import simulate

    path = work / ("patients.csv" if n == 100 else f"patients-{n}-{seed}.csv")
    simulate("final", n, seed).to_csv(path, index=False)
    return read_patients(path, load_spec())


def _scorer(uri: str):
    from core.spec import load_spec
    from serving.scoring import Scorer, resolve_champions

    spec = load_spec()
    return Scorer(spec, resolve_champions(spec, uri))


def _median_ms(call, repeats: int) -> float:
    call(0)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _floor(uri: str, patients: list[dict], repeats: int) -> dict[str, float]:
    """In-process time per call (ms, median) with the same champions: no HTTP, no JSON."""
    scorer = _scorer(uri)
    clean = [c for c, _ in scorer.validate_rows(patients)]
    return {
        name: _median_ms(call, repeats)
        for name, call in (
            ("predict, 1 patient", lambda i: scorer.predict([clean[i % len(clean)]])),
            ("predict, 100 patients", lambda i: scorer.predict(clean)),
            ("explain, 1 patient", lambda i: scorer.explain([clean[i % len(clean)]])),
        )
    }


def _profile(uri: str, patients: list[dict], repeats: int, route: str = "predict", top: int = 14) -> tuple[list[list], float]:
    """cProfile of the scorer answering one patient (what a request does after BentoML parsed it): rows per function."""
    import cProfile
    import pstats

    scorer = _scorer(uri)
    clean = [c for c, _ in scorer.validate_rows(patients)]
    call = scorer.predict if route == "predict" else scorer.explain
    call([clean[0]])
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for i in range(repeats):
        call([clean[i % len(clean)]])
    profiler.disable()
    per_call = (time.perf_counter() - started) / repeats * 1000
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, primitive, tottime, cumtime, callers)
    rows = []
    for (file, line, name), (calls, _, tottime, cumtime, _) in sorted(stats.items(), key=lambda kv: -kv[1][3]):
        where = f"{Path(file).name}:{line} {name}" if line else name
        if any(skip in file for skip in ("cProfile", "benchmarks/serving.py")) or name in ("<lambda>", "<genexpr>"):
            continue
        rows.append([where, f"{calls / repeats:g}", f"{cumtime / repeats * 1000:.3f}", f"{tottime / repeats * 1000:.3f}"])
        if len(rows) == top:
            break
    return rows, per_call


def _candidate_plans(settings: Settings, patients: list[dict]) -> list[list]:
    """Every candidate type as a served model on the same trial: plan time for one patient, in process (ms, median)."""
    from core.candidates import CANDIDATE_ORDER, BootstrapEnsemble, make_candidate
    from core.config import LabelRule, load_config
    from core.labelling import LabelPolicy
    from core.runtime.arms import limit_lightgbm_threads
    from core.runtime.artefact import Evidence, ResponderModel
    from core.runtime.plan import ScoringPlan
    from core.spec import load_spec
    from features.pipeline import build_feature_pipeline
    from training.simulate import simulate
    from training.train import outcome_data

    limit_lightgbm_threads()
    spec = load_spec()
    config = load_config(None, **settings.candidate_config).resolved(160)  # the job's auto settings at this size
    data, _ = outcome_data(simulate("strong", 160, 8), spec, "pain", config)
    pipeline = build_feature_pipeline(spec).fit(data.X)
    F = pipeline.transform(data.X)
    evidence = Evidence(True, True, 0.01, 0.02, 0.1, 0.05, 199, "evidence")
    rows = []
    for name in CANDIDATE_ORDER:
        candidate = make_candidate(name, config.candidates, data.treated_fraction, 7, final=True).fit(F, data.t, data.y)
        ensemble = None
        if candidate.needs_refits:
            ensemble = BootstrapEnsemble(candidate, config.intervals.bootstrap_models, 0.95, 7).fit(F, data.t, data.y)
        # A conditional answer: every patient gets an own label read from the interval (the most work per call).
        kind = candidate.interval_kind
        policy = LabelPolicy("conditional", LabelRule().model_dump(), "There is evidence.", "uncertain", "The trial population.", "Why.", 0.95, kind)
        model = ResponderModel(spec, "pain", pipeline, candidate, ensemble, policy, evidence)
        t0 = time.perf_counter()
        plan = ScoringPlan({"pain": model})
        compile_ms = (time.perf_counter() - t0) * 1000
        predict, explain, batch = _time_plan(plan, patients, settings.plan_repeats)
        size = len(ensemble.models_) if ensemble is not None else getattr(candidate, "num_mcmc", 0)  # the floor: a closed form
        rows.append([name, size, f"{compile_ms:.0f}", f"{predict:.2f}", f"{explain:.2f}", f"{batch:.1f}"])
    return rows


def _time_plan(plan, patients: list[dict], repeats: int) -> tuple[float, float, float]:
    """Median ms of parse + predict for one patient, parse + explain for one, parse + predict for all of ``patients``."""
    (outcome,) = plan.plans

    def one(i):
        return plan.parse([patients[i % len(patients)]])[0][outcome]

    scorer = plan.plans[outcome]
    return (
        _median_ms(lambda i: scorer.predict(one(i)), repeats),
        _median_ms(lambda i: scorer.explain(one(i)), max(5, repeats // 4)),
        _median_ms(lambda i: scorer.predict(plan.parse(patients)[0][outcome]), max(3, repeats // 20)),
    )


# The table outputs of `responders predict` measured (input, output): the issue's target is >= 50,000 patients/s on
# 10^5 patients, CSV or Parquet in, Parquet or JSON lines out.
BATCH_TABLES = ((".csv", ".parquet"), (".parquet", ".parquet"), (".csv", ".jsonl"))
_STEPS = re.compile(r"predict: (\d+) patients; load ([0-9.]+) s, read ([0-9.]+) s, score ([0-9.]+) s, write ([0-9.]+) s")
_CPU_STEPS = re.compile(r"predict CPU seconds \(all threads\): load ([0-9.]+), read ([0-9.]+), score ([0-9.]+), write ([0-9.]+)")


def _batch_cli(uri: str, work: Path, n: int, suffix: str = ".json", source: str = ".csv") -> dict[str, float]:
    """``responders predict`` on ``n`` simulated patients in a child process: wall and CPU seconds, rate, output size.

    ``source``: the input file's suffix (``.csv`` or ``.parquet``); ``suffix``: the output file's, ``.json`` (the
    POST /predict JSON), ``.parquet`` or ``.jsonl`` (one row per patient). For a table output the command logs
    its steps' seconds: ``start_up`` is the wall time before reading (interpreter, imports, registry look-up and
    model loading) and ``rate_scoring`` the rate of reading, scoring and writing alone.
    """
    import resource

    from training.simulate import simulate

    path = work / f"patients-{n}{source}"
    if not path.exists():
        frame = simulate("final", n, 123)
        frame.to_csv(path, index=False) if source == ".csv" else frame.to_parquet(path, index=False)
    out = work / f"scores-{n}{suffix}"
    command = [str(Path(sys.executable).with_name("responders")), "predict", str(path), "--out", str(out), "--tracking-uri", uri]
    load = os.getloadavg()[0]
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env={**os.environ, **QUIET_ENV}, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = work / f"batch-cli{source}{suffix}.log"
    log.write_text(done.stdout[-5000:] + done.stderr[-20000:])
    if done.returncode != 0:
        raise RuntimeError(f"responders predict failed ({done.returncode}); see {log}")
    if suffix == ".json":
        scored = json.loads(out.read_text())["n_scored"]
    elif suffix == ".jsonl":
        with out.open() as fh:
            scored = sum('"errors":null' in line for line in fh)
    else:
        import pandas as pd

        scored = int(pd.read_parquet(out, columns=["errors"])["errors"].isna().sum())
    progress_lines = sum("scoring:" in line for line in done.stderr.splitlines())
    record = {"patients": n, "seconds": seconds, "rate": n / seconds, "mib": out.stat().st_size / 2**20, "scored": scored,
              "progress_lines": progress_lines, "load": load, "format": suffix.lstrip("."), "source": source.lstrip("."),
              "cpu": (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)}  # fmt: skip
    steps = _STEPS.search(done.stderr)
    if steps:
        load_s, read, score, write = (float(steps.group(k)) for k in range(2, 6))
        record |= {"load_s": load_s, "read": read, "score": score, "write": write,
                   "start_up": seconds - read - score - write, "rate_scoring": n / (read + score + write)}  # fmt: skip
    cpu_steps = _CPU_STEPS.search(done.stderr)
    if cpu_steps:
        record |= dict(zip(("cpu_load", "cpu_read", "cpu_score", "cpu_write"), (float(g) for g in cpu_steps.groups()), strict=True))
    return record


def _bentoml_calls(url: str, path: str, body_of):
    async def call(client, i=[0]):  # noqa: B006 - a counter shared by the workers of one run
        i[0] += 1
        response = await client.post(f"{url}{path}", json=body_of(i[0]), headers=AUTH)
        return response.status_code == 200

    return call


def _mlflow_calls(urls: list[str], records_of):
    async def call(client, i=[0]):  # noqa: B006
        i[0] += 1
        body = {"dataframe_records": records_of(i[0])}
        for url in urls:  # the same request to each outcome's server, one after the other
            response = await client.post(f"{url}/invocations", json=body)
            if response.status_code != 200:
                return False
        return True

    return call


def run(quick: bool, out_dir: Path) -> str:
    quiet_environment()
    settings = QUICK if quick else FULL
    work = out_dir / "serving"
    work.mkdir(parents=True, exist_ok=True)
    print("[bench] serving: training the champions ...", file=sys.stderr, flush=True)
    uri = _train(work, settings)
    patients = _patients(work)
    first_batch = _patients(work, FIRST_BATCH, 78)
    example = json.loads((REPO / "examples" / "patient.json").read_text())
    loads = {"start": os.getloadavg()}
    floor = _floor(uri, patients, settings.floor_repeats)
    profile, profiled_ms = _profile(uri, patients, settings.plan_repeats)
    explain_profile, explain_profiled_ms = _profile(uri, patients, max(10, settings.plan_repeats // 4), "explain", top=10)
    print("[bench] serving: plans of every candidate type ...", file=sys.stderr, flush=True)
    plans = _candidate_plans(settings, patients)

    def single(i):
        return {"patients": [patients[i % len(patients)]]}

    def batch(i):
        return {"patients": patients}

    def records_single(i):
        return [patients[i % len(patients)]]

    def records_batch(i):
        return patients

    results: list[LoadResult] = []
    memory: dict[str, tuple[int, int]] = {}
    explain: LoadResult | None = None
    load: LoadTest | None = None
    first: dict | None = None
    plain: dict = {}
    env = {"RESPONDERS_API_TOKEN": TOKEN, "MLFLOW_TRACKING_URI": uri, "BENTOML_HOME": str(work / "bentoml")}

    def sweep(target, make_single, make_batch, process):
        before = _tree_rss(process.pid)
        for level in settings.levels:
            print(f"[bench] serving: {target} x{level}", file=sys.stderr, flush=True)
            results.append(_measure(target, "1 patient", make_single, level, max(settings.single_requests, 10 * level), settings.seconds))
            results.append(_measure(target, "100 patients", make_batch, level, max(settings.batch_requests, 2 * level), settings.seconds))
        memory[target] = (before, _tree_rss(process.pid))

    variants = (
        ("BentoML /predict (ours)", "serving.service:ResponderService", {}),
        ("BentoML adaptive batching", "benchmarks.batched_service:BatchedResponderService", {}),
        (TWO_WORKERS, "serving.service:ResponderService", {"RESPONDERS_WORKERS": "2"}),
    )
    for name, service, extra_env in variants:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "bentoml", "serve", service, "--host", "127.0.0.1", "--port", str(port)]
        with _server(command, f"{url}/readyz", {**env, **extra_env}, work / f"server-{port}.log", poll=0.05) as process:
            if name == "BentoML /predict (ours)":
                first = _first_after_ready(url, process.pid, example, first_batch)
            sweep(name, _bentoml_calls(url, "/predict", single), _bentoml_calls(url, "/predict", batch), process)
            if name == "BentoML /predict (ours)":
                explain = _measure("BentoML /explain", "1 patient", _bentoml_calls(url, "/explain", single), 1, settings.explain_requests, settings.seconds)
                print(f"[bench] serving: minimal client, {settings.plain_requests} x /predict and /explain", file=sys.stderr, flush=True)
                plain = {path: _quantiles(_plain_client(url, path, single, settings.plain_requests, f"{path}, minimal client")) for path in ("/predict", "/explain")}
                print(f"[bench] serving: load test, {settings.load_requests} requests x{settings.load_concurrency}", file=sys.stderr, flush=True)
                load = _load_test(_bentoml_calls(url, "/predict", single), process.pid, settings)

    with _mlflow_servers(uri, work, env) as (mlflow_urls, processes):
        before = sum(_tree_rss(p.pid) for p in processes)
        for level in settings.levels:
            print(f"[bench] serving: mlflow x{level}", file=sys.stderr, flush=True)
            for label, urls in ((PEER_BOTH, mlflow_urls), (PEER_ONE, mlflow_urls[:1])):
                results.append(_measure(label, "1 patient", _mlflow_calls(urls, records_single), level, max(settings.single_requests, 10 * level), settings.seconds))
                results.append(_measure(label, "100 patients", _mlflow_calls(urls, records_batch), level, max(settings.batch_requests, 2 * level), settings.seconds))
        memory["mlflow models serve, pain + memory (2 processes)"] = (before, sum(_tree_rss(p.pid) for p in processes))

    print(f"[bench] serving: responders predict on {settings.batch_patients} patients", file=sys.stderr, flush=True)
    batch_cli = _batch_cli(uri, work, settings.batch_patients)
    batch_tables = []
    for source, suffix in BATCH_TABLES:
        print(f"[bench] serving: responders predict on {settings.batch_patients} patients, {source} to {suffix}", file=sys.stderr, flush=True)
        batch_tables.append(_batch_cli(uri, work, settings.batch_patients, suffix, source))
    bcf = _bcf_champions(work / "bcf", settings, single)
    loads["end"] = os.getloadavg()
    (work / "results.json").write_text(json.dumps([vars(r) | {"rps": r.rps} for r in results], default=float))
    if load is not None:
        (work / "load.json").write_text(json.dumps(_load_record(load), default=float))
    extra = {
        "plans": plans, "profile": profile, "profiled_ms": profiled_ms, "explain_profile": explain_profile,
        "explain_profiled_ms": explain_profiled_ms, "batch_cli": batch_cli, "batch_tables": batch_tables, "loads": loads, "champions": _champion_names(uri),
        "first": first, "bcf": bcf, "plain": plain,
    }  # fmt: skip
    (work / "plan.json").write_text(json.dumps(extra, default=str))
    return _markdown(results, explain, floor, memory, settings, quick, load, extra)


def _bcf_champions(work: Path, settings: Settings, single) -> dict:
    """The same single-patient calls and batch command with BCF champions (:data:`BCF_TRIAL`): the tree walk over served draws."""
    print(f"[bench] serving: training on simulate{BCF_TRIAL} for BCF champions ...", file=sys.stderr, flush=True)
    uri = _train(work, settings, BCF_TRIAL)
    env = {"RESPONDERS_API_TOKEN": TOKEN, "MLFLOW_TRACKING_URI": uri, "BENTOML_HOME": str(work / "bentoml")}
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:ResponderService", "--host", "127.0.0.1", "--port", str(port)]
    calls = {}
    with _server(command, f"{url}/readyz", env, work / f"server-{port}.log", poll=0.05):
        for path, count in (("/predict", settings.single_requests), ("/explain", settings.explain_requests)):
            print(f"[bench] serving: BCF champions, {path} x1", file=sys.stderr, flush=True)
            r = _measure(f"BCF champions {path}", "1 patient", _bentoml_calls(url, path, single), 1, count, settings.seconds)
            calls[path] = {**_quantiles(r), "plain": _quantiles(_plain_client(url, path, single, settings.plain_requests, f"BCF {path}, minimal client"))}
    tables = []
    for source, suffix in BATCH_TABLES:
        print(f"[bench] serving: BCF champions, responders predict on {settings.batch_patients} patients, {source} to {suffix}", file=sys.stderr, flush=True)
        tables.append(_batch_cli(uri, work, settings.batch_patients, suffix, source))
    return {"trial": list(BCF_TRIAL), "champions": _champion_names(uri), "calls": calls, "batch_tables": tables}


def render_bcf(bcf: dict, one: LoadResult | None, explain: LoadResult | None, arm_tables: list[dict], plain: dict | None = None) -> str:
    """The BCF-champion rows beside the default trial's (arm-only) ones: same calls, same batch command."""
    scenario, n, seed = bcf["trial"]
    names = ", ".join(f"{o}: {c}" for o, c in bcf["champions"].items())
    mine = {"/predict": one, "/explain": explain}
    rows = []
    for path, r in bcf["calls"].items():
        base = mine.get(path)
        rows.append([f"`{path}`, 1 patient, concurrency 1 (httpx)", f"{r['p50']:.1f} / {r['p99']:.1f} ms",
                     f"{base.quantile(0.5):.1f} / {base.quantile(0.99):.1f} ms" if base else "—",
                     f"{r['p99'] / base.quantile(0.99):.2f}" if base else "—", f"{r['requests']} ({r['errors']} errors)"])  # fmt: skip
        mine_plain, theirs = (plain or {}).get(path), r.get("plain")
        if theirs:
            rows.append([f"`{path}`, 1 patient, concurrency 1 (minimal client)", f"{theirs['p50']:.1f} / {theirs['p99']:.1f} ms",
                         f"{mine_plain['p50']:.1f} / {mine_plain['p99']:.1f} ms" if mine_plain else "—",
                         f"{theirs['p99'] / mine_plain['p99']:.2f}" if mine_plain else "—", f"{theirs['requests']:,} ({theirs['errors']} errors)"])  # fmt: skip
    arm = {(t["source"], t["format"]): t for t in arm_tables}
    for t in bcf["batch_tables"]:
        base = arm.get((t["source"], t["format"]))
        rows.append([f"`responders predict`, {t['patients']:,} patients, {_format_name(t['source'])} to {_format_name(t['format'])}",
                     f"{t['rate']:,.0f} / {t.get('rate_scoring', float('nan')):,.0f} patients/s",
                     f"{base['rate']:,.0f} / {base.get('rate_scoring', float('nan')):,.0f} patients/s" if base else "—",
                     f"{t['rate'] / base['rate']:.2f}" if base else "—",
                     f"score {t.get('score', float('nan')):.2f} s, {t['cpu']:.1f} s CPU"])  # fmt: skip
    return "\n\n".join([
        f"With BCF champions: the same calls and batch command on champions trained with the default config on "
        f"`simulate('{scenario}', {n}, {seed})`, whose heterogeneity test rejects, so BCF serves ({names}; the patient "
        "answer evaluates every served posterior draw). Latency p50 / p99; batch rate with / without start-up; "
        "the ratio is BCF over the arm-only champions above (p99, or rate with start-up):",
        md_table(["what", "BCF champions", "arm-only champions (above)", "BCF / arm-only", "detail"], rows, "lrrrl"),
    ])  # fmt: skip


def _format_name(suffix: str) -> str:
    return {"csv": "CSV", "parquet": "Parquet", "jsonl": "JSON lines", "json": "JSON"}.get(suffix, suffix)


def _champion_names(uri: str) -> dict[str, str]:
    from core.spec import load_spec
    from training.tracking import current_champion, setup_tracking

    spec = load_spec()
    _, client = setup_tracking(uri)
    out = {}
    for outcome in spec.outcomes:
        version = current_champion(client, spec.registered_model_name(outcome))
        out[outcome] = f"{version.tags.get('candidate', '?')} (v{version.version})" if version is not None else "?"
    return out


def _load_record(load: LoadTest) -> dict:
    r = load.result
    return {
        "requests": r.requests, "errors": r.errors, "seconds": r.seconds, "rps": r.rps,
        "p50_ms": r.quantile(0.5), "p99_ms": r.quantile(0.99), "max_ms": max(r.latencies) * 1000 if r.latencies else None,
        "rss_before": load.rss_before, "rss_peak": load.rss_peak, "rss_after": load.rss_after, "processes": load.processes,
    }  # fmt: skip


def render_load_test(load: LoadTest, settings: Settings) -> str:
    """The load-test paragraph and table of the serving section."""
    r = load.result
    stopped = (
        f" Stopped by the {settings.load_seconds:.0f} s safety cap after {r.requests} of {settings.load_requests} requests."
        if r.requests < settings.load_requests
        else ""
    )
    growth = (load.rss_after - load.rss_before) / 2**20
    table = md_table(
        ["requests", "concurrency", "errors", "requests/s", "p50 ms", "p99 ms", "RSS before, MiB", "RSS peak, MiB", "RSS after, MiB", "growth, MiB"],
        [[r.requests, r.concurrency, r.errors, f"{r.rps:.1f}", f"{r.quantile(0.5):.1f}", f"{r.quantile(0.99):.1f}",
          mb(load.rss_before), mb(load.rss_peak), mb(load.rss_after), f"{growth:+,.0f}"]],
        "rrrrrrrrrr",
    )  # fmt: skip
    return "\n\n".join(
        [
            f"Load test: {settings.load_requests:,} single-patient `/predict` requests at concurrency {settings.load_concurrency} "
            f"against one `bentoml serve` (1 worker); memory is the RSS of the server's process tree ({load.processes} processes: "
            f"the supervisor and its worker), peak polled every second.{stopped}",
            table,
        ]
    )


@contextmanager
def _mlflow_servers(uri: str, work: Path, env: dict):
    ports = [_free_port(), _free_port()]
    servers = []
    contexts = []
    try:
        for outcome, port in zip(("pain", "memory"), ports, strict=True):
            command = [
                sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/fibromyalgia-ldn-{outcome}@champion",
                "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            ]
            context = _server(command, f"http://127.0.0.1:{port}/ping", env, work / f"mlflow-{outcome}.log")
            servers.append(context.__enter__())
            contexts.append(context)
        yield [f"http://127.0.0.1:{p}" for p in ports], servers
    finally:
        for context in reversed(contexts):
            context.__exit__(None, None, None)


PEER_BOTH = "mlflow models serve, pain + memory"
PEER_ONE = "mlflow models serve, pain only"
COMPARED = (
    "Throughput against `mlflow models serve` on the same champions, same patients, same concurrency. What is compared: "
    "one request to our `/predict` answers every outcome ({outcomes}: pain and memory) for each patient it carries; one "
    "request to `mlflow models serve` answers one outcome (one registered model per server). *Per request* is our "
    "requests/s over the pain server's requests/s. *Per outcome answer* counts patients x outcomes answered per second: "
    "ours against the pain and memory servers together (each patient sent to one, then the other). Both ratios come from "
    "the rows of the table below, measured in this run:"
)


def throughput_comparison(ours: LoadResult, pain: LoadResult | None, both: LoadResult | None, outcomes: int) -> dict:
    """Per-request and per-outcome-answer throughput ratios of our /predict against `mlflow models serve`.

    ``pain`` is one MLflow server (one outcome per request); ``both`` calls the
    pain and the memory server one after the other per row request (two HTTP
    requests, one outcome each). Outcome answers per second are patients per
    request x outcomes per request x requests per second.
    """
    patients = int(ours.payload.split()[0])
    ours_answers = ours.rps * patients * outcomes
    mlflow_answers = both.rps * patients * outcomes if both is not None and both.rps else None
    return {
        "ours_rps": ours.rps,
        "pain_rps": pain.rps if pain is not None else None,
        "per_request": ours.rps / pain.rps if pain is not None and pain.rps else None,
        "ours_answers": ours_answers,
        "mlflow_answers": mlflow_answers,
        "per_answer": ours_answers / mlflow_answers if mlflow_answers else None,
        "p50_vs_pain": ours.quantile(0.5) / pain.quantile(0.5) if pain is not None and pain.latencies else None,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _headline(c: dict | None) -> str:
    if c is None or c["per_request"] is None:
        return "—"
    return f"{c['per_request']:.1f}x per request, {_fmt(c['per_answer'], '.1f')}x per outcome answer"


def _headline_detail(c: dict | None, outcomes: int) -> str:
    if c is None or c["pain_rps"] is None:
        return ""
    return (
        f"{c['ours_rps']:.0f} requests/s ({outcomes} outcomes each) vs the pain server's {c['pain_rps']:.1f} (1 outcome each); "
        f"{c['ours_answers']:.0f} vs {_fmt(c['mlflow_answers'], '.0f')} outcome answers/s (pain + memory servers)"
    )


def _markdown(results, explain, floor, memory, settings, quick, load: LoadTest | None = None, extra: dict | None = None) -> str:
    extra = extra or {}
    ours = {(r.payload, r.concurrency): r for r in results if r.target == "BentoML /predict (ours)"}
    peer = {(r.payload, r.concurrency): r for r in results if r.target == PEER_BOTH}
    pain = {(r.payload, r.concurrency): r for r in results if r.target == PEER_ONE}
    outcomes = len(extra.get("champions") or {}) or 2
    rows = []
    for r in results:
        rows.append([r.target, r.payload, r.concurrency, r.requests, r.errors, f"{r.rps:.1f}", f"{r.quantile(0.5):.1f}", f"{r.quantile(0.99):.1f}"])
    table = md_table(["server", "request", "concurrency", "requests", "errors", "requests/s", "p50 ms", "p99 ms"], rows, "llrrrrrr")
    comparisons = {key: throughput_comparison(mine, pain.get(key), peer.get(key), outcomes) for key, mine in ours.items()}
    ratio_rows = [
        [key[0], key[1], f"{c['ours_rps']:.1f}", _fmt(c["pain_rps"], ".1f"), _fmt(c["per_request"], ".2f"),
         f"{c['ours_answers']:,.0f}", _fmt(c["mlflow_answers"], ",.0f"), _fmt(c["per_answer"], ".2f"), _fmt(c["p50_vs_pain"], ".2f")]
        for key, c in comparisons.items()
    ]  # fmt: skip
    ratios = md_table(
        ["request", "concurrency", "ours requests/s", "pain server requests/s", "per request (ours / pain server)",
         "ours outcome answers/s", "MLflow outcome answers/s (pain + memory servers)", "per outcome answer (ours / MLflow)",
         "p50 ours / pain server"],
        ratio_rows, "lrrrrrrrr",
    )  # fmt: skip
    floor_rows = [[k, f"{v:.2f}"] for k, v in floor.items()]
    one = ours.get(("1 patient", 1))
    at8 = comparisons.get(("1 patient", 8))
    two_at8 = None
    two_one = next((r for r in results if r.target == TWO_WORKERS and r.payload == "1 patient" and r.concurrency == 8), None)
    if two_one is not None:
        two_at8 = throughput_comparison(two_one, pain.get(("1 patient", 8)), peer.get(("1 patient", 8)), outcomes)
    plain = extra.get("plain") or {}

    def latency(path: str, r: LoadResult | None) -> tuple[str, str]:
        """(measured, detail) of a one-patient call: the minimal client's p99 first when measured, then httpx's."""
        if r is None:
            return "—", ""
        httpx_text = f"{r.quantile(0.99):.1f} ms with httpx (p50 {r.quantile(0.5):.1f}; {r.requests} requests)"
        q = plain.get(path)
        if not q:
            return f"{r.quantile(0.99):.1f} ms", httpx_text
        return f"{q['p99']:.1f} ms", f"minimal client: p50 {q['p50']:.1f} ms, {q['requests']:,} requests, {q['errors']} errors; {httpx_text}"

    targets = [
        ["`/predict`, 1 patient, p99 over HTTP (concurrency 1)", "<= 3 ms (issue 13: 10 ms)", *latency("/predict", one)],
        ["`/explain`, 1 patient, p99 over HTTP (concurrency 1)", "<= 6 ms (issue 13: 25 ms)", *latency("/explain", explain)],
        ["throughput / `mlflow models serve`, 1 patient, concurrency 8", ">= 15x (issue 13: 3x)", _headline(at8),
         _headline_detail(at8, outcomes)],
    ]  # fmt: skip
    if two_at8 is not None:
        targets.append(["the same with 2 BentoML workers (`RESPONDERS_WORKERS=2`)", ">= 15x", _headline(two_at8), _headline_detail(two_at8, outcomes)])
    first = extra.get("first")
    if first:
        e, p = first["explain"], first["predict"]
        targets += [
            ["first `/explain` after `/readyz` said ready (1 patient)", "<= 50 ms", f"{e['first'] * 1000:.1f} ms",
             f"RSS step {e['first_rss_mib']:+.1f} MiB; the second call {e['second'] * 1000:.1f} ms, {e['second_rss_mib']:+.1f} MiB"],
            [f"first {p['patients']}-patient `/predict` after ready (after that `/explain`)", "<= 0.5 s, no lasting memory step",
             f"{p['first']:.3f} s", f"RSS step {p['first_rss_mib']:+.1f} MiB; the second call {p['second']:.3f} s, {p['second_rss_mib']:+.1f} MiB"],
        ]  # fmt: skip
    batch_cli, batch_tables = extra.get("batch_cli"), extra.get("batch_tables") or []
    if batch_cli:
        targets.append([f"`responders predict`, {batch_cli['patients']:,} patients (file to JSON, child process)", "seconds",
                        f"{batch_cli['seconds']:.1f} s", f"{batch_cli['rate']:,.0f} patients/s, {batch_cli['mib']:.0f} MiB of JSON"])  # fmt: skip
    for batch in batch_tables:
        scoring = (f"; {batch['rate_scoring']:,.0f} patients/s without the {batch['start_up']:.1f} s of start-up and model loading "
                   f"(read {batch['read']:.2f} s, score {batch['score']:.2f} s, write {batch['write']:.2f} s)") if "rate_scoring" in batch else ""  # fmt: skip
        targets.append([f"`responders predict`, {batch['patients']:,} patients ({_format_name(batch['source'])} to {_format_name(batch['format'])}, child process)",
                        ">= 50,000 patients/s", f"{batch['rate']:,.0f} patients/s",
                        f"{batch['seconds']:.1f} s wall, {batch['cpu']:.1f} s CPU, start-up included{scoring}"])  # fmt: skip
    loads = extra.get("loads", {})
    load_text = ", ".join(f"{k} {v[0]:.2f} / {v[1]:.2f} / {v[2]:.2f}" for k, v in loads.items())
    served = [
        ["predict, 1 patient", f"{one.quantile(0.5):.1f}" if one else "—", f"{one.quantile(0.99):.1f}" if one else "—",
         f"{one.quantile(0.5) / floor['predict, 1 patient']:.1f}" if one else "—"],
    ]  # fmt: skip
    if explain is not None:
        served.append([
            "explain, 1 patient", f"{explain.quantile(0.5):.1f}", f"{explain.quantile(0.99):.1f}",
            f"{explain.quantile(0.5) / floor['explain, 1 patient']:.1f}",
        ])  # fmt: skip
    served_table = md_table(["call (concurrency 1)", "served p50 ms", "served p99 ms", "served p50 / in-process floor"], served, "lrrr")
    memory_rows = [[k, mb(b), mb(a)] for k, (b, a) in memory.items()]
    memory_table = md_table(["server (process tree)", "RSS before, MiB", "RSS after, MiB"], memory_rows, "lrr")
    batching = {(r.payload, r.concurrency): r for r in results if r.target == "BentoML adaptive batching"}
    batch_rows = [
        [k[0], k[1], f"{b.rps / ours[k].rps:.2f}" if ours.get(k) and ours[k].rps else "—", b.errors]
        for k, b in batching.items()
    ]
    batch_table = md_table(["request", "concurrency", "throughput adaptive / plain", "errors (adaptive)"], batch_rows, "lrrr")
    two = {(r.payload, r.concurrency): r for r in results if r.target == TWO_WORKERS}
    worker_rows = [
        [k[0], k[1], f"{w.rps / ours[k].rps:.2f}" if ours.get(k) and ours[k].rps else "—",
         f"{w.quantile(0.5) / ours[k].quantile(0.5):.2f}" if ours.get(k) else "—", w.errors]
        for k, w in two.items()
    ]  # fmt: skip
    workers_table = md_table(["request", "concurrency", "throughput 2 workers / 1", "p50 2 workers / 1", "errors (2 workers)"], worker_rows, "lrrrr")
    champions = extra.get("champions", {})
    parts = [
        "## 2. Serving",
        "Targets of issue 26 (issue 13's in brackets), measured in this run (load average of the machine, 1/5/15 min: "
        f"{load_text or 'not recorded'}; the machine is shared, so compare the ratios). The first calls after ready: "
        "the server is started, `/readyz` polled every 50 ms until it says 200, then one `/explain` of "
        "examples/patient.json and one /predict of 500 simulated patients (`simulate('final', 500, 78)`), each "
        "repeated once; RSS of the server's process tree before and after each call:",
        md_table(["what", "target", "measured", "detail"], targets, "llrl"),
        COMPARED.format(outcomes=outcomes),
        ratios,
        f"Champions trained on `simulate('final', 99, {DEFAULT_SEED})` (the default job's trial) ({', '.join(f'{o}: {c}' for o, c in champions.items())}); 100 simulated "
        f"patients; levels {', '.join(map(str, settings.levels))}; at most {settings.single_requests} single-patient and "
        f"{settings.batch_requests} batch requests per level, {settings.seconds:.0f} s cap. Our /predict answers pain and memory "
        "(and input warnings) in one request; the peer row 'pain + memory' calls the two MLflow servers one after the other "
        "(two HTTP requests, one outcome each, counted as one row request). "
        "Load generator and servers share the same 2 cores." + (" QUICK settings: not estimates." if quick else ""),
        table,
        "Latency against the in-process floor (`Scorer` called directly, median ms):",
        md_table(["in-process call", "ms"], floor_rows, "lr"),
        served_table,
    ]
    if extra.get("plans"):
        parts += [
            "The compiled plan of every candidate type (in process, one outcome; each fitted with the served settings on "
            "`simulate('strong', 160, 8)`; median ms; compile = at load time; 100 patients = one batch, the libraries' own predict):",
            md_table(["candidate", "refits / draws", "compile ms", "predict, 1 patient", "explain, 1 patient", "predict, 100 patients"],
                     extra["plans"], "lrrrrr"),
        ]  # fmt: skip
    if extra.get("profile"):
        parts += [
            f"Profile of one `/predict` request's scoring (cProfile, `Scorer.predict` for one patient, both outcomes; "
            f"{extra['profiled_ms']:.2f} ms per request under the profiler; the rest of a served request is BentoML, pydantic "
            "and the socket), top functions by cumulative time per request:",
            md_table(["function", "calls", "cumulative ms", "own ms"], extra["profile"], "lrrr"),
            f"The same for `/explain` ({extra['explain_profiled_ms']:.2f} ms per request under the profiler):",
            md_table(["function", "calls", "cumulative ms", "own ms"], extra["explain_profile"], "lrrr"),
        ]
    if batch_cli:
        parts.append(
            f"Batch scoring: `responders predict` on {batch_cli['patients']:,} simulated patients (CSV in, JSON out, both outcomes) "
            f"took {batch_cli['seconds']:.1f} s wall in a fresh process, start-up and model loading included "
            f"({batch_cli['rate']:,.0f} patients/s; {batch_cli['scored']:,} scored; {batch_cli['mib']:.0f} MiB written; "
            f"{batch_cli['progress_lines']} progress lines logged, as off a terminal; load average {batch_cli['load']:.2f} at its start)."
        )
    for batch in batch_tables:
        parts.append(
            f"{_format_name(batch['source'])} to {_format_name(batch['format'])} (`--out scores.{batch['format']}`: one row per patient, "
            f"scored column by column, the API's numbers): {batch['seconds']:.1f} s wall, {batch['cpu']:.1f} s CPU (user + sys), "
            f"start-up and model loading included ({batch['rate']:,.0f} patients/s; {batch['scored']:,} scored; {batch['mib']:.0f} MiB written; "
            f"load average {batch['load']:.2f} at its start)"
            + (f"; start-up and model loading {batch['start_up']:.1f} s (of which loading the champions {batch['load_s']:.2f} s), then read "
               f"{batch['read']:.2f} s, score {batch['score']:.2f} s, write {batch['write']:.2f} s: {batch['rate_scoring']:,.0f} patients/s "
               "without start-up" if "rate_scoring" in batch else "")  # fmt: skip
            + (f" (CPU seconds, all threads: load {batch['cpu_load']:.2f}, read {batch['cpu_read']:.2f}, score {batch['cpu_score']:.2f}, "
               f"write {batch['cpu_write']:.2f})." if "cpu_score" in batch else ".")  # fmt: skip
        )
    bcf = extra.get("bcf")
    if bcf:
        parts += [render_bcf(bcf, one, explain, batch_tables, extra.get("plain"))]
    parts += [
        "Adaptive batching (`batchable=True`, same scorer) relative to the plain endpoint:",
        batch_table,
        "Two BentoML workers (`RESPONDERS_WORKERS=2`) relative to one, same endpoint:",
        workers_table,
        "Memory:",
        memory_table,
        *([render_load_test(load, settings)] if load is not None else []),
    ]
    return "\n\n".join(parts)
