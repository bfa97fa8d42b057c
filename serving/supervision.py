"""What the clinic API needs around BentoML's process supervisor: a fatal start-up stops it, deaths are logged.

``bentoml serve`` (BentoML 1.4) runs a circus *arbiter* that binds the port and
then starts the worker processes, respawning any worker that exits, forever and
silently: a worker that cannot start (no champion, a corrupt model file) is
restarted every 10-20 s while the port accepts connections and answers nothing,
and a killed worker comes back about 20 s later with no trace in the log.

The service's ``@bentoml.on_deployment`` hook runs in the arbiter process before
the port is bound; it verifies the settings and the champions itself (see
``serving.service``) and then calls :func:`start_supervision`, which

- starts a :class:`WorkerWatch` thread that logs every worker that disappears
  without having shut down cleanly (killed, crashed, out of memory), and every
  replacement;
- tells the workers (through the environment they inherit) where the
  supervisor is, so a worker that still fails to start (the registry changed
  between the check and the worker, say) calls :func:`stop_supervisor`: it
  records its one-line reason and stops the arbiter instead of being respawned,
  and the arbiter exits with status 3 after printing that line.

Workers call :func:`mark_clean_stop` when their application has shut down, so that a normal
shutdown (Ctrl-C, SIGTERM) is not reported as a death, and :func:`die_with_supervisor` when they
start: BentoML puts each worker in a session of its own, so a SIGKILL of the server's process group
(or of the arbiter alone) would leave a worker holding the port and answering requests, and a
restart would find the port taken.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

log = logging.getLogger("responders.supervision")

STATE_ENV = "RESPONDERS_SUPERVISOR_STATE"
SUPERVISOR_ENV = "RESPONDERS_SUPERVISOR_PID"
WORKER_MODULE = "_bentoml_impl.worker.service"
FATAL_EXIT_STATUS = 3
_FATAL = "fatal"


def start_supervision(interval: float = 0.5) -> Path:
    """In the arbiter process, before any worker exists: shared state, the worker watch, the exit status.

    Returns the state directory (removed when the arbiter exits).
    """
    state = Path(tempfile.mkdtemp(prefix="responders-supervisor-"))
    # The workers inherit the arbiter's environment (circus copies it when it creates the watcher,
    # which happens after the deployment hook that calls this).
    os.environ[STATE_ENV] = str(state)
    os.environ[SUPERVISOR_ENV] = str(os.getpid())
    WorkerWatch(state, interval).start()
    atexit.register(_finish, state)
    return state


def _finish(state: Path) -> None:
    fatal = state / _FATAL
    message = fatal.read_text().strip() if fatal.exists() else None
    shutil.rmtree(state, ignore_errors=True)
    if message:
        # BentoML's arbiter exits 0 however it was stopped; a start-up failure must not look like success.
        print(message, file=sys.stderr, flush=True)
        logging.shutdown()
        sys.stdout.flush()
        os._exit(FATAL_EXIT_STATUS)


def stop_supervisor(message: str) -> bool:
    """From a worker that cannot start: record ``message`` and stop the arbiter instead of being respawned.

    Does nothing (returns False) unless this process is a worker of a supervised
    server, i.e. its parent is the arbiter that called :func:`start_supervision`;
    in-process use (tests, ``Service.to_asgi()``) just raises as usual.
    """
    state, supervisor = os.environ.get(STATE_ENV), os.environ.get(SUPERVISOR_ENV)
    if not state or not supervisor or not supervisor.isdigit() or int(supervisor) != os.getppid():
        return False
    log.error("%s; stopping the server instead of restarting this worker", message)
    try:
        Path(state, _FATAL).write_text(message.replace("\n", " ") + "\n")
        os.kill(int(supervisor), signal.SIGTERM)
    except OSError:
        return False
    return True


def mark_clean_stop() -> None:
    """From a worker whose application has shut down: this exit is a shutdown, not a death."""
    state = os.environ.get(STATE_ENV)
    if state and Path(state).is_dir():
        Path(state, f"stopped-{os.getpid()}").touch()


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_supervisor(interval: float = 0.5) -> bool:
    """In a worker of a supervised server: exit as soon as the arbiter that started it is gone.

    On Linux the kernel kills the worker when its parent dies (``PR_SET_PDEATHSIG``);
    a watchdog thread checks the parent id as well, everywhere, in case the parent
    died before this call or the platform has no such signal. Does nothing (returns
    False) outside a supervised server (tests, ``Service.to_asgi()``).
    """
    supervisor = os.environ.get(SUPERVISOR_ENV, "")
    if not supervisor.isdigit() or os.environ.get(STATE_ENV) is None:
        return False
    arbiter = int(supervisor)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still ends the worker, within ``interval``
    ParentWatch(arbiter, interval).start()
    return True


class ParentWatch(threading.Thread):
    """Ends this worker process when its parent is no longer the arbiter (which has then died)."""

    def __init__(self, arbiter: int, interval: float = 0.5):
        super().__init__(name="responders-parent-watch", daemon=True)
        self.arbiter = arbiter
        self.interval = interval

    def run(self) -> None:
        while os.getppid() == self.arbiter:
            time.sleep(self.interval)
        log.error("the server process %d is gone; worker process %d stops to free the port", self.arbiter, os.getpid())
        logging.shutdown()
        os._exit(1)


def _is_worker(process: psutil.Process) -> bool:
    try:
        return WORKER_MODULE in process.cmdline()
    except psutil.Error:
        return False


class WorkerWatch(threading.Thread):
    """Logs the death of a worker process of this arbiter, and its replacement.

    Polls the arbiter's child processes every ``interval`` seconds. A worker that
    is gone without a clean-stop marker died: killed, crashed or out of memory.
    The arbiter reaps it (so its exit status is not available here) and starts
    a replacement at its next check (BentoML checks every 10 s); the replacement
    answers once it has loaded the models.
    """

    def __init__(self, state: Path, interval: float = 0.5):
        super().__init__(name="responders-worker-watch", daemon=True)
        self.state = state
        self.interval = interval

    def run(self) -> None:
        me = psutil.Process()
        known: dict[int, float] = {}
        deaths = 0
        while self.state.is_dir():
            try:
                workers = {p.pid: p for p in me.children() if _is_worker(p)}
            except psutil.Error:
                workers = {}
            # Deaths first: a replacement that BentoML started before this poll saw the death is still a replacement.
            for pid in [p for p in known if p not in workers]:
                started = known.pop(pid)
                marker = self.state / f"stopped-{pid}"
                if marker.exists():
                    marker.unlink(missing_ok=True)
                    continue
                if (self.state / _FATAL).exists():
                    continue  # the worker logged why it could not start, and the server is stopping
                deaths += 1
                log.error(
                    "worker process %d died after %.0f s without shutting down (killed, crashed or out of memory); "
                    "requests in flight on it failed. BentoML starts a replacement within about 10 s, which answers "
                    "once it has loaded the models",
                    pid,
                    time.time() - started,
                )
            for pid, process in workers.items():
                if pid in known:
                    continue
                try:
                    known[pid] = process.create_time()
                except psutil.Error:
                    known[pid] = time.time()
                if deaths:
                    log.warning("replacement worker process %d started; it answers once it has loaded the models", pid)
            time.sleep(self.interval)
