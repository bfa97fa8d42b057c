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
"""

from __future__ import annotations

import os
import pickle
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from threadpoolctl import threadpool_limits

from core.progress import task_progress


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
        if self.workers == 1 or len(items) <= 1:
            results = []
            with _counter(progress, len(items), desc) as bar:
                for item in items:
                    results.append(_single_threaded(fn, item, shared))
                    bar.update()
            return results
        from joblib import Parallel, delayed

        with _shared_file(shared) as path:
            task = partial(_single_threaded, fn) if path is None else partial(_from_file, fn, path)
            # loky keeps its worker processes between loops: start-up is paid once per job.
            parallel = Parallel(n_jobs=self.workers, backend="loky", return_as="generator")
            results = []
            with _counter(progress, len(items), desc) as bar:
                for result in parallel(delayed(task)(item) for item in items):
                    results.append(result)
                    bar.update()
        return results


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
    """A ``dask.distributed`` client: a running scheduler's address, or a local cluster it starts."""

    name = "dask"

    def __init__(self, client):
        self.client = client

    @property
    def workers(self) -> int:
        return max(1, len(self.client.scheduler_info(n_workers=-1).get("workers", {})))

    def map(self, fn, items, desc="", shared=None, progress=None):
        from distributed import as_completed

        items = list(items)
        kwargs = {}
        if shared is not None:
            # Once to every worker; the tasks carry only their item (and seed).
            # (in a list: scatter would send a dict's or a list's items one by one)
            [kwargs["shared"]] = self.client.scatter([shared], broadcast=True, hash=False)
        futures = self.client.map(partial(_single_threaded, fn), items, pure=False, **kwargs)
        order = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        try:
            with _counter(progress, len(futures), desc) as bar:
                for future in as_completed(futures):
                    results[order[future.key]] = future.result()
                    bar.update()
        finally:
            self.client.cancel(futures)
            if "shared" in kwargs:
                kwargs["shared"].release()
        return results


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
