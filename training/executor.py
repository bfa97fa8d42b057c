"""One executor for every resampling loop: local processes by default, or a Dask cluster.

Tasks are plain picklable callables applied to a list of items, each item
carrying its own seed, and results come back in submission order. With
single-threaded math inside each task the same seed gives the same numbers on
either executor. Every loop reports progress through ``core.progress``: a
bar on a terminal, rate-limited log lines (done/total, ETA) anywhere else.

Data that every task of a loop reads (the feature table, the arm and outcome
vectors, the config) is passed once as ``shared`` and reaches each worker
once, not once per task: Dask scatters it to the workers
(``client.scatter(..., broadcast=True)``) and the tasks name it; local workers
read it from one pickle file written for the loop and keep it in memory for
the loop's later tasks. The task function is then called as ``fn(item, shared)``.

Every ``map`` is recorded in :data:`MAP_LOG` (its description, executor,
workers, tasks and the seconds the caller waited); with
``MAP_LOG.measure_bytes`` on it also records the pickled sizes of the shared
object, of the items sent and of the results returned (the benchmark of
training time turns it on; counting re-pickles items and results on the
driver, so a job leaves it off). The counters change no result.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import signal
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from threadpoolctl import threadpool_limits

from core.progress import task_progress

_log = logging.getLogger("responders.executor")


@dataclass
class MapRecord:
    """One ``Executor.map`` as the driver saw it (bytes are 0 unless ``MAP_LOG.measure_bytes`` was on)."""

    desc: str
    executor: str
    workers: int
    tasks: int
    seconds: float  # wall time the caller waited, scatter and gathering included
    shared_bytes: int = 0  # pickled size of ``shared``: sent to each worker (Dask) or written to a file (local)
    item_bytes: int = 0  # pickled size of every item together (each task's own payload)
    result_bytes: int = 0  # pickled size of every result together (what the driver gathers)
    count_seconds: float = 0.0  # of ``seconds``, the driver's time spent counting bytes (pickling only to measure)

    def to_dict(self) -> dict:
        return asdict(self)


class MapLog:
    """The recent ``map`` calls of this process (the driver), newest last; bounded, so a long-lived process never grows."""

    def __init__(self, maxlen: int = 2_000):
        self.records: deque[MapRecord] = deque(maxlen=maxlen)
        self.measure_bytes = False

    def clear(self) -> None:
        self.records.clear()

    def to_list(self) -> list[dict]:
        return [r.to_dict() for r in self.records]


MAP_LOG = MapLog()


class _ByteCounter:
    """A write-only file that only counts: the pickled size of an object without holding its bytes."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        self.n += size
        return size


def pickled_size(obj: Any) -> int:
    """Bytes of ``obj`` pickled with the highest protocol (0 for None)."""
    if obj is None:
        return 0
    counter = _ByteCounter()
    pickle.dump(obj, counter, protocol=pickle.HIGHEST_PROTOCOL)
    return counter.n


@contextmanager
def _recorded(desc: str, executor: str, workers: int, items: list, shared: Any) -> Iterator[MapRecord]:
    """Append this map's record to :data:`MAP_LOG` once it returns (the caller fills in shared/result bytes)."""
    started = time.perf_counter()
    record = MapRecord(desc, executor, workers, len(items), 0.0)
    if MAP_LOG.measure_bytes:
        record.item_bytes = sum(pickled_size(item) for item in items)
        record.count_seconds += time.perf_counter() - started
    yield record
    record.seconds = time.perf_counter() - started
    MAP_LOG.records.append(record)


def _count_results(record: MapRecord, results: list) -> None:
    if MAP_LOG.measure_bytes:
        started = time.perf_counter()
        record.result_bytes = sum(pickled_size(r) for r in results)
        record.count_seconds += time.perf_counter() - started


def _count_shared(record: MapRecord, shared: Any) -> None:
    if MAP_LOG.measure_bytes:
        started = time.perf_counter()
        record.shared_bytes = pickled_size(shared)
        record.count_seconds += time.perf_counter() - started


class Executor(Protocol):
    name: str

    def map(self, fn: Callable[..., Any], items: Sequence[Any], desc: str = "", shared: Any = None, progress: Any = None) -> list[Any]: ...


@contextmanager
def _counter(progress: Any, total: int, desc: str) -> Iterator[Any]:
    """The caller's progress counter (a loop run in batches counts as one), or a new one for this map."""
    if progress is not None:
        yield progress
        return
    with task_progress(total, desc) as bar:
        yield bar


def _single_threaded(fn: Callable[..., Any], item: Any, shared: Any = None) -> Any:
    # BLAS threads would make float sums depend on scheduling; one thread per task.
    with threadpool_limits(limits=1):
        return fn(item) if shared is None else fn(item, shared)


# Local workers: the shared object is read from its file once per worker process and loop.
_LOADED: dict[str, Any] = {}


def _from_file(fn: Callable[..., Any], path: str, item: Any) -> Any:
    shared = _LOADED.get(path)
    if shared is None:
        _LOADED.clear()  # an earlier loop's data is not needed any more
        with open(path, "rb") as handle:
            shared = _LOADED[path] = pickle.load(handle)
    return _single_threaded(fn, item, shared)


class LocalExecutor:
    """joblib (loky) worker processes on this machine; ``workers=1`` runs in-process."""

    name = "local"

    def __init__(self, workers: int | None = None):
        self.workers = workers or os.cpu_count() or 1

    def map(self, fn, items, desc="", shared=None, progress=None):
        items = list(items)
        with _recorded(desc, self.name, self.workers, items, shared) as record:
            results = self._map(fn, items, desc, shared, progress, record)
            _count_results(record, results)
        return results

    def _map(self, fn, items, desc, shared, progress, record: MapRecord):
        if self.workers == 1 or len(items) <= 1:
            _count_shared(record, shared)  # in-process: nothing is sent; the size says what would be
            results = []
            with _counter(progress, len(items), desc) as bar:
                for item in items:
                    results.append(_single_threaded(fn, item, shared))
                    bar.update()
            return results
        from joblib import Parallel, delayed

        _wait_for_start()
        with _shared_file(shared) as path:
            if path is not None:
                record.shared_bytes = os.path.getsize(path)  # written anyway: free to count
            task = partial(_single_threaded, fn) if path is None else partial(_from_file, fn, path)
            # loky keeps its worker processes between loops: start-up is paid once per job.
            parallel = Parallel(n_jobs=self.workers, backend="loky", return_as="generator")
            results = []
            with _counter(progress, len(items), desc) as bar:
                for result in parallel(delayed(task)(item) for item in items):
                    results.append(result)
                    bar.update()
        return results


_INTERRUPTED = threading.Event()


def quiet_pool_race_on_interrupt() -> None:
    """After Ctrl-C, drop the one traceback loky's pool can print while the job is being stopped.

    Ctrl-C while loky's workers are busy: its manager thread may look up a pending call that the interrupted
    main thread has just cancelled and die with a ``KeyError`` (a race inside loky, not the job's error), whose
    traceback lands under the job's own one-line "Training interrupted" message. Once SIGINT has arrived, that
    exception from that thread is not printed; any other thread's error, or that one before an interrupt, still is.
    The process's SIGINT handling is otherwise unchanged (``KeyboardInterrupt`` as before). Call once, from the
    main thread of a command-line job.
    """
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN or getattr(previous, "_marks_interrupt", False):
        return

    def on_sigint(signum, frame):
        _INTERRUPTED.set()
        (previous if callable(previous) else signal.default_int_handler)(signum, frame)

    on_sigint._marks_interrupt = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGINT, on_sigint)
    hook = threading.excepthook

    def excepthook(args: threading.ExceptHookArgs) -> None:
        if _INTERRUPTED.is_set() and args.exc_type is KeyError and getattr(args.thread, "name", "") == "ExecutorManagerThread":
            return
        hook(args)

    threading.excepthook = excepthook


def start_local_workers(workers: int | None, modules: Sequence[str]) -> None:
    """Start the local executor's worker processes now, each importing ``modules``, in the background.

    Returns at once. loky keeps one pool of workers per process and every later
    :class:`LocalExecutor` map with the same number of workers reuses it, so
    the workers' start-up and imports (about 1.5 CPU-seconds each for the
    training modules) run while the caller goes on (``responders train``: its
    own imports of MLflow and the job's modules) instead of delaying its first loop. Nothing is
    computed and no seed is drawn: no result changes. The next map first waits
    for this one (joblib's temporary folders are per call: two calls at once on
    one pool clash).
    """
    workers = workers or os.cpu_count() or 1
    if workers > 1 and not _STARTING:
        from joblib import Parallel, delayed

        # A generator: joblib dispatches its tasks at once and yields as they finish.
        _STARTING.append(Parallel(n_jobs=workers, backend="loky", return_as="generator")(delayed(_import)(tuple(modules)) for _ in range(workers)))
        # A job that fails before its first map still waits for the start at exit (registered after the pool
        # was made, so this runs before loky shuts it down): joblib warns about a call nobody read.
        atexit.register(_wait_for_start)


# What a training job's worker processes run: cross-validation, the heterogeneity test (BCF) and the evaluation
# figures (imported by the workers as they start: :func:`start_local_workers`).
WORKER_MODULES = ("training.evaluation", "training.heterogeneity", "stochtree", "training.reports.evaluation")

_STARTING: list[Iterator[None]] = []  # start_local_workers' call, until the next map has waited for it


def _wait_for_start() -> None:
    atexit.unregister(_wait_for_start)
    while _STARTING:
        for _ in _STARTING.pop():
            pass


def _import(modules: tuple[str, ...]) -> None:
    from importlib import import_module

    for name in modules:
        import_module(name)


@contextmanager
def _shared_file(shared: Any) -> Iterator[str | None]:
    if shared is None:
        yield None
        return
    folder = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    path = folder / f"responders-shared-{os.getpid()}-{uuid.uuid4().hex}.pkl"
    try:
        with open(path, "wb") as handle:
            pickle.dump(shared, handle, protocol=pickle.HIGHEST_PROTOCOL)
        yield str(path)
    finally:
        path.unlink(missing_ok=True)


class DaskExecutor:
    """A ``dask.distributed`` client: a running scheduler's address, or a local cluster it starts.

    A task whose worker stops is recomputed elsewhere by Dask, but the loop's scattered ``shared`` data has no
    recipe: once every worker holding it has stopped (two workers killed together for memory, a cluster
    restart), Dask cancels every task that reads it and the job failed with "cancelled for reason: already
    forgotten". Those tasks are resubmitted with the data sent again, up to ``attempts`` times in all; a task
    that raises, or that Dask gives up on after killing its workers repeatedly (``KilledWorker``), still fails the
    loop at once.
    """

    name = "dask"
    attempts = 3

    def __init__(self, client):
        self.client = client

    @property
    def workers(self) -> int:
        return max(1, len(self.client.scheduler_info(n_workers=-1).get("workers", {})))

    def map(self, fn, items, desc="", shared=None, progress=None):
        items = list(items)
        with _recorded(desc, self.name, self.workers, items, shared) as record:
            _count_shared(record, shared)
            results = self._map(fn, items, desc, shared, progress)
            _count_results(record, results)
        return results

    def _map(self, fn, items, desc, shared, progress):
        """Submit, gather in submission order; tasks lost with the shared data are sent again (see the class)."""
        results: list[Any] = [None] * len(items)
        pending = list(range(len(items)))
        with _counter(progress, len(items), desc) as bar:
            for attempt in range(1, self.attempts + 1):
                pending = self._attempt(fn, items, pending, shared, results, bar)
                if not pending:
                    return results
                if attempt < self.attempts:
                    _log.warning(
                        "%s: %d of %d tasks were lost with the loop's shared data (every worker holding it stopped); "
                        "sending it again and resubmitting them (attempt %d of %d)", desc or "map", len(pending), len(items),
                        attempt + 1, self.attempts,
                    )
        raise RuntimeError(
            f"{desc or 'map'}: {len(pending)} of {len(items)} tasks were lost with the loop's shared data "
            f"{self.attempts} times (every worker holding it stopped each time; see the workers' logs for why)"
        )

    def _attempt(self, fn, items, indices, shared, results, bar) -> list[int]:
        """Run the tasks ``indices`` once; fill ``results``; return the indices lost with the shared data."""
        from distributed import as_completed
        from distributed.client import FutureCancelledError

        kwargs = {}
        if shared is not None:
            # Once to every worker; the tasks carry only their item (and seed).
            # (in a list: scatter would send a dict's or a list's items one by one)
            [kwargs["shared"]] = self.client.scatter([shared], broadcast=True, hash=False)
        futures = self.client.map(partial(_single_threaded, fn), [items[i] for i in indices], pure=False, **kwargs)
        order = {f.key: i for f, i in zip(futures, indices, strict=True)}
        lost: list[int] = []
        try:
            for future in as_completed(futures):
                try:
                    results[order[future.key]] = future.result()
                except FutureCancelledError:  # its input is gone: scattered data has no recipe to recompute it
                    if "shared" not in kwargs:
                        raise
                    lost.append(order[future.key])
                    continue
                bar.update()
        finally:
            self.client.cancel(futures)
            if "shared" in kwargs:
                kwargs["shared"].release()
        return sorted(lost)


@contextmanager
def make_executor(kind: str = "local", workers: int | None = None, scheduler: str | None = None) -> Iterator[Executor]:
    """Yield an executor; a Dask local cluster (2 workers by default) is started and stopped here."""
    if kind == "local" and scheduler is None:
        yield LocalExecutor(workers)
        return
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield DaskExecutor(client)
        return
    with LocalCluster(
        n_workers=workers or 2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    ) as cluster, Client(cluster) as client:
        yield DaskExecutor(client)
