"""Section 2: serving load on 127.0.0.1, our BentoML service vs ``mlflow models serve`` on the same champions.

- Champions: a training job on ``simulate("final", 99, 2024)`` into a fresh
  sqlite store (the default config, fewer permutations: the heterogeneity
  test does not change serving cost).
- Our service answers both outcomes (pain and memory) plus input warnings per
  request. ``mlflow models serve --env-manager local`` serves one registered
  model per process, so the fair peer is two MLflow servers (pain, memory)
  called one after the other for each request; the pain server alone is shown
  too. Same patients, same concurrency levels (1, 8, 32), single patient and a
  batch of 100, bounded in requests and time.
- ``/explain`` latency; the in-process floor (``Scorer.predict`` and
  ``Scorer.explain`` per patient, no HTTP) and the ratio of served latency to it.
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

TOKEN = "bench-token-not-a-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass(frozen=True)
class Settings:
    levels: tuple[int, ...] = (1, 8, 32)
    single_requests: int = 300  # per level (bounded also by seconds)
    batch_requests: int = 40
    seconds: float = 30.0
    explain_requests: int = 100
    floor_repeats: int = 50
    load_requests: int = 20_000
    load_concurrency: int = 8
    load_seconds: float = 3600.0  # a safety cap against a stuck server, not part of the design
    train_overrides: dict = field(default_factory=lambda: {"evidence": {"permutations": 19}})


FULL = Settings()
QUICK = Settings(
    levels=(1, 8),
    single_requests=20,
    batch_requests=4,
    seconds=10.0,
    explain_requests=10,
    floor_repeats=5,
    load_requests=200,
    load_seconds=120.0,
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
def _server(command: list[str], ready_url: str, env: dict, log: Path, timeout: float = 180.0):
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
                time.sleep(0.5)
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


def _measure(target: str, payload: str, calls, concurrency: int, total: int, seconds: float) -> LoadResult:
    asyncio.run(_load(calls, min(concurrency, 2), min(4, total), 10))  # warm-up
    issued, errors, elapsed, latencies = asyncio.run(_load(calls, concurrency, total, seconds))
    return LoadResult(target, payload, concurrency, issued, errors, elapsed, latencies)


def _train(work: Path, settings: Settings) -> str:
    from training.config import load_config
    from training.simulate import simulate
    from training.spec import load_spec
    from training.train import run_training

    data = work / "trial.csv"
    simulate("final", 99, 2024).to_csv(data, index=False)
    uri = f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
    run_training(data, load_spec(), load_config(None, **settings.train_overrides), tracking_uri=uri)
    return uri


def _patients(work: Path) -> list[dict]:
    from serving.scoring import read_patients
    from training.simulate import simulate
    from training.spec import load_spec

    path = work / "patients.csv"
    simulate("final", 100, 77).to_csv(path, index=False)
    return read_patients(path, load_spec())


def _floor(uri: str, patients: list[dict], repeats: int) -> dict[str, float]:
    """In-process time per call (ms, median) with the same champions: no HTTP, no JSON."""
    from serving.scoring import Scorer, resolve_champions
    from training.spec import load_spec

    spec = load_spec()
    scorer = Scorer(spec, resolve_champions(spec, uri))
    clean = [c for c, _ in scorer.validate_rows(patients)]
    out = {}
    for name, call in (
        ("predict, 1 patient", lambda i: scorer.predict([clean[i % len(clean)]])),
        ("predict, 100 patients", lambda i: scorer.predict(clean)),
        ("explain, 1 patient", lambda i: scorer.explain([clean[i % len(clean)]])),
    ):
        call(0)
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            call(i)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times) * 1000
    return out


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
    floor = _floor(uri, patients, settings.floor_repeats)

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
    env = {"RESPONDERS_API_TOKEN": TOKEN, "MLFLOW_TRACKING_URI": uri, "BENTOML_HOME": str(work / "bentoml")}

    def sweep(target, make_single, make_batch, process):
        before = _tree_rss(process.pid)
        for level in settings.levels:
            print(f"[bench] serving: {target} x{level}", file=sys.stderr, flush=True)
            results.append(_measure(target, "1 patient", make_single, level, max(settings.single_requests, 10 * level), settings.seconds))
            results.append(_measure(target, "100 patients", make_batch, level, max(settings.batch_requests, 2 * level), settings.seconds))
        memory[target] = (before, _tree_rss(process.pid))

    for name, service in (("BentoML /predict (ours)", "serving.service:ResponderService"), ("BentoML adaptive batching", "benchmarks.batched_service:BatchedResponderService")):
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "bentoml", "serve", service, "--host", "127.0.0.1", "--port", str(port)]
        with _server(command, f"{url}/readyz", env, work / f"server-{port}.log") as process:
            sweep(name, _bentoml_calls(url, "/predict", single), _bentoml_calls(url, "/predict", batch), process)
            if service.startswith("serving."):
                explain = _measure("BentoML /explain", "1 patient", _bentoml_calls(url, "/explain", single), 1, settings.explain_requests, settings.seconds)
                print(f"[bench] serving: load test, {settings.load_requests} requests x{settings.load_concurrency}", file=sys.stderr, flush=True)
                load = _load_test(_bentoml_calls(url, "/predict", single), process.pid, settings)

    with _mlflow_servers(uri, work, env) as (mlflow_urls, processes):
        before = sum(_tree_rss(p.pid) for p in processes)
        for level in settings.levels:
            print(f"[bench] serving: mlflow x{level}", file=sys.stderr, flush=True)
            for label, urls in (("mlflow models serve, pain + memory", mlflow_urls), ("mlflow models serve, pain only", mlflow_urls[:1])):
                results.append(_measure(label, "1 patient", _mlflow_calls(urls, records_single), level, max(settings.single_requests, 10 * level), settings.seconds))
                results.append(_measure(label, "100 patients", _mlflow_calls(urls, records_batch), level, max(settings.batch_requests, 2 * level), settings.seconds))
        memory["mlflow models serve, pain + memory (2 processes)"] = (before, sum(_tree_rss(p.pid) for p in processes))

    (work / "results.json").write_text(json.dumps([vars(r) | {"rps": r.rps} for r in results], default=float))
    if load is not None:
        (work / "load.json").write_text(json.dumps(_load_record(load), default=float))
    return _markdown(results, explain, floor, memory, settings, quick, load)


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
        [[r.requests, r.concurrency, r.errors, f"{r.rps:.1f}", f"{r.quantile(0.5):.0f}", f"{r.quantile(0.99):.0f}",
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


def _markdown(results, explain, floor, memory, settings, quick, load: LoadTest | None = None) -> str:
    ours = {(r.payload, r.concurrency): r for r in results if r.target == "BentoML /predict (ours)"}
    peer = {(r.payload, r.concurrency): r for r in results if r.target == "mlflow models serve, pain + memory"}
    rows = []
    for r in results:
        rows.append([r.target, r.payload, r.concurrency, r.requests, r.errors, f"{r.rps:.1f}", f"{r.quantile(0.5):.0f}", f"{r.quantile(0.99):.0f}"])
    table = md_table(["server", "request", "concurrency", "requests", "errors", "requests/s", "p50 ms", "p99 ms"], rows, "llrrrrrr")
    ratio_rows = []
    for key, mine in ours.items():
        other = peer.get(key)
        if other and other.rps:
            ratio_rows.append([key[0], key[1], f"{mine.rps / other.rps:.2f}", f"{mine.quantile(0.5) / other.quantile(0.5):.2f}"])
    ratios = md_table(["request", "concurrency", "throughput ours / mlflow", "p50 ours / mlflow"], ratio_rows, "lrrr")
    floor_rows = [[k, f"{v:.1f}"] for k, v in floor.items()]
    one = ours.get(("1 patient", 1))
    served = [
        ["predict, 1 patient", f"{one.quantile(0.5):.0f}" if one else "—", f"{one.quantile(0.99):.0f}" if one else "—",
         f"{one.quantile(0.5) / floor['predict, 1 patient']:.1f}" if one else "—"],
    ]
    if explain is not None:
        served.append(["explain, 1 patient", f"{explain.quantile(0.5):.0f}", f"{explain.quantile(0.99):.0f}",
                       f"{explain.quantile(0.5) / floor['explain, 1 patient']:.1f}"])
    served_table = md_table(["call (concurrency 1)", "served p50 ms", "served p99 ms", "served p50 / in-process floor"], served, "lrrr")
    memory_rows = [[k, mb(b), mb(a)] for k, (b, a) in memory.items()]
    memory_table = md_table(["server (process tree)", "RSS before, MiB", "RSS after, MiB"], memory_rows, "lrr")
    batching = {(r.payload, r.concurrency): r for r in results if r.target == "BentoML adaptive batching"}
    batch_rows = [
        [k[0], k[1], f"{b.rps / ours[k].rps:.2f}" if ours.get(k) and ours[k].rps else "—", b.errors]
        for k, b in batching.items()
    ]
    batch_table = md_table(["request", "concurrency", "throughput adaptive / plain", "errors (adaptive)"], batch_rows, "lrrr")
    return "\n\n".join(
        [
            "## 2. Serving",
            f"Champions trained on `simulate('final', 99, 2024)`; 100 simulated patients; levels {', '.join(map(str, settings.levels))}; "
            f"at most {settings.single_requests} single-patient and {settings.batch_requests} batch requests per level, "
            f"{settings.seconds:.0f} s cap. Our /predict answers pain and memory (and input warnings) in one request; the "
            "peer row 'pain + memory' calls the two MLflow servers one after the other. Load generator and servers share the "
            "same 2 cores." + (" QUICK settings: not estimates." if quick else ""),
            table,
            "Ratios (same patients, same level):",
            ratios,
            "Latency against the in-process floor (`Scorer` called directly, median ms):",
            md_table(["in-process call", "ms"], floor_rows, "lr"),
            served_table,
            "Adaptive batching (`batchable=True`, same scorer) relative to the plain endpoint:",
            batch_table,
            "Memory:",
            memory_table,
            *([render_load_test(load, settings)] if load is not None else []),
        ]
    )
