"""Progress a person can follow: numbered job steps, bars on a terminal, log lines everywhere else.

A training job takes minutes. On a terminal the resampling loops show tqdm
bars; when output goes to a file, a pipe or CI (or the terminal reports a
width of 0, where tqdm draws nothing) the same loops write rate-limited log
lines with the phase, done/total and an ETA instead. ``JobSteps`` numbers the
job's phases ("step 3/8: memory: nested CV") so an interrupted or slow job
says where it is.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

log = logging.getLogger("responders.progress")

LOG_EVERY_FRACTION = 0.10
LOG_AT_LEAST_EVERY_SECONDS = 30.0


def on_terminal(stream: IO[str] | None = None) -> bool:
    """True when ``stream`` (default stderr) is a terminal that reports a usable width."""
    stream = stream if stream is not None else sys.stderr
    try:
        if not stream.isatty():
            return False
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return False


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class LogProgress:
    """A tqdm-like counter that logs ``desc: done/total unit (pct), elapsed, ETA`` lines.

    A line is written each time another ``every`` fraction of the tasks is done,
    when ``at_least_every`` seconds have passed since the last line, and at the end.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "task",
        every: float = LOG_EVERY_FRACTION,
        at_least_every: float = LOG_AT_LEAST_EVERY_SECONDS,
        logger: logging.Logger = log,
    ):
        self.total, self.desc, self.unit = total, desc or "progress", unit
        self.every, self.at_least_every, self.logger = every, at_least_every, logger
        self.done = 0
        self.started = self.last_line = time.monotonic()
        self._next_mark = every

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        fraction = self.done / self.total if self.total else 1.0
        if self.done >= self.total or fraction + 1e-12 >= self._next_mark or now - self.last_line >= self.at_least_every:
            while self._next_mark <= fraction + 1e-12:
                self._next_mark += self.every
            self.last_line = now
            self.logger.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (now if now is not None else time.monotonic()) - self.started
        units = self.unit if self.total == 1 else f"{self.unit}s"
        text = f"{self.desc}: {self.done}/{self.total} {units}"
        if self.total:
            text += f" ({self.done / self.total:.0%})"
        text += f", {format_duration(elapsed)} elapsed"
        if 0 < self.done < self.total:
            text += f", ETA {format_duration(elapsed / self.done * (self.total - self.done))}"
        return text

    def close(self) -> None:
        pass

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def task_progress(total: int, desc: str, unit: str = "task"):
    """A progress counter for a loop of ``total`` tasks: a tqdm bar on a terminal, log lines otherwise.

    Both have ``update()`` and work as context managers.
    """
    if on_terminal():
        import shutil

        from tqdm.auto import tqdm

        return tqdm(total=total, leave=False, dynamic_ncols=True, **bar_settings(desc, unit, shutil.get_terminal_size().columns))
    return LogProgress(total, desc, unit)


BAR_MIN = 10  # columns the bar itself keeps


def bar_settings(desc: str, unit: str, columns: int) -> dict[str, Any]:
    """tqdm settings whose line fits ``columns``: counts with their whole unit, elapsed and remaining time.

    tqdm's default line ends in a rate ("2.18 permutation/s") and cuts the line
    at the terminal's width, so at 120 columns a long description left
    "2.18per". Here the rate is left out and the description is shortened to
    what the width leaves, so the counts, the unit and the times always show.
    """
    units = unit if unit.endswith("s") else f"{unit}s"
    tail = f" {{percentage:3.0f}}%|{{bar}}| {{n_fmt}}/{{total_fmt}} {units} [{{elapsed}}<{{remaining}}]"
    widest = tail.format(percentage=100, bar="", n_fmt="99999", total_fmt="99999", elapsed="00:00:00", remaining="00:00:00")
    room = max(8, columns - len(widest) - 1 - BAR_MIN)
    shown = desc if len(desc) <= room else desc[: room - 1] + "\u2026"
    return {"desc": shown, "unit": unit, "bar_format": "{desc}:" + tail}


class JobSteps:
    """Numbered phases of a job: ``start`` logs ``step k/n: name`` and remembers it as ``current``."""

    def __init__(self, total: int, logger: logging.Logger = log):
        self.total, self.logger = total, logger
        self.number = 0
        self.name: str | None = None

    def start(self, name: str) -> None:
        self.number += 1
        self.total = max(self.total, self.number)  # a phase added without updating the count still reads sensibly
        self.name = name
        self.logger.info("%s", self.current)

    @property
    def current(self) -> str | None:
        return f"step {self.number}/{self.total}: {self.name}" if self.name is not None else None


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a tracked job, after its runs were marked KILLED.

    A ``KeyboardInterrupt``, so anything that handles interrupts still does;
    ``run_id`` is the job's parent run and ``phase`` the step it was in.
    """

    def __init__(self, run_id: str, phase: str | None):
        super().__init__(run_id, phase)
        self.run_id, self.phase = run_id, phase


@contextmanager
def deferred_interrupt(reraise: bool = True) -> Iterator[None]:
    """Hold SIGINT until the block is done, then raise ``KeyboardInterrupt`` (unless ``reraise`` is False).

    For short sequences that must not stop half-way (moving several registry
    aliases, marking runs KILLED). Only the main thread can install handlers;
    elsewhere the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if received and reraise:
        raise KeyboardInterrupt
