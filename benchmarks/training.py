"""Section 3: training time and memory.

(a) The default training job (``run_training`` with the packaged default
    config on ``simulate("final", 99, DEFAULT_SEED)`` (the default job's trial): both outcomes, nested repeated
    CV, the sequential permutation test, champion refits with bootstrap
    intervals, MLflow logging and registration into a fresh sqlite store, the
    cohort report), once with the local process executor and once with a
    2-worker Dask local cluster, one after the other in the same run. Each job
    runs in its own child process, so wall time includes interpreter start-up,
    imports and (for Dask) starting and stopping the cluster; CPU seconds are
    those of the child and all its descendants (workers included), memory the
    peak of their summed resident memory. The job's own per-phase clock
    (``TrainSummary.timing``: CV, test, final fits, MLflow, reports, data)
    gives the breakdown.
(b) The whole job at 10^3, 10^4 and 10^5 simulated patients on the Dask
    executor (2-worker local cluster), each size in a fresh child process:
    wall and CPU time, peak memory of the process tree, the phase breakdown and
    the settings the ``auto`` rules chose.
(c) The level of the split-sample RATE test (the heterogeneity test above
    ``evidence.auto_max_n`` patients) under two nulls at two sizes: the sharp
    null (covariate rows permuted against arm and outcome, so no covariate
    predicts benefit) and the simulator's ``null`` scenario; rejection rates of
    the raw p-value at 0.05 with Wilson intervals.

Run ``python -m benchmarks.training job ...`` / ``level ...`` to measure one
child by hand; :func:`run` drives every part and returns the Markdown section.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import ChildResult, fmt_rate, mb, md_table, quiet_environment, run_child
from core.config import smoke_settings
from training.published import DEFAULT_SEED

TARGET_SMALL_SECONDS = 60.0  # issue 13: the default job within a minute on 2 idle cores
TARGET_LARGE_SECONDS = 300.0  # ... and 10^5 patients within 5 minutes
TARGET_LARGE_BYTES = 4 * 2**30  # ... and 4 GB


@dataclass(frozen=True)
class Settings:
    """What section 3 measures; ``QUICK`` shrinks everything for a smoke run."""

    job_n: int = 99
    job_seed: int = DEFAULT_SEED  # the default job (`make train`)
    job_overrides: dict = field(default_factory=dict)  # empty: the packaged default config
    executors: tuple[str, ...] = ("local", "dask")
    scale_sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    scale_overrides: dict = field(default_factory=dict)
    level_sizes: tuple[int, ...] = (5_000, 20_000)
    level_replicates: tuple[int, ...] = (60, 24)  # per size and null (about 15 CPU-minutes in all)
    job_timeout: float = 3600.0
    scale_timeout: float = 3600.0


FULL = Settings()
# Tiny settings for a smoke run: every step of the job runs, none of it at a useful size.
# The smoke settings shared with the tests and the examples (core/configs/smoke.yaml), without their worker count.
QUICK_JOB = {k: v for k, v in smoke_settings().items() if k != "executor"}
QUICK = Settings(
    job_overrides=QUICK_JOB,
    scale_sizes=(300, 4_000),
    scale_overrides=QUICK_JOB,
    level_sizes=(4_000,),
    level_replicates=(4,),
    job_timeout=600,
    scale_timeout=900,
)
CATEGORIES = ("data", "cv", "test", "final fits", "mlflow", "reports")


# ---------------------------------------------------------------------------
# Children (each measured in its own process)
# ---------------------------------------------------------------------------


def _job_child(args: argparse.Namespace) -> dict:
    quiet_environment()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # progress lines into the child's log
    from core.config import load_config
    from core.spec import load_spec
    from training.simulate import simulate
    from training.timing import tree_cpu_seconds
    from training.train import run_training

    data = Path(args.data)
    if not data.exists():
        simulate(args.scenario, args.n, args.seed).to_csv(data, index=False)
    overrides = json.loads(args.overrides)
    overrides["executor"] = {"kind": args.executor}  # workers: None -> one per core locally, 2 for a Dask local cluster
    config = load_config(None, **overrides)
    cpu_before = tree_cpu_seconds()
    started = time.perf_counter()
    summary = run_training(data, load_spec(), config, tracking_uri=args.tracking_uri)
    seconds = time.perf_counter() - started
    resolved = config.resolved(args.n)
    return {
        "n": args.n,
        "job_seconds": seconds,
        "job_cpu_seconds": tree_cpu_seconds() - cpu_before,
        "process_cpu_seconds": tree_cpu_seconds(),
        "timing": summary.timing,
        "config_digest": config.digest(),
        "settings": {
            "cv": f"{resolved.cv.repeats} x {resolved.cv.folds} folds, inner {resolved.cv.inner_folds}",
            "bootstrap_models": resolved.intervals.bootstrap_models,
            "bcf_patients": resolved.candidates.bcf.max_patients or "all",
        },
        "outcomes": {
            name: {
                "test": r.permutation.method,
                "permutations": r.permutation.permutations_run,
                "p_value": r.permutation.p_value,
                "p_adjusted": r.p_adjusted,
                "champion": r.champion,
                "evidence": r.evidence,
                "promoted": r.promoted,
            }
            for name, r in summary.outcomes.items()
        },
    }


def _level_replicate(task: tuple[str, int, int], shared: dict) -> float:
    """One null trial's split-sample RATE p-value (pain): ``sharp`` permutes covariate rows against arm and outcome."""
    import numpy as np

    from training.evaluation import features_of, parsed_inputs, split_rate_test
    from training.executor import LocalExecutor
    from training.simulate import simulate
    from training.train import outcome_data

    kind, n, seed = task
    spec, config = shared["spec"], shared["config"]
    frame = simulate("null", n, seed)
    data, _ = outcome_data(frame, spec, "pain", config)
    F = features_of(spec, parsed_inputs(spec, data.X))
    if kind == "sharp":
        F = F.iloc[np.random.default_rng(seed).permutation(len(F))].reset_index(drop=True)
    in_process = LocalExecutor(workers=1)
    return split_rate_test(F, data.t, data.y, config, data.treated_fraction, config.seed + 77, in_process).p_value


def _level_child(args: argparse.Namespace) -> dict:
    quiet_environment()
    from core.config import load_config
    from core.spec import load_spec
    from training.executor import make_executor

    config = load_config(None, evidence={"method": "split_rate"})
    tasks = [(kind, n, 10_000 + r) for n, reps in zip(args.sizes, args.replicates, strict=True) for kind in ("sharp", "null") for r in range(reps)]
    started = time.perf_counter()
    with make_executor("local") as executor:
        p_values = executor.map(_level_replicate, tasks, desc="split RATE level", shared={"spec": load_spec(), "config": config})
    rows = {}
    for (kind, n, _), p in zip(tasks, p_values, strict=True):
        rows.setdefault(f"{kind}:{n}", []).append(p)
    return {"p_values": rows, "alpha": config.evidence.alpha, "seconds": time.perf_counter() - started}


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    job = sub.add_parser("job", help="one full training job (prints a JSON line)")
    job.add_argument("--data", required=True, help="a CSV; simulated (scenario, n, seed) when it does not exist")
    job.add_argument("--scenario", default="final")
    job.add_argument("--n", type=int, default=99)
    job.add_argument("--seed", type=int, default=DEFAULT_SEED)
    job.add_argument("--executor", choices=["local", "dask"], default="local")
    job.add_argument("--tracking-uri", required=True)
    job.add_argument("--overrides", default="{}", help="config overrides as JSON (deep-merged into the default)")
    level = sub.add_parser("level", help="split-sample RATE test under null (prints a JSON line)")
    level.add_argument("--sizes", type=int, nargs="+", required=True)
    level.add_argument("--replicates", type=int, nargs="+", required=True)
    args = parser.parse_args(argv)
    result = _job_child(args) if args.command == "job" else _level_child(args)
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------
# Parent: run the children and render
# ---------------------------------------------------------------------------


def _loadavg() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def _job(work: Path, label: str, n: int, seed: int, executor: str, overrides: dict, timeout: float, logs: Path) -> tuple[ChildResult, str]:
    store = work / f"mlruns-{label}"
    store.mkdir(parents=True, exist_ok=True)
    data = work / f"final-n{n}-seed{seed}.csv"
    if not data.exists():  # simulated here, so that the child's wall time is the job's
        quiet_environment()
        from training.simulate import simulate

        simulate("final", n, seed).to_csv(data, index=False)
    load = _loadavg()
    print(f"[training] job {label}: n = {n:,}, {executor} executor (load {load}) ...", file=sys.stderr, flush=True)
    result = run_child(
        [
            "benchmarks.training", "job",
            "--data", str(data), "--n", str(n), "--seed", str(seed),
            "--executor", executor,
            "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}",
            "--overrides", json.dumps(overrides),
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


def measure_scaling(settings: Settings, work: Path, logs: Path) -> list[tuple[ChildResult, str]]:
    """Part (b): the whole job on the Dask executor at each size, smallest first, each in a fresh child."""
    return [_job(work, f"scale-{n}", n, 1, "dask", settings.scale_overrides, settings.scale_timeout, logs) for n in settings.scale_sizes]


def measure_level(settings: Settings, logs: Path) -> ChildResult:
    """Part (c): p-values of the split-sample RATE test on null trials."""
    print(f"[training] split RATE level at n = {settings.level_sizes} ...", file=sys.stderr, flush=True)
    return run_child(
        ["benchmarks.training", "level", "--sizes", *map(str, settings.level_sizes), "--replicates", *map(str, settings.level_replicates)],
        timeout=settings.scale_timeout * 2,
        log_path=logs / "level.log",
    )


def _phase_cells(timing: dict) -> list[str]:
    by = timing.get("by_category", {})
    return [f"{by.get(c, {}).get('wall_s', 0):.1f} / {by.get(c, {}).get('cpu_s', 0):.1f}" for c in CATEGORIES]


def render_jobs(jobs: list[tuple[str, ChildResult, str]], settings: Settings) -> str:
    """Markdown for part (a): ratios first, then the measurements, the phase breakdown and the verdicts."""
    lines = []
    first = jobs[0][1]
    ratio_lines = [
        f"- Default job, {jobs[0][0]} executor: wall **{first.wall_seconds / TARGET_SMALL_SECONDS:.2f}x** the 60 s target "
        f"({first.wall_seconds:.0f} s wall, {first.payload['process_cpu_seconds']:.0f} CPU-seconds for the process tree; "
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
        "What the job concluded (the test stops by Besag & Clifford's sequential rule once `evidence.sequential_h` "
        "statistics reach the observed one):",
        "",
        md_table(["outcome", "test", "permutations run", "p", "Holm-adjusted p", "champion"], outcome_rows, "llrrrl"),
    ]
    return "\n".join(lines)


def render_scaling(results: list[tuple[ChildResult, str]]) -> str:
    """Markdown for part (b): ratios to the targets first, then the curve and the phase breakdown."""
    lines = []
    largest = results[-1][0]
    n = largest.payload["n"]
    cpu = largest.payload["process_cpu_seconds"]
    lines.append(
        f"- n = {n:,}: wall **{largest.wall_seconds / TARGET_LARGE_SECONDS:.2f}x** the 5-minute target ({largest.wall_seconds:.0f} s at "
        f"load {results[-1][1]}), CPU / (2 cores x 300 s) = **{cpu / (2 * TARGET_LARGE_SECONDS):.2f}x** ({cpu:.0f} CPU-seconds), "
        f"peak memory of the process tree **{largest.peak_rss_bytes / TARGET_LARGE_BYTES:.2f}x** the 4 GB target."
    )
    if len(results) > 1:
        previous = results[-2][0]
        factor = n / previous.payload["n"]
        lines.append(
            f"- From n = {previous.payload['n']:,} to {n:,} ({factor:.0f}x patients): wall {largest.wall_seconds / previous.wall_seconds:.1f}x, "
            f"CPU {cpu / previous.payload['process_cpu_seconds']:.1f}x. Below `evidence.auto_max_n` the heterogeneity test is the "
            "whole-pipeline permutation test, whose up to 199 refits per outcome dominate when the sequential rule cannot stop early."
        )
    lines.append("")
    rows = []
    for result, load in results:
        p = result.payload
        tests = ", ".join(sorted({o["test"] for o in p["outcomes"].values()}))
        champions = ", ".join(f"{k}: {o['champion']}" for k, o in p["outcomes"].items())
        rows.append(
            [
                f"{p['n']:,}", f"{result.wall_seconds:.0f}", f"{p['process_cpu_seconds']:.0f}", mb(result.peak_rss_bytes),
                result.peak_processes, p["settings"]["cv"], str(p["settings"]["bootstrap_models"]), str(p["settings"]["bcf_patients"]),
                tests, champions, load,
            ]
        )
    lines.append(
        md_table(
            ["n", "wall s", "CPU s (tree)", "peak RSS, tree (MB)", "processes", "CV (auto)", "bootstrap refits (auto)",
             "BCF patients (auto)", "heterogeneity test", "champions", "load before"],
            rows,
            "rrrrrlrrlll",
        )
    )
    lines += [
        "",
        "Per phase (wall s / CPU s):",
        "",
        md_table(["n", *CATEGORIES], [[f"{r.payload['n']:,}", *_phase_cells(r.payload["timing"])] for r, _ in results]),
    ]
    return "\n".join(lines)


def render_level(result: ChildResult, settings: Settings) -> str:
    """Markdown for part (c)."""
    p = result.payload
    alpha = p["alpha"]
    rows = []
    for n in settings.level_sizes:
        cells = [f"{n:,}"]
        for kind in ("sharp", "null"):
            values = p["p_values"].get(f"{kind}:{n}", [])
            cells.append(fmt_rate(sum(v < alpha for v in values), len(values)))
        rows.append(cells)
    return "\n".join(
        [
            f"Rejections at p < {alpha} of the split-sample RATE test (pain; {p['seconds'] / 60:.1f} min). A valid test rejects "
            f"at most {alpha:.0%} of null trials, within Monte-Carlo error:",
            "",
            md_table(["n", "sharp null (covariates permuted)", "`null` scenario"], rows, "lrr"),
        ]
    )


def run(quick: bool, out_dir: Path, settings: Settings | None = None) -> str:
    """Run section 3 and return its Markdown; child logs go to ``out_dir/training/``."""
    settings = settings or (QUICK if quick else FULL)
    work = out_dir / "training"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=work) as tmp:  # fresh MLflow stores: no earlier champion to compare with
        jobs = measure_jobs(settings, Path(tmp) / "jobs", work)
        scaling = measure_scaling(settings, Path(tmp) / "scale", work)
    level = measure_level(settings, work)
    minutes = (time.perf_counter() - started) / 60
    raw = {
        "jobs": [{"executor": e, "wall_s": r.wall_seconds, "peak_rss": r.peak_rss_bytes, "cpu_polled": r.cpu_seconds, "load": load, **r.payload} for e, r, load in jobs],
        "scaling": [{"wall_s": r.wall_seconds, "peak_rss": r.peak_rss_bytes, "cpu_polled": r.cpu_seconds, "load": load, **r.payload} for r, load in scaling],
        "level": level.payload,
    }
    (work / "section3.json").write_text(json.dumps(raw, indent=1))  # the raw figures, to re-render or check
    config_note = (
        "the packaged default config (nested CV 3 x 5 folds, inner 3; six candidates; at most 199 permutations per outcome "
        "with the sequential stopping rule; 100 bootstrap refits)"
        if not settings.job_overrides
        else f"the default config with `{json.dumps(settings.job_overrides)}`"
    )
    return "\n".join(
        [
            "## 3. Training",
            "",
            f"{'QUICK smoke run: tiny settings, not the default job. ' if quick else ''}Measured in {minutes:.1f} min. "
            "Each job is one child process; CPU seconds are those of the child and every process below it (executor "
            "workers included), memory the peak of their summed resident memory, polled every 0.2 s. The machine is "
            "shared with other jobs: the CPU seconds say what the job cost, wall time also what the neighbours took.",
            "",
            f"### (a) The default job, n = {settings.job_n}: local executor vs 2-worker Dask local cluster",
            "",
            f"`run_training` on `simulate(\"final\", {settings.job_n}, {settings.job_seed})` with {config_note}, both outcomes, "
            "MLflow logging and registration into a fresh sqlite store and the cohort report; wall time includes "
            "interpreter start-up, imports and (for Dask) starting and stopping the cluster.",
            "",
            render_jobs(jobs, settings),
            "",
            "### (b) The whole job at growing n (Dask executor, 2-worker local cluster)",
            "",
            "`run_training` on `simulate(\"final\", n, 1)` with the default config, whose `auto` settings scale with n "
            "(`core/configs/default.yaml`): the heterogeneity test is the split-sample RATE test above 3,000 patients.",
            "",
            render_scaling(scaling),
            "",
            "### (c) The split-sample RATE test under null",
            "",
            render_level(level, settings),
            "",
        ]
    )


if __name__ == "__main__":
    _main()
