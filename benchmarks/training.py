"""Section 3: training time and memory.

(a) The full default training job (``run_training`` with the packaged default
    config on ``simulate("final", 99, 2024)``: both outcomes, nested repeated
    CV, 199 permutations per outcome, champion refit with 100 bootstrap models,
    MLflow logging and registration into a fresh sqlite store), once with the
    local process executor and once with a 2-worker Dask local cluster, one
    after the other in the same run. Each job runs in its own child process so
    that wall time includes imports and cluster start-up, and memory is the
    peak of the summed resident memory of the child and all its descendants
    (executor workers included).
(b) Feature pipeline + champion fit, as ``fit_champion`` does it (pipeline
    fit/transform, candidate fit, bootstrap ensemble, intervals for every
    training row), at 10^3, 10^4 and 10^5 simulated patients, for the risk
    model (the default champion) and the T-learner, each size in a fresh child
    process; the growth exponent is the least-squares slope of log time on
    log n.

Run ``python -m benchmarks.training job ...`` / ``scale ...`` to measure one
child by hand; :func:`run` drives both parts and returns the Markdown section.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import ChildResult, growth_exponent, mb, md_table, quiet_environment, run_child


@dataclass(frozen=True)
class Settings:
    """What section 3 measures; ``QUICK`` shrinks everything for a smoke run."""

    job_n: int = 99
    job_seed: int = 2024
    job_overrides: dict = field(default_factory=dict)  # empty: the packaged default config
    executors: tuple[str, ...] = ("local", "dask")
    scale_sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    scale_candidates: tuple[str, ...] = ("risk_model", "t_learner")
    scale_bootstrap: int = 5  # bootstrap refits measured per size (the default 100 is projected from them)
    job_timeout: float = 3600.0
    scale_timeout: float = 3600.0


FULL = Settings()
# Tiny settings for a smoke run: every step of the job runs, none of it at a useful size.
QUICK_JOB = {
    "cv": {"folds": 2, "repeats": 1, "inner_folds": 2},
    "evidence": {"permutations": 9, "rate_bootstrap": 20},
    "intervals": {"bootstrap_models": 5},
    "candidates": {
        "t_learner": {"lightgbm": {"n_estimators": 20}},
        "dr_learner": {"nuisance": {"n_estimators": 20}, "final": {"n_estimators": 10}},
    },
}
QUICK = Settings(job_overrides=QUICK_JOB, scale_sizes=(1_000, 3_000, 10_000), scale_bootstrap=3, job_timeout=600, scale_timeout=600)
DEFAULT_BOOTSTRAP = 100  # the packaged default of intervals.bootstrap_models


# ---------------------------------------------------------------------------
# Children (each measured in its own process)
# ---------------------------------------------------------------------------


def _job_child(args: argparse.Namespace) -> dict:
    quiet_environment()
    from training.config import load_config
    from training.spec import load_spec
    from training.train import run_training

    overrides = json.loads(args.overrides)
    overrides["executor"] = {"kind": args.executor}  # workers: None -> one per core locally, 2 for a Dask local cluster
    config = load_config(None, **overrides)
    started = time.perf_counter()
    summary = run_training(args.data, load_spec(), config, tracking_uri=args.tracking_uri)
    seconds = time.perf_counter() - started
    return {
        "job_seconds": seconds,
        "config_digest": config.digest(),
        "permutations": config.evidence.permutations,
        "outcomes": {
            name: {"p_value": r.permutation.p_value, "p_adjusted": r.p_adjusted, "champion": r.champion, "promoted": r.promoted}
            for name, r in summary.outcomes.items()
        },
        "self_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "children_maxrss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }


def _scale_child(args: argparse.Namespace) -> dict:
    quiet_environment()
    import psutil

    from features.pipeline import build_feature_pipeline
    from training.candidates import BootstrapEnsemble, make_candidate
    from training.config import load_config
    from training.simulate import simulate
    from training.spec import load_spec
    from training.train import outcome_data

    spec, config = load_spec(), load_config()
    started = time.perf_counter()
    frame = simulate("final", args.n, args.seed)
    data, _ = outcome_data(frame, spec, "pain", config)
    simulate_seconds = time.perf_counter() - started
    rss_before = psutil.Process().memory_info().rss

    # The steps of training.train.fit_champion, timed one by one.
    t0 = time.perf_counter()
    pipeline = build_feature_pipeline(spec).fit(data.X)
    F = pipeline.transform(data.X).reset_index(drop=True)
    t1 = time.perf_counter()
    candidate = make_candidate(args.candidate, config.candidates, data.treated_fraction, config.seed).fit(F, data.t, data.y)
    t2 = time.perf_counter()
    ensemble = BootstrapEnsemble(candidate, args.bootstrap, config.intervals.level, config.seed).fit(F, data.t, data.y)
    t3 = time.perf_counter()
    point = candidate.predict_benefit(F)
    ensemble.interval(F, point)  # what predicting every training row costs (the job's validation does this)
    t4 = time.perf_counter()
    return {
        "n": args.n,
        "candidate": args.candidate,
        "features": F.shape[1],
        "bootstrap": args.bootstrap,
        "simulate_seconds": simulate_seconds,
        "pipeline_seconds": t1 - t0,
        "fit_seconds": t2 - t1,
        "bootstrap_seconds": t3 - t2,
        "interval_seconds": t4 - t3,
        "total_seconds": t4 - t0,
        "rss_before": rss_before,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    job = sub.add_parser("job", help="one full training job (prints a JSON line)")
    job.add_argument("--data", required=True)
    job.add_argument("--executor", choices=["local", "dask"], default="local")
    job.add_argument("--tracking-uri", required=True)
    job.add_argument("--overrides", default="{}", help="config overrides as JSON (deep-merged into the default)")
    scale = sub.add_parser("scale", help="pipeline + champion fit at one size (prints a JSON line)")
    scale.add_argument("--n", type=int, required=True)
    scale.add_argument("--candidate", default="risk_model")
    scale.add_argument("--bootstrap", type=int, default=10)
    scale.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    result = _job_child(args) if args.command == "job" else _scale_child(args)
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------
# Parent: run the children and render
# ---------------------------------------------------------------------------


def _loadavg() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def measure_jobs(settings: Settings, work: Path) -> list[tuple[str, ChildResult, str]]:
    """Part (a): the same job with each executor, one after the other; returns (executor, measurement, load before)."""
    quiet_environment()
    from training.simulate import simulate

    data = work / f"final-n{settings.job_n}-seed{settings.job_seed}.csv"
    simulate("final", settings.job_n, settings.job_seed).to_csv(data, index=False)
    results = []
    for executor in settings.executors:
        store = work / f"mlruns-{executor}"
        store.mkdir(parents=True, exist_ok=True)
        load = _loadavg()
        print(f"[training] full job, {executor} executor (load {load}) ...", file=sys.stderr, flush=True)
        result = run_child(
            [
                "benchmarks.training",
                "job",
                "--data",
                str(data),
                "--executor",
                executor,
                "--tracking-uri",
                f"sqlite:///{store / 'mlflow.db'}",
                "--overrides",
                json.dumps(settings.job_overrides),
            ],
            timeout=settings.job_timeout,
            log_path=work / f"job-{executor}.log",
        )
        print(f"[training]   {result.wall_seconds:.0f} s, peak {mb(result.peak_rss_bytes)} MB", file=sys.stderr, flush=True)
        results.append((executor, result, load))
    return results


def measure_scaling(settings: Settings, work: Path) -> list[ChildResult]:
    """Part (b): one fresh child per (candidate, size), smallest first."""
    results = []
    for candidate in settings.scale_candidates:
        for n in settings.scale_sizes:
            print(f"[training] pipeline + {candidate} fit at n = {n:,} ...", file=sys.stderr, flush=True)
            result = run_child(
                ["benchmarks.training", "scale", "--n", str(n), "--candidate", candidate, "--bootstrap", str(settings.scale_bootstrap)],
                timeout=settings.scale_timeout,
                log_path=work / f"scale-{candidate}-{n}.log",
            )
            print(f"[training]   {result.payload['total_seconds']:.1f} s", file=sys.stderr, flush=True)
            results.append(result)
    return results


def _projected(p: dict) -> float:
    """Time of the same fit with the default 100 bootstrap refits: the measured refits scaled up."""
    factor = DEFAULT_BOOTSTRAP / p["bootstrap"]
    return p["pipeline_seconds"] + p["fit_seconds"] + factor * (p["bootstrap_seconds"] + p["interval_seconds"])


def render_jobs(jobs: list[tuple[str, ChildResult, str]], settings: Settings) -> str:
    """Markdown for part (a)."""
    rows = []
    for executor, result, load in jobs:
        p = result.payload
        rows.append(
            [
                {"local": f"local processes (loky, {os.cpu_count()} workers)", "dask": "Dask LocalCluster (2 workers)"}.get(executor, executor),
                f"{result.wall_seconds:.0f}",
                f"{p['job_seconds']:.0f}",
                mb(result.peak_rss_bytes),
                result.peak_processes,
                mb(max(p["self_maxrss"], p["children_maxrss"])),
                load,
            ]
        )
    lines = [
        md_table(
            [
                "executor",
                "wall s (child process)",
                "run_training s",
                "peak RSS, process tree (MB)",
                "processes at peak",
                "largest single process (MB)",
                "load avg before",
            ],
            rows,
        )
    ]
    if len(jobs) == 2:
        (_, a, _), (_, b, _) = jobs
        same = a.payload["outcomes"] == b.payload["outcomes"]
        lines += [
            "",
            f"Ratio {jobs[1][0]} / {jobs[0][0]}: wall time **{b.wall_seconds / a.wall_seconds:.2f}x**, "
            f"peak memory {b.peak_rss_bytes / a.peak_rss_bytes:.2f}x. "
            f"Verdicts, p-values and champions identical across executors: **{'yes' if same else 'NO'}**.",
        ]
    outcome_rows = []
    for name, o in jobs[0][1].payload["outcomes"].items():
        outcome_rows.append([name, f"{o['p_value']:.3f}", f"{o['p_adjusted']:.3f}", o["champion"]])
    lines += [
        "",
        f"What the job concluded (B = {jobs[0][1].payload['permutations']} permutations):",
        "",
        md_table(["outcome", "permutation p", "Holm-adjusted p", "champion"], outcome_rows, "lrrl"),
    ]
    return "\n".join(lines)


def render_scaling(results: list[ChildResult], settings: Settings) -> str:
    """Markdown for part (b): per size, then the growth exponents."""
    rows = []
    for r in results:
        p = r.payload
        rows.append(
            [
                p["candidate"],
                f"{p['n']:,}",
                f"{p['pipeline_seconds']:.2f}",
                f"{p['fit_seconds']:.2f}",
                f"{p['bootstrap_seconds']:.1f}",
                f"{p['interval_seconds']:.2f}",
                f"{p['total_seconds']:.1f}",
                f"{_projected(p):.0f}",
                mb(p["rss_before"]),
                mb(p["peak_rss"]),
            ]
        )
    exponent_rows = []
    for candidate in settings.scale_candidates:
        ps = [r.payload for r in results if r.payload["candidate"] == candidate]
        sizes = [p["n"] for p in ps]
        exponent_rows.append(
            [
                candidate,
                f"{growth_exponent(sizes, [p['total_seconds'] for p in ps]):.2f}",
                f"{growth_exponent(sizes, [_projected(p) for p in ps]):.2f}",
                f"{growth_exponent(sizes, [p['pipeline_seconds'] for p in ps]):.2f}",
                f"{growth_exponent(sizes, [p['fit_seconds'] for p in ps]):.2f}",
                f"{growth_exponent(sizes, [max(p['peak_rss'] - p['rss_before'], 1) for p in ps]):.2f}",
            ]
        )
    k = settings.scale_bootstrap
    return "\n".join(
        [
            md_table(
                [
                    "candidate",
                    "n",
                    "pipeline fit+transform s",
                    "candidate fit s",
                    f"bootstrap ({k} refits) s",
                    "intervals s",
                    "total s (measured)",
                    f"projected s at {DEFAULT_BOOTSTRAP} refits",
                    "RSS before fit (MB)",
                    "peak RSS (MB)",
                ],
                rows,
                "lrrrrrrrrr",
            ),
            "",
            "Growth exponents (slope of log time, or log memory above the pre-fit level, on log n; 1 = linear):",
            "",
            md_table(
                ["candidate", "total (measured)", f"total (projected, {DEFAULT_BOOTSTRAP} refits)", "pipeline", "candidate fit", "fit memory"],
                exponent_rows,
            ),
        ]
    )


def run(quick: bool, out_dir: Path, settings: Settings | None = None) -> str:
    """Run section 3 and return its Markdown; child logs go to ``out_dir/training/``."""
    settings = settings or (QUICK if quick else FULL)
    work = out_dir / "training"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=work) as tmp:  # fresh MLflow stores: no earlier champion to compare with
        jobs = measure_jobs(settings, Path(tmp))
    scaling = measure_scaling(settings, work)
    minutes = (time.perf_counter() - started) / 60
    config_note = (
        "the packaged default config (5-fold nested CV x 3 repeats, inner 3 folds, 4 candidates, "
        "199 permutations per outcome, 100 bootstrap refits)"
        if not settings.job_overrides
        else f"the default config with `{json.dumps(settings.job_overrides)}`"
    )
    return "\n".join(
        [
            "## 3. Training",
            "",
            f"{'QUICK smoke run: tiny settings, not the default job. ' if quick else ''}Measured in {minutes:.1f} min. "
            "Each measurement is one child process; memory is the peak of the summed resident memory of the child and all "
            "its descendants, polled every 0.2 s. The machine is shared: compare the rows of one run, not across runs.",
            "",
            f"### (a) Full training job, n = {settings.job_n}: local executor vs 2-worker Dask local cluster",
            "",
            f"`run_training` on `simulate(\"final\", {settings.job_n}, {settings.job_seed})` with {config_note}, "
            "both outcomes, MLflow logging and registration into a fresh sqlite store; wall time includes interpreter "
            "start-up, imports and (for Dask) starting and stopping the cluster.",
            "",
            render_jobs(jobs, settings),
            "",
            "### (b) Feature pipeline + champion fit at growing n",
            "",
            f"The steps of `fit_champion` on `simulate(\"final\", n, 1)` (pain): pipeline fit and transform, candidate fit, "
            f"{settings.scale_bootstrap} bootstrap refits (the default is {DEFAULT_BOOTSTRAP}; the projection scales the "
            "measured refits and intervals up), and intervals for every training row. One process per row, single "
            "LightGBM thread as configured. Simulating the patients is not timed.",
            "",
            render_scaling(scaling, settings),
            "",
        ]
    )


if __name__ == "__main__":
    _main()
