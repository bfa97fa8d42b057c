"""Helpers shared by the benchmark sections: Markdown tables, Monte-Carlo errors, child processes and their memory."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent

# Usage reporting off before MLflow/BentoML are imported, here and in every child process.
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "DO_NOT_TRACK": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MPLBACKEND": "Agg",
}


def quiet_environment() -> None:
    """Set the no-telemetry variables in this process (children inherit them)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A GitHub Markdown table; ``align`` has one letter per column (l, r, c), default: first left, rest right."""
    align = align or "l" + "r" * (len(headers) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = [
        "| " + " | ".join(str(h) for h in headers) + " |",
        "| " + " | ".join(marks[a] for a in align) + " |",
    ]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, table has {len(headers)} columns: {row}")
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


def outcome_data_mask(trial, spec, outcome: str, config) -> np.ndarray:
    """The trial's rows that have the outcome's label (the rows ``training.train.outcome_data`` keeps, in order)."""
    from core.labels import responder_labels

    labels, _ = responder_labels(trial, spec.outcomes[outcome], config.responder_rules.get(outcome), config.missing_followup)
    return labels.notna().to_numpy()


def auc_top_quarter(predicted: np.ndarray, truth: np.ndarray) -> float:
    """The AUC with which ``predicted`` picks out the top quarter of ``truth`` (the issue's ranking measure).

    A constant prediction ranks no one: 0.5.
    """
    from sklearn.metrics import roc_auc_score

    if np.ptp(predicted) < 1e-12:
        return 0.5
    return float(roc_auc_score(truth >= np.quantile(truth, 0.75), predicted))


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its Monte-Carlo standard error (SD / sqrt(R)); NaN SE for a single replicate."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan")
    se = float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
    return float(np.mean(x)), se


def fmt_mean_se(values: Sequence[float], digits: int = 3, scale: float = 1.0) -> str:
    """``mean ± SE`` of replicate values (``—`` when there are none)."""
    mean, se = mean_se(values)
    if not np.isfinite(mean):
        return "—"
    mean, se = mean * scale, se * scale
    return f"{mean:.{digits}f}" if not np.isfinite(se) else f"{mean:.{digits}f} ± {se:.{digits}f}"


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson 95% interval for a binomial proportion (sensible at 0/n, unlike p ± 2 SE)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)



def per_size_bounds(bounds: list[tuple], alpha: float, bound: float, size=str) -> str:
    """The level criterion per size with the null designs pooled (each design's trials are its own seeds).

    ``bounds``: (design, n, rejections, trials, ...) per design and size; met when the pooled family-wise rate is at
    most ``alpha`` and its Wilson 95% upper limit below ``bound``; ``size`` formats n. Empty with one design.
    """
    sizes = sorted({n for _, n, *_ in bounds})
    if len({d for d, *_ in bounds}) < 2 or not sizes:
        return ""
    parts = []
    for n in sizes:
        k = sum(b[2] for b in bounds if b[1] == n)
        R = sum(b[3] for b in bounds if b[1] == n)
        hi = wilson(k, R)[1]
        met = k <= alpha * R and hi < bound
        parts.append(f"n = {size(n)}: {k}/{R} = {100 * k / R:.1f}% (upper {100 * hi:.1f}%, {'met' if met else 'not met'})")
    return "Per size, the null designs pooled: " + "; ".join(parts) + ". "

def fmt_rate(k: int, n: int) -> str:
    """A rejection rate as ``k/n = p% (SE s; 95% CI lo–hi)``: the count, the MC error and a Wilson interval."""
    if n == 0:
        return "—"
    p = k / n
    se = math.sqrt(p * (1 - p) / n)
    lo, hi = wilson(k, n)
    return f"{k}/{n} = {100 * p:.0f}% (SE {100 * se:.0f}; CI {100 * lo:.0f}–{100 * hi:.0f})"


def growth_exponent(sizes: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) on log(size): 1 is linear growth, 2 quadratic."""
    x, y = np.log(np.asarray(sizes, float)), np.log(np.asarray(values, float))
    if len(x) < 2 or not np.all(np.isfinite(y)):
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])


def tree_rss(pid: int) -> tuple[int, int]:
    """Summed resident memory (bytes) of a process and all its descendants, and how many there are (0 if gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total, len(procs)


class TreeMemory:
    """Polls the summed resident memory of a process and all its descendants; keeps the peak.

    It also keeps each process's last seen user + system CPU time, so ``cpu_seconds`` is the CPU of
    the whole tree, worker processes included (``getrusage`` misses workers that are not reaped by
    the time the child exits; a process's last 0.2 s may be missed).

    ``getrusage(RUSAGE_CHILDREN)`` only reports the largest single descendant, so a
    job whose worker processes each hold a copy of the data would look smaller than
    it is; summing the live tree every ``interval`` seconds catches that (and can
    miss a spike shorter than the interval).
    """

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.peak_processes = 0
        self._cpu: dict[int, float] = {}
        self.process_peaks: dict[int, int] = {}  # pid -> that process's own peak resident memory
        self.process_names: dict[int, str] = {}  # pid -> its command line (shortened), to tell workers from the driver
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @property
    def cpu_seconds(self) -> float:
        return sum(self._cpu.values())

    def _poll(self) -> None:
        while not self._stop.is_set():
            total, processes = tree_rss(self.pid)
            if not processes:
                return
            if total > self.peak:
                self.peak, self.peak_processes = total, processes
            self._poll_cpu()
            self._stop.wait(self.interval)

    def _poll_cpu(self) -> None:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in procs:
            try:
                times = proc.cpu_times()
                self._cpu[proc.pid] = max(self._cpu.get(proc.pid, 0.0), times.user + times.system)
                rss = proc.memory_info().rss
                if proc.pid not in self.process_names:
                    self.process_names[proc.pid] = " ".join(proc.cmdline())[:300]
                self.process_peaks[proc.pid] = max(self.process_peaks.get(proc.pid, 0), rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass

    def peaks(self) -> list[ProcessPeak]:
        """Each process seen in the tree with its own peak resident memory, the root first."""
        return [
            ProcessPeak(pid, self.process_names.get(pid, ""), peak, self._cpu.get(pid, 0.0), pid == self.pid)
            for pid, peak in sorted(self.process_peaks.items(), key=lambda item: (item[0] != self.pid, item[0]))
        ]

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class ProcessPeak:
    """One process of a measured tree: its own peak resident memory and last seen CPU seconds."""

    pid: int
    command: str
    peak_rss_bytes: int
    cpu_seconds: float
    root: bool

    @property
    def helper(self) -> bool:
        """A multiprocessing/loky resource or semaphore tracker: not a worker (a spawned worker's ``tracker_fd=`` is not one)."""
        return "resource_tracker" in self.command or "semaphore_tracker" in self.command


@dataclass
class ChildResult:
    """What a measured child process reported (its last JSON line), its wall time and peak tree memory."""

    payload: dict
    wall_seconds: float
    peak_rss_bytes: int
    peak_processes: int
    cpu_seconds: float = 0.0  # user + system of the child and every descendant seen (polled)
    processes: list[ProcessPeak] = field(default_factory=list)  # each process's own peak, the child first

    @property
    def worker_peak_bytes(self) -> int:
        """The largest own peak of any descendant that is not a tracker (an executor worker); 0 without one."""
        return max((p.peak_rss_bytes for p in self.processes if not p.root and not p.helper), default=0)

    @property
    def root_peak_bytes(self) -> int:
        """The child's own peak (the driver's), without its descendants."""
        return next((p.peak_rss_bytes for p in self.processes if p.root), 0)


def stop_process(process, timeout: float = 30.0) -> None:
    """End one of our own child processes by its handle: SIGTERM, then SIGKILL after ``timeout`` seconds."""
    import subprocess

    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_child(args: Sequence[str], timeout: float, log_path: Path | None = None, cwd: Path | None = None) -> ChildResult:
    """Run ``python -m <args>`` from the repository root, measure it, and parse the JSON line it prints last.

    The child's stderr (progress, warnings) goes to ``log_path`` so that a failure can be read afterwards.
    """
    env = {**os.environ, **QUIET_ENV}
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", *args], cwd=cwd or REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        with TreeMemory(process.pid) as memory:
            try:
                out, _ = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()  # our own child, by its id
                process.communicate()
                raise
        wall = time.perf_counter() - started
    finally:
        if log_path:
            log.close()
    if process.returncode != 0:
        tail = Path(log_path).read_text()[-3000:] if log_path else ""
        raise RuntimeError(f"benchmark child {' '.join(args)} exited with {process.returncode}\n{tail}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"benchmark child {' '.join(args)} printed no result")
    return ChildResult(json.loads(lines[-1]), wall, memory.peak, memory.peak_processes, memory.cpu_seconds, memory.peaks())


def mb(value_bytes: float) -> str:
    """Bytes as whole megabytes (MiB) for the tables."""
    return f"{value_bytes / 2**20:,.0f}"
