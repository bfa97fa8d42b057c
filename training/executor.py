"""One executor for every resampling loop: local processes by default, or a Dask cluster.

Tasks are plain picklable callables applied to a list of items, each item
carrying its own seed, and results come back in submission order. With
single-threaded math inside each task the same seed gives the same numbers on
either executor. Every loop reports progress through ``training.progress``: a
bar on a terminal, rate-limited log lines (done/total, ETA) anywhere else.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, Protocol

from threadpoolctl import threadpool_limits

from training.progress import task_progress


class Executor(Protocol):
    name: str

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], desc: str = "") -> list[Any]: ...


def _single_threaded(fn: Callable[[Any], Any], item: Any) -> Any:
    # BLAS threads would make float sums depend on scheduling; one thread per task.
    with threadpool_limits(limits=1):
        return fn(item)


class LocalExecutor:
    """joblib (loky) worker processes on this machine; ``workers=1`` runs in-process."""

    name = "local"

    def __init__(self, workers: int | None = None):
        self.workers = workers or os.cpu_count() or 1

    def map(self, fn, items, desc=""):
        task = partial(_single_threaded, fn)
        if self.workers == 1 or len(items) <= 1:
            results = []
            with task_progress(len(items), desc) as bar:
                for item in items:
                    results.append(task(item))
                    bar.update()
            return results
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=self.workers, backend="loky", return_as="generator")
        results = []
        with task_progress(len(items), desc) as bar:
            for result in parallel(delayed(task)(item) for item in items):
                results.append(result)
                bar.update()
        return results


class DaskExecutor:
    """A ``dask.distributed`` client: a running scheduler's address, or a local cluster it starts."""

    name = "dask"

    def __init__(self, client):
        self.client = client

    def map(self, fn, items, desc=""):
        from distributed import as_completed

        futures = self.client.map(partial(_single_threaded, fn), list(items), pure=False)
        order = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        with task_progress(len(futures), desc) as bar:
            for future in as_completed(futures):
                results[order[future.key]] = future.result()
                bar.update()
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
