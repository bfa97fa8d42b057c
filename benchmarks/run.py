"""Run the benchmark sections and rewrite ``benchmarks/RESULTS.md``.

    python -m benchmarks.run            # full run (make bench), writes benchmarks/RESULTS.md
    python -m benchmarks.run --quick    # smoke run (make bench-quick), writes benchmarks/out/RESULTS-quick.md

Sections are modules ``benchmarks/<name>.py`` exposing ``run(quick: bool, out_dir: Path) -> str``
(a Markdown section). They run in the order of :data:`SECTIONS`; a section whose module does not
exist yet is listed as not run, and a section that fails is reported with its error while the
others still run (the exit code is then non-zero).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from benchmarks.common import REPO, quiet_environment

SECTIONS = ("recovery", "serving", "training", "heldout", "intervals", "large")
TITLES = {
    "recovery": "1. Subgroup recovery",
    "serving": "2. Serving",
    "training": "3. Training",
    "heldout": "4. The heterogeneity test above 2,000 patients",
    "intervals": "5. Per-patient intervals",
    "large": "6. The served answer on large trials",
}
PACKAGES = (
    "numpy",
    "pandas",
    "scikit-learn",
    "lightgbm",
    "shap",
    "mlflow",
    "bentoml",
    "dask",
    "distributed",
    "joblib",
    "econml",
    "causalml",
)
RESULTS = REPO / "benchmarks" / "RESULTS.md"
OUT = REPO / "benchmarks" / "out"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, str]:
    """CPU model, cores, RAM, OS and Python of this machine."""
    import psutil

    return {
        "CPU": _cpu_model(),
        "cores": f"{psutil.cpu_count(logical=False) or '?'} physical / {psutil.cpu_count(logical=True)} logical",
        "RAM": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    """Installed versions of the packages the figures depend on."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision() -> str:
    """Commit and whether the working tree had uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        # RESULTS.md and the stored campaign files are this runner's output: a section run after another in the same
        # checkout is still that commit's code (and a resumed campaign still matches its key).
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/RESULTS.md", ":(exclude)benchmarks/campaigns"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}{' + uncommitted changes' if dirty else ''}"


def command_line(argv: list[str]) -> str:
    """The exact command: the make target that called us (BENCH_COMMAND) and the Python invocation."""
    python = shlex.join([os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable, "-m", "benchmarks.run", *argv])
    outer = os.environ.get("BENCH_COMMAND")
    knobs = " ".join(
        f"{k}={os.environ[k]}"
        for k in ("BENCH_RECOVERY", "BENCH_REPLICATES_SCALE", "BENCH_RESUME", "BENCH_DEADLINE")
        if os.environ.get(k) and f"{k}=" not in (outer or "")  # a knob the caller already wrote once
    )
    if outer and knobs:
        outer = f"{knobs} {outer}"
    return f"`{outer}` (runs `{python}`)" if outer else f"`{python}`"


def previous_sections(path: Path) -> dict[str, str]:
    """The sections of an earlier RESULTS.md, by section name, each marked with the run it came from.

    A run of some sections (``--sections``) keeps the other sections' figures instead of wiping them;
    they are labelled as kept, with the date and command of the run that measured them.
    """
    if not path.exists():
        return {}
    text = path.read_text()
    lines = text.splitlines()
    date = next((line.removeprefix("- Date:").split(";")[0].strip() for line in lines if line.startswith("- Date:")), "unknown date")
    command = next((line.removeprefix("- Command:").split(" (runs ")[0].strip() for line in lines if line.startswith("- Command:")), "")
    by_title = {title: name for name, title in TITLES.items()}
    out: dict[str, str] = {}
    for chunk in text.split("\n## ")[1:]:
        heading, _, body = chunk.partition("\n")
        name = by_title.get(heading.strip())
        if name is None or body.lstrip().startswith("Not run") or "**FAILED**" in body:
            continue
        if not body.lstrip().startswith("> Kept from"):
            body = f"\n> Kept from the run of {date} ({command}); not re-run in this one.\n" + body
        out[name] = f"## {heading}\n{body.rstrip()}\n"
    return out


def run_sections(names: list[str], quick: bool, out_dir: Path) -> tuple[list[str], dict[str, float], list[str]]:
    """Run each section; returns its Markdown parts, run times and the names of failed sections."""
    parts, seconds, failed = [], {}, []
    for name in names:
        module_name = f"benchmarks.{name}"
        if importlib.util.find_spec(module_name) is None:
            parts.append(f"## {TITLES.get(name, name)}\n\nNot run: `benchmarks/{name}.py` does not exist yet.\n")
            continue
        print(f"[bench] section {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(module_name)
            markdown = module.run(quick=quick, out_dir=out_dir)
        except Exception:
            failed.append(name)
            error = traceback.format_exc()
            print(error, file=sys.stderr, flush=True)
            markdown = f"## {TITLES.get(name, name)}\n\n**FAILED** in this run:\n\n```text\n{error[-4000:]}\n```\n"
        seconds[name] = time.perf_counter() - started
        print(f"[bench] section {name}: {seconds[name] / 60:.1f} min", file=sys.stderr, flush=True)
        parts.append(markdown.rstrip() + "\n")
    return parts, seconds, failed


def render(parts: list[str], seconds: dict[str, float], argv: list[str], quick: bool, started: datetime, total: float, load: tuple) -> str:
    """The whole RESULTS.md."""
    info = machine()
    pkgs = versions()
    timing = ", ".join(f"{name} {s / 60:.1f} min" for name, s in seconds.items())
    header = [
        "# Benchmark results" + (" (QUICK smoke run)" if quick else ""),
        "",
        "Written by `benchmarks/run.py`; do not edit by hand. Everything below comes from one run, side by side, because "
        "these machines are shared and noisy: read ratios between rows, not absolute times across runs. "
        "All data are simulated (`training/simulate.py`): a validation harness, not findings about real patients.",
        "",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}; total {total / 60:.1f} min ({timing})",
        f"- Command: {command_line(argv)}",
        f"- Machine: {info['CPU']}, {info['cores']} cores, {info['RAM']} RAM, {info['OS']}; "
        f"load average at start {load[0]:.1f} / end {load[1]:.1f} (1 min)",
        f"- Python {info['Python']}; " + ", ".join(f"{k} {v}" for k, v in pkgs.items()),
        f"- Code: {git_revision()}",
        "",
    ]
    return "\n".join(header) + "\n" + "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``make bench`` / ``make bench-quick``."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke run of a few minutes, not estimates")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--results", type=Path, help="where to write the Markdown (default: RESULTS.md, or out/RESULTS-quick.md with --quick)")
    parser.add_argument("--out-dir", type=Path, default=OUT, help="raw per-replicate data and child logs")
    args = parser.parse_args(argv)
    quiet_environment()
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")
    # A smoke run must not overwrite the measured figures.
    results = args.results or (args.out_dir / "RESULTS-quick.md" if args.quick else RESULTS)
    out_dir = args.out_dir / ("quick" if args.quick else "full")
    started_at = datetime.now(UTC)
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    kept = previous_sections(results)
    names = [s for s in SECTIONS if s in names]
    ran, seconds, failed = run_sections(names, args.quick, out_dir)
    # RESULTS.md always has every section, in order: a section left out of this run keeps its
    # earlier figures (labelled as such) or says it was not run.
    parts, fresh = [], dict(zip(names, ran, strict=True))
    for name in SECTIONS:
        if name in fresh:
            parts.append(fresh[name])
        else:
            parts.append(kept.get(name) or f"## {TITLES[name]}\n\nNot run in this run (`--sections {','.join(names)}`).\n")
    total = time.perf_counter() - started
    text = render(parts, seconds, argv, args.quick, started_at, total, (load_start, os.getloadavg()[0]))
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(text)
    print(f"[bench] wrote {results} ({total / 60:.1f} min)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
