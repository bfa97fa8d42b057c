"""Where a training job spends its time: wall and CPU seconds per phase, for the process tree.

The machines are shared, so wall time alone says little; CPU seconds of the
job's process and every process below it (executor workers included) say what
the job itself cost. A worker that exits is still counted through the parent
that reaped it (``children_user``/``children_system``). Workers of a remote
Dask scheduler are not on this machine and not counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil


def tree_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process, its descendants, and the children they reaped."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


@dataclass
class Phase:
    name: str
    category: str
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"phase": self.name, "category": self.category, "wall_s": round(self.wall_seconds, 3), "cpu_s": round(self.cpu_seconds, 3)}


class PhaseClock:
    """``start(name, category)`` closes the running phase and opens the next; ``stop()`` closes the last."""

    def __init__(self) -> None:
        self.phases: list[Phase] = []
        self.background: list[Phase] = []  # work done in a thread beside the phases (wall only; its CPU is in theirs)
        self._current: Phase | None = None
        self._wall = self._cpu = 0.0

    def start(self, name: str, category: str) -> None:
        self.stop()
        self._current = Phase(name, category)
        self._wall, self._cpu = time.perf_counter(), tree_cpu_seconds()

    def stop(self) -> None:
        if self._current is None:
            return
        self._current.wall_seconds = time.perf_counter() - self._wall
        self._current.cpu_seconds = max(0.0, tree_cpu_seconds() - self._cpu)
        self.phases.append(self._current)
        self._current = None

    def beside(self, name: str, category: str, wall_seconds: float) -> None:
        """Record work that ran in a thread beside the phases: shown, not added (the phases' wall and CPU include it)."""
        self.background.append(Phase(name, category, wall_seconds))

    def by_category(self) -> dict[str, dict[str, float]]:
        """Wall and CPU seconds summed per category, in the order the categories first ran."""
        out: dict[str, dict[str, float]] = {}
        for phase in self.phases:
            entry = out.setdefault(phase.category, {"wall_s": 0.0, "cpu_s": 0.0})
            entry["wall_s"] += phase.wall_seconds
            entry["cpu_s"] += phase.cpu_seconds
        return {k: {m: round(v, 3) for m, v in e.items()} for k, e in out.items()}

    def to_dict(self) -> dict:
        return {
            "phases": [p.to_dict() for p in self.phases],
            "by_category": self.by_category(),
            "beside": [{"phase": p.name, "category": p.category, "wall_s": round(p.wall_seconds, 3)} for p in self.background],
        }
