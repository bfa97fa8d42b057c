"""Section 3: training time and memory, from the default trial to 10^6 patients.

(a) The default training job: ``run_training`` with the packaged default
    config on ``simulate("final", 99, DEFAULT_SEED)`` (the default job's trial;
    both outcomes, nested repeated CV, the heterogeneity test, champion refits
    with their intervals, MLflow logging and registration into a fresh sqlite
    store, the cohort report),
    once with the local process executor and once with a 2-worker Dask local
    cluster, one after the other in the same run. Each job runs in its own
    child process, so wall time includes interpreter start-up, imports and
    (for Dask) starting and stopping the cluster; CPU seconds are those of the
    child and all its descendants (workers included), memory the peak of their
    summed resident memory. The job's own per-phase clock
    (``TrainSummary.timing``: CV, test, final fits, MLflow, reports, data)
    gives the breakdown.
(b) The curve: the whole job at 99, 300, 1,000, 3,000, 10^4 and 10^5
    simulated patients with the default config (its ``auto`` rules and its
    local executor), each size in a fresh child process: wall and CPU time,
    peak memory of the process tree and of the largest worker process, the
    phase breakdown, what the ``auto`` rules chose and what the heterogeneity
    test ran on, each against the 2-minute target.
(c) 10^5 and 10^6 patients on a Dask cluster of separate processes started
    here on 127.0.0.1 with the ``dask scheduler`` / ``dask worker`` commands (a
    scheduler and two single-threaded workers with a memory limit, each behind
    its nanny; a fresh cluster per size, stopped afterwards): the job's wall
    time, the driver's CPU and peak memory, and each worker's.
(d) The projection from 10^5 to 10^6 per phase: the measured time ratio,
    the driver's share, and what the executor sent (``training.executor``
    counters: the pickled shared object scattered to every worker, each task's
    item and result, on these two jobs only), with what more workers could
    save at most.

The heterogeneity test's level and power at these sizes are section 1's
(``benchmarks/recovery.py``) up to twice ``evidence.max_patients`` (above
``evidence.max_patients`` the test runs on a stratified subsample of that
many patients, the size section 1 measures), and section 4's above that (the
held-out test, ``benchmarks/heldout.py``).

Run ``python -m benchmarks.training job ...`` to measure one child by hand;
:func:`run` drives every part and returns the Markdown section.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import (
    QUIET_ENV,
    REPO,
    ChildResult,
    TreeMemory,
    growth_exponent,
    mb,
    md_table,
    quiet_environment,
    run_child,
    stop_process,
)
from core.config import AUTO_RULES, smoke_settings
from training.published import DEFAULT_SEED

TARGET_SMALL_SECONDS = 60.0  # issue 13 (and 21): the default job within a minute on 2 idle cores
TARGET_DEFAULT_SECONDS = 30.0  # issue 26: the default job within 30 s on 2 cores
TARGET_CURVE_SECONDS = 120.0  # issue 26: every size from 99 to 10^5 patients within 2 minutes on 2 cores
TARGET_CLUSTER_SECONDS = 900.0  # ... and 10^6 patients on a Dask cluster within 15 minutes
TARGET_WORKER_BYTES = 4 * 2**30  # ... with at most 4 GB per worker


@dataclass(frozen=True)
class Settings:
    """What section 3 measures; ``QUICK`` shrinks everything for a smoke run."""

    job_n: int = 99
    job_seed: int = DEFAULT_SEED  # the default job (`make train`)
    job_overrides: dict = field(default_factory=dict)  # empty: the packaged default config
    executors: tuple[str, ...] = ("local", "dask")
    curve_sizes: tuple[int, ...] = (99, 300, 1_000, 3_000, 10_000, 100_000)
    curve_overrides: dict = field(default_factory=dict)  # empty: the default config, its auto rules and its executor
    cluster_sizes: tuple[int, ...] = (100_000, 1_000_000)  # the projection's two points: on the separate-process cluster
    cluster_overrides: dict = field(default_factory=dict)
    cluster_workers: int = 2
    worker_memory_limit: str = "4GiB"  # dask worker --memory-limit: the nanny stops a worker above it
    seed: int = 1  # the curve's and the cluster's trials: simulate("final", n, seed)
    job_timeout: float = 3600.0
    curve_timeout: float = 3600.0
    cluster_timeout: float = 5400.0


FULL = Settings()
# Tiny settings for a smoke run: every step of the job runs, none of it at a useful size.
# The smoke settings shared with the tests and the examples (core/configs/smoke.yaml), without their worker count.
QUICK_JOB = {k: v for k, v in smoke_settings().items() if k != "executor"}
QUICK = Settings(
    job_overrides=QUICK_JOB,
    curve_sizes=(99, 1_000),
    curve_overrides=QUICK_JOB,
    cluster_sizes=(2_000, 10_000),  # 10,000: the large-trial CV path (a task per fold and candidate) that 10^6 takes
    cluster_overrides=QUICK_JOB,
    worker_memory_limit="2GiB",
    # Generous: a smoke job of half a minute on quiet cores took ten at a load of 8 on 2 cores (shared machines).
    job_timeout=1800,
    curve_timeout=1800,
    cluster_timeout=2400,
)
CATEGORIES = ("data", "cv", "test", "final fits", "mlflow", "reports")
# Where each executor loop belongs in the job's phase clock (by the loop's description, training/steps.py and evaluation.py).
MAP_CATEGORIES = (
    ("nested CV", "cv"), ("heterogeneity test", "test"), ("RATE", "test"), ("permutation", "test"), ("final fits", "final fits"),
    ("evaluation figures", "reports"),
)


def _stopping_rule() -> str:
    """How the default test's null trials stop, as the packaged config and spec decide it."""
    from core.config import load_config
    from core.spec import load_spec

    evidence = load_config(None).evidence
    if evidence.prespecified and load_spec().prespecified_modifiers:
        return (
            "BCF's spread and the spec's prespecified modifiers joined by Fisher's combination; the null trials stop for "
            "futility once the test cannot reject at alpha, or can hardly still reject (curtailment)"
        )
    return f"Besag & Clifford's sequential rule: stop once {evidence.sequential_h} null statistics reach the observed one"


def map_category(desc: str) -> str:
    """The phase category of an executor loop, from its description ('other' when unknown)."""
    return next((category for needle, category in MAP_CATEGORIES if needle in desc), "other")


def auto_choices(config, n: int) -> dict[str, object]:
    """What each ``auto`` setting of ``config`` resolved to for ``n`` patients (explicit values are not listed)."""
    resolved = config.resolved(n)
    out = {}
    for path in AUTO_RULES:
        given, value = config, resolved
        for part in path.split("."):
            given, value = getattr(given, part), getattr(value, part)
        if given == "auto":
            out[path] = "all" if value is None else value
    return out


# ---------------------------------------------------------------------------
# Children (each measured in its own process)
# ---------------------------------------------------------------------------


def _job_child(args: argparse.Namespace) -> dict:
    quiet_environment()
    import logging

    import psutil

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # progress lines into the child's log
    from core.config import load_config
    from core.spec import load_spec

    overrides = json.loads(args.overrides)
    if args.executor != "default":  # default: the config's own (local processes, one per core)
        # workers: None -> one per core locally, 2 for a Dask local cluster; a scheduler: a running cluster
        overrides["executor"] = {"kind": args.executor, **({"scheduler": args.scheduler} if args.scheduler else {})}
    config = load_config(None, **overrides)
    if config.executor.kind == "local" and config.executor.scheduler is None:
        from training.executor import WORKER_MODULES, start_local_workers

        start_local_workers(config.executor.workers, WORKER_MODULES)  # as `responders train` does, before the heavy imports
    from training.executor import MAP_LOG
    from training.simulate import simulate
    from training.timing import tree_cpu_seconds
    from training.train import run_training

    data = Path(args.data)
    if not data.exists():
        simulate(args.scenario, args.n, args.seed).to_csv(data, index=False)
    MAP_LOG.clear()  # every loop's tasks and wait are recorded (free)
    MAP_LOG.measure_bytes = args.count_bytes  # and what it sends and returns: re-pickled on the driver, a little CPU
    cpu_before = tree_cpu_seconds()
    started = time.perf_counter()
    summary = run_training(data, load_spec(), config, tracking_uri=args.tracking_uri)
    seconds = time.perf_counter() - started
    resolved = config.resolved(args.n)
    own = psutil.Process().cpu_times()
    return {
        "n": args.n,
        "executor": config.executor.kind + (" (scheduler)" if config.executor.scheduler else ""),
        "job_seconds": seconds,
        "job_cpu_seconds": tree_cpu_seconds() - cpu_before,
        "process_cpu_seconds": tree_cpu_seconds(),
        "driver_cpu_seconds": own.user + own.system,  # this process alone, without its workers
        "timing": summary.timing,
        "maps": MAP_LOG.to_list(),
        "config_digest": config.digest(),
        "auto": auto_choices(config, args.n),
        "settings": {
            "cv": f"{resolved.cv.repeats} x {resolved.cv.folds} folds, inner {resolved.cv.inner_folds}",
            "bootstrap_models": resolved.intervals.bootstrap_models,
            "bcf_patients": resolved.candidates.bcf.max_patients or "all",
        },
        "outcomes": {
            name: {
                "test": r.permutation.method,
                "permutations": r.permutation.permutations_run,
                "n_tested": (r.permutation.details or {}).get("n_tested", r.counts.n),
                "p_value": r.permutation.p_value,
                "p_adjusted": r.p_adjusted,
                "champion": r.champion,
                "evidence": r.evidence,
                "promoted": r.promoted,
            }
            for name, r in summary.outcomes.items()
        },
    }


def _simulate_child(args: argparse.Namespace) -> dict:
    """Write the trial a job reads (in its own process, so that the benchmark's parent stays small)."""
    quiet_environment()
    from training.simulate import simulate

    started = time.perf_counter()
    frame = simulate(args.scenario, args.n, args.seed)
    frame.to_csv(args.out, index=False)
    return {"n": len(frame), "columns": frame.shape[1], "bytes": Path(args.out).stat().st_size, "seconds": time.perf_counter() - started}


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    job = sub.add_parser("job", help="one full training job (prints a JSON line)")
    job.add_argument("--data", required=True, help="a CSV; simulated (scenario, n, seed) when it does not exist")
    job.add_argument("--scenario", default="final")
    job.add_argument("--n", type=int, default=99)
    job.add_argument("--seed", type=int, default=DEFAULT_SEED)
    job.add_argument("--executor", choices=["default", "local", "dask"], default="local", help="default: the config's")
    job.add_argument("--scheduler", help="address of a running Dask scheduler (with --executor dask)")
    job.add_argument("--tracking-uri", required=True)
    job.add_argument("--overrides", default="{}", help="config overrides as JSON (deep-merged into the default)")
    job.add_argument("--count-bytes", action="store_true", help="record the pickled bytes each executor loop moves")
    sim = sub.add_parser("simulate", help="write a simulated trial to a CSV (prints a JSON line)")
    sim.add_argument("--out", required=True)
    sim.add_argument("--scenario", default="final")
    sim.add_argument("--n", type=int, required=True)
    sim.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    from core.cli import end_after_exit_handlers, skip_teardown

    end_after_exit_handlers()  # a job child ends as `responders train` does: exit handlers, then no teardown
    result = _job_child(args) if args.command == "job" else _simulate_child(args)
    print(json.dumps(result), flush=True)
    skip_teardown()


# ---------------------------------------------------------------------------
# A Dask cluster of separate processes
# ---------------------------------------------------------------------------


class DaskProcesses:
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, started, watched and stopped here.

    Each worker is its own ``dask worker --nworkers 1 --nthreads 1 --memory-limit ...``
    command (a nanny process and its worker process), as on a multi-node cluster
    where each machine runs its own; the job connects to the scheduler's address.
    Each process tree is polled for its own peak memory and CPU.
    """

    def __init__(self, work: Path, workers: int, memory_limit: str, logs: Path, label: str):
        self.work, self.workers, self.memory_limit, self.logs, self.label = work, workers, memory_limit, logs, label
        self.scheduler_file = work / "scheduler.json"
        self._processes: list[tuple[str, subprocess.Popen, TreeMemory]] = []
        self._logs: list = []
        self.address = ""

    def _start(self, role: str, args: list[str]) -> None:
        log = open(self.logs / f"{self.label}-{role}.log", "w")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        process = subprocess.Popen(args, cwd=REPO, env={**os.environ, **QUIET_ENV}, stdout=log, stderr=subprocess.STDOUT)
        watch = TreeMemory(process.pid).__enter__()
        self._processes.append((role, process, watch))

    def __enter__(self) -> DaskProcesses:
        dask = str(Path(sys.executable).with_name("dask"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.scheduler_file.unlink(missing_ok=True)
        try:
            self._start("scheduler", [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                      "--scheduler-file", str(self.scheduler_file)])
            deadline = time.monotonic() + 120
            while not self.scheduler_file.exists() or not self.scheduler_file.read_text().strip():
                if time.monotonic() > deadline or self._processes[0][1].poll() is not None:
                    raise RuntimeError(f"the Dask scheduler did not start (see {self.logs / f'{self.label}-scheduler.log'})")
                time.sleep(0.2)
            time.sleep(0.2)  # the file is written in one go; a short pause in case it was being written
            self.address = json.loads(self.scheduler_file.read_text())["address"]
            for i in range(self.workers):
                self._start(f"worker-{i}", [dask, "worker", "--scheduler-file", str(self.scheduler_file), "--nworkers", "1", "--nthreads", "1",
                                            "--memory-limit", self.memory_limit, "--name", f"worker-{i}", "--host", "127.0.0.1",
                                            "--no-dashboard", "--local-directory", str(self.work / f"worker-{i}")])
            from distributed import Client

            with Client(self.address, timeout=60) as client:
                client.wait_for_workers(self.workers, timeout=180)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Workers first, then the scheduler: each our own child, ended by its process id (SIGTERM, then SIGKILL)."""
        for _, process, _ in reversed(self._processes):
            stop_process(process, 30)
        for _, _, watch in self._processes:
            watch.__exit__(None, None, None)
        for log in self._logs:
            log.close()
        self._logs = []

    def __exit__(self, *exc) -> None:
        self.stop()

    def usage(self) -> dict[str, dict]:
        """Per role: the tree's CPU seconds, its summed peak, and the own peak of its largest non-root process (the worker)."""
        out = {}
        for role, _, watch in self._processes:
            peaks = watch.peaks()
            inner = [p.peak_rss_bytes for p in peaks if not p.root and not p.helper]
            out[role] = {
                "cpu_s": watch.cpu_seconds,
                "tree_peak": watch.peak,
                "root_peak": next((p.peak_rss_bytes for p in peaks if p.root), 0),
                "worker_peak": max(inner, default=0),  # the worker process behind the nanny
            }
        return out


# ---------------------------------------------------------------------------
# Parent: run the children and render
# ---------------------------------------------------------------------------


def _loadavg() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def _trial(work: Path, n: int, seed: int, logs: Path) -> Path:
    """The simulated trial's CSV, written once per (n, seed) by a child process."""
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"final-n{n}-seed{seed}.csv"
    if not data.exists():  # simulated here, so that the child's wall time is the job's
        run_child(["benchmarks.training", "simulate", "--out", str(data), "--n", str(n), "--seed", str(seed)], 3600, logs / f"simulate-{n}.log")
    return data


def _job(work: Path, label: str, n: int, seed: int, executor: str, overrides: dict, timeout: float, logs: Path,
         scheduler: str | None = None, count_bytes: bool = False) -> tuple[ChildResult, str]:
    store = work / f"mlruns-{label}"
    store.mkdir(parents=True, exist_ok=True)
    data = _trial(work, n, seed, logs)
    load = _loadavg()
    print(f"[training] job {label}: n = {n:,}, {executor} executor{' on ' + scheduler if scheduler else ''} (load {load}) ...",
          file=sys.stderr, flush=True)
    result = run_child(
        [
            "benchmarks.training", "job",
            "--data", str(data), "--n", str(n), "--seed", str(seed),
            "--executor", executor, *(["--scheduler", scheduler] if scheduler else []),
            "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}",
            "--overrides", json.dumps(overrides), *(["--count-bytes"] if count_bytes else []),
        ],
        timeout=timeout,
        log_path=logs / f"job-{label}.log",
    )
    p = result.payload
    print(f"[training]   {result.wall_seconds:.0f} s wall, {p['process_cpu_seconds']:.0f} s CPU, peak {mb(result.peak_rss_bytes)} MB",
          file=sys.stderr, flush=True)
    return result, load


def measure_jobs(settings: Settings, work: Path, logs: Path) -> list[tuple[str, ChildResult, str]]:
    """Part (a): the same job with each executor, one after the other; returns (executor, measurement, load before)."""
    return [
        (executor, *_job(work, f"n{settings.job_n}-{executor}", settings.job_n, settings.job_seed, executor, settings.job_overrides,
                         settings.job_timeout, logs))
        for executor in settings.executors
    ]


def measure_curve(settings: Settings, work: Path, logs: Path) -> list[tuple[ChildResult, str]]:
    """Part (b): the whole job with the default config (its executor too) at each size, smallest first, each in a fresh child."""
    return [_job(work, f"curve-{n}", n, settings.seed, "default", settings.curve_overrides, settings.curve_timeout, logs)
            for n in settings.curve_sizes]


@dataclass
class ClusterRun:
    """One job on the separate-process Dask cluster: the driver's measurement and each cluster process's."""

    result: ChildResult | None  # None: the job failed (``error`` says how)
    load: str
    cluster: dict[str, dict]
    workers: int
    memory_limit: str
    n: int = 0
    error: str = ""


def measure_cluster(settings: Settings, work: Path, logs: Path) -> list[ClusterRun]:
    """Parts (c) and (d): each size on a fresh cluster of a scheduler and worker processes, stopped afterwards."""
    runs = []
    for n in settings.cluster_sizes:
        data_dir = work / "data"
        _trial(data_dir, n, settings.seed, logs)  # before the cluster starts: writing 10^6 rows is not the job's time
        print(f"[training] Dask cluster: scheduler + {settings.cluster_workers} worker processes "
              f"(--memory-limit {settings.worker_memory_limit}) for n = {n:,} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        result, load, failure = None, _loadavg(), ""
        with DaskProcesses(work / f"cluster-{n}", settings.cluster_workers, settings.worker_memory_limit, logs, f"cluster-{n}") as cluster:
            try:
                result, load = _job(data_dir, f"cluster-{n}", n, settings.seed, "dask", settings.cluster_overrides,
                                    settings.cluster_timeout, logs, scheduler=cluster.address, count_bytes=True)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                # A job over the memory or the time limit is a finding to report, not a reason to lose parts (a) and (b).
                failure = f"after {time.perf_counter() - started:.0f} s: {str(error).strip().splitlines()[-1][:300]}"
                print(f"[training]   FAILED {failure}", file=sys.stderr, flush=True)
        runs.append(ClusterRun(result, load, cluster.usage(), settings.cluster_workers, settings.worker_memory_limit, n, failure))
    return runs


def _phase_cells(timing: dict) -> list[str]:
    by = timing.get("by_category", {})
    return [f"{by.get(c, {}).get('wall_s', 0):.1f} / {by.get(c, {}).get('cpu_s', 0):.1f}" for c in CATEGORIES]


def render_jobs(jobs: list[tuple[str, ChildResult, str]], settings: Settings) -> str:
    """Markdown for part (a): ratios first, then the measurements, the phase breakdown and the verdicts."""
    lines = []
    first = jobs[0][1]
    ratio_lines = [
        f"- Default job, {jobs[0][0]} executor: wall **{first.wall_seconds / TARGET_DEFAULT_SECONDS:.2f}x** the 30 s target "
        f"and **{first.wall_seconds / TARGET_SMALL_SECONDS:.2f}x** the 60 s one ({first.wall_seconds:.0f} s wall, {first.payload['process_cpu_seconds']:.0f} CPU-seconds for the process tree; "
        f"CPU / (2 cores x 60 s) = **{first.payload['process_cpu_seconds'] / (2 * TARGET_SMALL_SECONDS):.2f}x**)."
    ]
    if len(jobs) == 2:
        (_, a, _), (name_b, b, _) = jobs
        same = a.payload["outcomes"] == b.payload["outcomes"]
        ratio_lines.append(
            f"- {name_b} / {jobs[0][0]}: wall **{b.wall_seconds / a.wall_seconds:.2f}x**, CPU "
            f"{b.payload['process_cpu_seconds'] / a.payload['process_cpu_seconds']:.2f}x, peak memory "
            f"{b.peak_rss_bytes / a.peak_rss_bytes:.2f}x. Verdicts, p-values, permutations run and champions identical across "
            f"executors: **{'yes' if same else 'NO'}**."
        )
    lines += ratio_lines + [""]
    rows = []
    for executor, result, load in jobs:
        p = result.payload
        rows.append(
            [
                {"local": f"local processes (loky, {os.cpu_count()} workers)", "dask": "Dask LocalCluster (2 workers)"}.get(executor, executor),
                f"{result.wall_seconds:.0f}",
                f"{p['job_seconds']:.0f}",
                f"{p['process_cpu_seconds']:.0f}",
                f"{result.cpu_seconds:.0f}",
                mb(result.peak_rss_bytes),
                result.peak_processes,
                load,
            ]
        )
    lines.append(
        md_table(
            ["executor", "wall s (child process)", "run_training s", "CPU s (process tree)", "CPU s (polled)", "peak RSS, process tree (MB)",
             "processes at peak", "load avg before"],
            rows,
        )
    )
    lines += [
        "",
        "Per phase (wall s / CPU s of the process tree, from the job's own clock; data = load, validate and parse; "
        "final fits = champions, bootstrap refits and BCF references in the worker pool plus assembling the served models):",
        "",
        md_table(["executor", *CATEGORIES], [[executor, *_phase_cells(result.payload["timing"])] for executor, result, _ in jobs]),
    ]
    outcome_rows = []
    for name, o in jobs[0][1].payload["outcomes"].items():
        outcome_rows.append([name, o["test"], str(o["permutations"]), f"{o['p_value']:.3f}", f"{o['p_adjusted']:.3f}", o["champion"]])
    lines += [
        "",
        "What the job concluded (" + _stopping_rule() + "):",
        "",
        md_table(["outcome", "test", "permutations run", "p", "Holm-adjusted p", "champion"], outcome_rows, "llrrrl"),
    ]
    return "\n".join(lines)


def _worker_peak(result: ChildResult) -> str:
    return mb(result.worker_peak_bytes) if result.worker_peak_bytes else "— (in-process)"


def _test_cells(p: dict) -> list[list[str]]:
    rows = []
    for name, o in p["outcomes"].items():
        tested = o.get("n_tested", p["n"])
        where = f" (held out; BCF fitted on {p['n'] - tested:,})" if o["test"] == "held_out" else " (subsample)" if tested < p["n"] else ""
        rows.append(
            [f"{p['n']:,}", name, o["test"], f"{tested:,}{where}", str(o["permutations"]),
             f"{o['p_value']:.3f}", o["champion"]]
        )
    return rows


def render_curve(results: list[tuple[ChildResult, str]]) -> str:
    """Markdown for part (b): ratios to the 2-minute target first, then the curve, the auto choices, the test, the phases."""
    worst = max(results, key=lambda r: r[0].wall_seconds)[0]
    within = all(r.wall_seconds <= TARGET_CURVE_SECONDS for r, _ in results)
    sizes = [r.payload["n"] for r, _ in results]
    lines = [
        f"- Slowest size n = {worst.payload['n']:,}: wall **{worst.wall_seconds / TARGET_CURVE_SECONDS:.2f}x** the 2-minute target "
        f"({worst.wall_seconds:.0f} s). Every size within 2 minutes: **{'yes' if within else 'NO'}**.",
        "- Wall / 2 minutes per size: " + ", ".join(f"n = {r.payload['n']:,} **{r.wall_seconds / TARGET_CURVE_SECONDS:.2f}x**" for r, _ in results) + ".",
    ]
    if len(results) > 1:
        cpu = [r.payload["process_cpu_seconds"] for r, _ in results]
        lines.append(
            f"- Growth from n = {sizes[0]:,} to {sizes[-1]:,}: CPU seconds grow as n^{growth_exponent(sizes, cpu):.2f} over the curve "
            f"(least-squares slope on log-log; 1 is linear); CPU per 1,000 patients "
            f"{1000 * cpu[0] / sizes[0]:.1f} s at n = {sizes[0]:,}, {1000 * cpu[-1] / sizes[-1]:.2f} s at n = {sizes[-1]:,}."
        )
    lines.append("")
    rows = []
    for result, load in results:
        p = result.payload
        rows.append(
            [
                f"{p['n']:,}", f"{result.wall_seconds:.0f}", f"{result.wall_seconds / TARGET_CURVE_SECONDS:.2f}x", f"{p['process_cpu_seconds']:.0f}",
                mb(result.peak_rss_bytes), _worker_peak(result), mb(result.root_peak_bytes), result.peak_processes, p.get("executor", ""), load,
            ]
        )
    lines.append(
        md_table(
            ["n", "wall s", "wall / 2 min", "CPU s (tree)", "peak RSS, tree (MB)", "peak RSS, largest worker (MB)", "peak RSS, driver (MB)",
             "processes at peak", "executor", "load before"],
            rows,
            "rrrrrrrrll",
        )
    )
    paths = sorted({path for r, _ in results for path in r.payload.get("auto", {})}, key=list(AUTO_RULES).index)
    if paths:
        lines += [
            "",
            "What the `auto` rules chose (`core/configs/default.yaml`; `all` = every patient):",
            "",
            md_table(["n", *[f"`{path.removeprefix('candidates.')}`" for path in paths]],
                     [[f"{r.payload['n']:,}", *[str(r.payload["auto"].get(path, "")) for path in paths]] for r, _ in results]),
        ]
    lines += [
        "",
        "What the heterogeneity test ran on (patients tested: above `evidence.max_patients` a stratified subsample; above twice "
        "that, the held-out test on every patient outside the subsample BCF is fitted on; null trials run, which the sequential "
        "rule may stop early in the imputed randomisation test):",
        "",
        md_table(["n", "outcome", "test", "patients tested", "null trials run", "p", "champion"],
                 [row for r, _ in results for row in _test_cells(r.payload)], "rllrrrl"),
        "",
        "Per phase (wall s / CPU s of the process tree, from the job's own clock):",
        "",
        md_table(["n", *CATEGORIES], [[f"{r.payload['n']:,}", *_phase_cells(r.payload["timing"])] for r, _ in results]),
    ]
    return "\n".join(lines)


def render_cluster(runs: list[ClusterRun]) -> str:
    """Markdown for part (c): ratios to the 15-minute and 4 GB targets first, then each cluster process (a failed job says so)."""
    largest = runs[-1]
    workers = {k: v for k, v in largest.cluster.items() if k.startswith("worker")}
    worst = max((v["worker_peak"] for v in workers.values()), default=0)
    memory = (f"largest worker process peak **{worst / TARGET_WORKER_BYTES:.2f}x** the 4 GB target ({mb(worst)} MB, "
              f"`--memory-limit {largest.memory_limit}`)")
    r = largest.result
    if r is None:
        lines = [f"- n = {largest.n:,}: **FAILED** {largest.error} (log: `job-cluster-{largest.n}.log`); {memory} until then.", ""]
    else:
        lines = [
            f"- n = {largest.n:,}: wall **{r.wall_seconds / TARGET_CLUSTER_SECONDS:.2f}x** the 15-minute target ({r.wall_seconds:.0f} s at "
            f"load {largest.load}); {memory}; driver peak {mb(r.peak_rss_bytes)} MB.",
            "",
        ]
    rows = []
    for run_ in runs:
        usage, result = run_.cluster, run_.result
        ws = [usage[k] for k in sorted(usage) if k.startswith("worker")]
        scheduler = usage.get("scheduler", {"cpu_s": 0.0, "tree_peak": 0})
        cluster_cells = [
            " + ".join(f"{w['cpu_s']:.0f}" for w in ws), f"{scheduler['cpu_s']:.0f}",
        ]
        memory_cells = [
            " / ".join(mb(w["worker_peak"]) for w in ws), f"{max((w['worker_peak'] for w in ws), default=0) / TARGET_WORKER_BYTES:.2f}x",
            " / ".join(mb(w["root_peak"]) for w in ws), mb(scheduler["tree_peak"]),
        ]
        if result is None:
            rows.append([f"{run_.n:,}", "FAILED", "—", "—", *cluster_cells, "—", *memory_cells, run_.load])
            continue
        rows.append(
            [
                f"{run_.n:,}", f"{result.wall_seconds:.0f}", f"{result.wall_seconds / TARGET_CLUSTER_SECONDS:.2f}x",
                f"{result.payload['driver_cpu_seconds']:.0f}", *cluster_cells, mb(result.peak_rss_bytes), *memory_cells, run_.load,
            ]
        )
    lines.append(
        md_table(
            ["n", "wall s", "wall / 15 min", "driver CPU s", "worker CPU s (each)", "scheduler CPU s", "driver peak RSS (MB)",
             "worker process peak RSS (MB, each)", "largest worker / 4 GB", "nanny peak RSS (MB, each)", "scheduler peak RSS (MB)",
             "load before"],
            rows,
        )
    )
    done = [x for x in runs if x.result is not None]
    if done:
        lines += [
            "",
            "Per phase (wall s / driver CPU s; the workers are not the driver's children, so the CPU here is the driver's alone):",
            "",
            md_table(["n", *CATEGORIES], [[f"{x.n:,}", *_phase_cells(x.result.payload["timing"])] for x in done]),
        ]
    return "\n".join(lines)


def _maps_by_category(payload: dict) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for m in payload.get("maps", []):
        entry = out.setdefault(map_category(m["desc"]), {"maps": 0, "tasks": 0, "seconds": 0.0, "shared": 0, "items": 0, "results": 0, "sent": 0,
                                                         "counting": 0.0})
        entry["counting"] += m.get("count_seconds", 0.0)
        entry["maps"] += 1
        entry["tasks"] += m["tasks"]
        entry["seconds"] += m["seconds"]
        entry["shared"] += m["shared_bytes"]
        entry["sent"] += m["shared_bytes"] * m["workers"] + m["item_bytes"]  # a broadcast scatter reaches every worker
        entry["items"] += m["item_bytes"]
        entry["results"] += m["result_bytes"]
    return out


def _size(value_bytes: float) -> str:
    """Bytes in the unit that reads best (B, KB, MB, GB; binary)."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if value_bytes >= scale:
            return f"{value_bytes / scale:,.1f} {unit}"
    return f"{value_bytes:,.0f} B"


def render_projection(small: ClusterRun, large: ClusterRun) -> str:
    """Markdown for part (d): per phase the measured ratio from the smaller to the larger trial, and what the executor moved."""
    ps, pl = small.result.payload, large.result.payload
    factor = pl["n"] / ps["n"]
    by_s, by_l = ps["timing"].get("by_category", {}), pl["timing"].get("by_category", {})
    maps_s, maps_l = _maps_by_category(ps), _maps_by_category(pl)
    rows = []
    driver_total = pooled_total = 0.0
    for category in [c for c in ("executor", *CATEGORIES) if c in by_l or c in by_s]:
        ws, wl = by_s.get(category, {}).get("wall_s", 0.0), by_l.get(category, {}).get("wall_s", 0.0)
        ms, ml = maps_s.get(category, {}), maps_l.get(category, {})
        in_maps = ml.get("seconds", 0.0)
        driver_only = max(0.0, wl - in_maps)
        driver_total += driver_only
        pooled_total += min(in_maps, wl)
        tasks = ml.get("tasks", 0)
        rows.append(
            [
                category, f"{ws:.1f}", f"{wl:.1f}", f"{wl / ws:.1f}x" if ws > 0 else "—",
                f"{by_l.get(category, {}).get('cpu_s', 0.0):.1f}", f"{driver_only:.1f}",
                f"{ml.get('maps', 0)} / {tasks}" if ml else "—",
                f"{_size(ms.get('shared', 0))} → {_size(ml.get('shared', 0))}" if ml else "—",
                _size(ml["items"] / tasks) if tasks else "—",
                _size(ml["results"] / tasks) if tasks else "—",
                _size(ml.get("sent", 0)) if ml else "—",
            ]
        )
    wall_small, wall_large = small.result.wall_seconds, large.result.wall_seconds
    lines = [
        f"- From n = {ps['n']:,} to {pl['n']:,} ({factor:.0f}x patients) on the same separate-process cluster: job wall "
        f"**{wall_large / wall_small:.1f}x**, driver CPU **{pl['driver_cpu_seconds'] / ps['driver_cpu_seconds']:.1f}x** (of the "
        f"driver's time, {sum(m['counting'] for m in maps_l.values()):.1f} s at n = {pl['n']:,} and "
        f"{sum(m['counting'] for m in maps_s.values()):.1f} s at n = {ps['n']:,} went to counting bytes).",
        f"- At n = {pl['n']:,}, **{driver_total:.0f} s** of the job ran on the driver outside any executor loop (reading and "
        f"validating the data, parsing, fold features, assembling the served models, MLflow, reports) and **{pooled_total:.0f} s** "
        "were spent waiting on executor loops (the workers' fits, with the scatter and gathering). Only the second part can shrink "
        "with more workers:",
        "",
        md_table(
            ["workers", f"projected wall at n = {pl['n']:,} (s)", "of which driver-only (s)"],
            [[str(w), f"{driver_total + pooled_total * large.workers / w:.0f}", f"{driver_total:.0f}"] for w in (large.workers, 4, 8, 16, 32)],
        ),
        "",
        f"(Amdahl's bound from the measured {large.workers}-worker run: the job's phases, start-up and imports left out, with the "
        "loops' time divided by the worker ratio and nothing else; a broadcast scatter sends the shared object to every worker, "
        "so in practice the loops shrink less.)",
        "",
        f"Per phase (wall s at each size, the ratio, the driver's CPU s and its time outside executor loops at n = {pl['n']:,}, and "
        "the executor's counters: loops / tasks, the pickled shared objects scattered (all loops of the phase, smaller → larger "
        "trial), the mean pickled item sent and result returned per task, and all bytes sent to workers at the larger size with each "
        "scatter counted once per worker):",
        "",
        md_table(
            ["phase", f"wall s, n = {ps['n']:,}", f"wall s, n = {pl['n']:,}", "ratio", "driver CPU s", "driver-only s", "loops / tasks",
             "scattered", "sent per task", "returned per task", "sent in all"],
            rows,
            "lrrrrrrrrrr",
        ),
    ]
    return "\n".join(lines)


def run(quick: bool, out_dir: Path, settings: Settings | None = None) -> str:
    """Run section 3 and return its Markdown; child logs go to ``out_dir/training/``."""
    settings = settings or (QUICK if quick else FULL)
    work = out_dir / "training"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=work) as tmp:  # fresh MLflow stores: no earlier champion to compare with
        jobs = measure_jobs(settings, Path(tmp) / "jobs", work)
        curve = measure_curve(settings, Path(tmp) / "curve", work)
        cluster = measure_cluster(settings, Path(tmp) / "cluster", work)
    minutes = (time.perf_counter() - started) / 60

    def row(r: ChildResult, load: str) -> dict:
        return {"wall_s": r.wall_seconds, "peak_rss": r.peak_rss_bytes, "cpu_polled": r.cpu_seconds, "load": load,
                "processes": [vars(p) for p in r.processes], **r.payload}

    raw = {
        "jobs": [{"executor": e, **row(r, load)} for e, r, load in jobs],
        "curve": [row(r, load) for r, load in curve],
        "cluster": [{**(row(c.result, c.load) if c.result else {"n": c.n, "error": c.error, "load": c.load}), "cluster": c.cluster,
                     "workers": c.workers, "memory_limit": c.memory_limit} for c in cluster],
    }
    (work / "section3.json").write_text(json.dumps(raw, indent=1))  # the raw figures, to re-render or check
    from core.config import load_config

    evidence = load_config(None).evidence
    config_note = (
        "the packaged default config (nested CV 3 x 5 folds, inner 3; six candidates; the imputed randomisation test with at most "
        f"{evidence.replicates} null trials ({_stopping_rule()}); the final fits with their intervals)"
        if not settings.job_overrides
        else f"the default config with `{json.dumps(settings.job_overrides)}`"
    )
    curve_config = "the default config" if not settings.curve_overrides else f"the default config with `{json.dumps(settings.curve_overrides)}`"
    sizes = ", ".join(f"{n:,}" for n in settings.curve_sizes)
    small, large = settings.cluster_sizes[0], settings.cluster_sizes[-1]
    parts = [
        "## 3. Training",
        "",
        f"{'QUICK smoke run: tiny settings and sizes, not the default job. ' if quick else ''}Measured in {minutes:.1f} min. "
        "Each job is one child process; CPU seconds are those of the child and every process below it (executor "
        "workers included), memory the peak of their summed resident memory, polled every 0.2 s, and each process's own "
        "peak. The machine is shared with other jobs: the CPU seconds say what the job cost, wall time also what the "
        "neighbours took.",
        "",
        f"### (a) The default job, n = {settings.job_n}: local executor vs 2-worker Dask local cluster",
        "",
        f"`run_training` on `simulate(\"final\", {settings.job_n}, {settings.job_seed})` with {config_note}, both outcomes, "
        "MLflow logging and registration into a fresh sqlite store and the cohort report; wall time includes "
        "interpreter start-up, imports and (for Dask) starting and stopping the cluster.",
        "",
        render_jobs(jobs, settings),
        "",
        f"### (b) The curve: n = {sizes} with the default config",
        "",
        f"`run_training` on `simulate(\"final\", n, {settings.seed})` with {curve_config}: its `auto` rules and its executor (local "
        "processes, one per core), each size in a fresh child process. Wall time includes start-up and imports. The "
        "heterogeneity test's level and power at these sizes are measured in "
        "[section 1](#1-subgroup-recovery) (n = 99, 300 and 1,000) and, above twice `evidence.max_patients` (2,000 patients), "
        "where the test is held out, in [section 4](#4-the-heterogeneity-test-above-2000-patients) (n = 3,000, 10,000 and "
        "100,000); the test table below shows what each job's test ran on.",
        "",
        render_curve(curve),
        "",
        f"### (c) n = {large:,} on a Dask cluster of separate processes",
        "",
        f"A `dask scheduler` and {settings.cluster_workers} `dask worker --nworkers 1 --nthreads 1 --memory-limit "
        f"{settings.worker_memory_limit}` processes (each a nanny and its worker process) on 127.0.0.1, started by the benchmark, "
        f"a fresh cluster for each size and stopped afterwards; the job (the driver) runs in its own process with "
        f"`executor: {{kind: dask, scheduler: <address>}}` and {curve_config} on `simulate(\"final\", n, {settings.seed})`, "
        "simulated before the cluster starts. Wall time is the driver's, start-up included; the cluster's start is not.",
        "",
        render_cluster(cluster),
    ]
    if len(cluster) > 1 and all(c.result is not None for c in cluster):
        parts += [
            "",
            f"### (d) Projection from n = {small:,} to {large:,}",
            "",
            "Both sizes on the cluster of (c). The executor's own counters (`training.executor.MAP_LOG`, pickled sizes) say "
            "what each loop moved; counting re-pickles each item and result on the driver, so these two jobs (only these) "
            "include that CPU. The multi-node plan built on these figures is in `docs/scale.md`.",
            "",
            render_projection(cluster[0], cluster[-1]),
        ]
    elif len(cluster) > 1:
        parts += ["", f"### (d) Projection from n = {small:,} to {large:,}", "", "Not measured: a cluster job above failed."]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    _main()
