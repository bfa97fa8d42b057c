"""Readiness: each worker warms up on synthetic patients before ``/readyz`` reports it ready, and says what it cost.

Ready means warm: the warm-up sends each data endpoint a JSON body the way a
request arrives and does everything a request does with it after the token
check (the body checks of :func:`serving.guards.check_body`, BentoML's request
model, the endpoint itself, the response serialised to JSON bytes):
``/predict`` with a full batch (``RESPONDERS_MAX_BATCH`` patients) and
``/explain`` with a few patients, each a second time so that the timings show
what a request after ready costs. Without it the first calls paid for lazy
imports, first allocations and caches (a first 500-patient ``/predict`` took
4.6-7.2 s and kept about 280 MiB, a first ``/explain`` about 1 s).

Synthetic patients only: the champions' training medians and modes
(``example_input``), written in the forms a clinic sends (lab values as text
and as numbers, with units, below the detection limit, a titre, missing), no
patient data.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import bentoml

from core.runtime.forests import load_compiled_quantiles
from serving.compat.bentoml import render_metrics
from serving.scoring import Scorer
from serving.trial import SPEC

EXPLAIN_PATIENTS = 5  # one of each form of a lab value (see synthetic_forms)


def synthetic_patients(scorer: Scorer, n: int) -> list[dict[str, Any]]:
    """``n`` copies of the champions' typical patient (training medians and modes), validated as a request would be."""
    clean = scorer.patient_model.model_validate(_typical(scorer)).model_dump()
    return [dict(clean, **{SPEC.id_column: f"warm-up-{i + 1}"}) for i in range(n)]


def _typical(scorer: Scorer) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for champion in scorer.champions.values():
        example = champion.model.example_input()
        row.update(json.loads(example.to_json(orient="records"))[0])
    return row


def synthetic_forms(scorer: Scorer) -> list[dict[str, Any]]:
    """The typical patient in each form a request may carry its labs, as JSON-ready dicts (every one scorable).

    The typical values as sent by ``example_input``; every lab as a JSON
    number with its unit named; every lab below its detection limit (``<LOD``)
    and titres positive (``1:320``); every lab missing (imputed). A form the
    champions cannot score (a spec without labs, say) is left out.
    """
    typical = _typical(scorer)
    catalog = scorer.spec.lab_catalog()
    numbers, below, missing = dict(typical), dict(typical), dict(typical)
    for analyte, lab in scorer.spec.labs.items():
        entry = catalog[analyte]
        missing[lab.column] = None
        if entry.kind == "titre":
            below[lab.column] = f"1:{(entry.reference_dilution or 40) * 8}"
            continue
        try:
            numbers[lab.column] = float(typical[lab.column])
        except (TypeError, ValueError):
            pass
        numbers[f"{lab.column}_unit"] = entry.unit
        if entry.lod:
            below[lab.column] = f"<{entry.lod:g}"
    forms = []
    for form in (typical, numbers, below, missing):
        try:
            clean = scorer.patient_model.model_validate(form).model_dump()
        except ValueError:
            continue
        _, _, errors = scorer._parse([clean])
        if not errors:
            forms.append(json.loads(json.dumps(form, default=str)))
    return forms or [typical]


def warm_up_body(scorer: Scorer, n: int) -> bytes:
    """A request body of ``n`` synthetic patients (the forms in turn), as a client would send it."""
    forms = synthetic_forms(scorer)
    patients = [dict(forms[i % len(forms)], **{SPEC.id_column: f"warm-up-{i + 1}"}) for i in range(n)]
    return json.dumps({"patients": patients}).encode()


@dataclass
class WarmUp:
    """What the warm-up sent each endpoint and what it cost: seconds of the first and the second call, RSS in bytes."""

    patients: dict[str, int]
    first: dict[str, float]
    second: dict[str, float]
    rss_before: int
    rss_after: int

    def summary(self) -> str:
        parts = [
            f"/{route} of {n} synthetic patients took {self.first[route]:.2f} s (then {self.second[route]:.3f} s)"
            for route, n in self.patients.items()
        ]
        return f"warm: {', '.join(parts)}; RSS {self.rss_before / 2**20:.0f} -> {self.rss_after / 2**20:.0f} MiB (before reporting ready)"


async def warm_up(scorer: Scorer, batch: int, answer: Callable[[str, bytes], Awaitable[bytes]]) -> WarmUp:
    """Send ``/predict`` ``batch`` synthetic patients and ``/explain`` a few, twice each, through ``answer(route, body)``.

    ``answer`` does what a request does with its body, in the threads a
    request uses (the service's :meth:`~serving.service.ResponderService._answer`:
    the event loop's thread parses and serialises, a worker thread scores; each
    thread has its own heap). The bodies and answers are freed afterwards; the
    memory they needed stays with the process, so the first real batch of that
    size does not add to it: large buffers are mapped on their own
    (:func:`steady_large_buffers`) and ``/explain`` is warmed before ``/predict``
    (the other way round the first two real batches still added 5-10 MiB).
    """
    steady_large_buffers()
    # Intervals of large batches use a compiled loop that a small warm-up batch would not load (the first large
    # request would: 0.3-0.5 s).
    load_compiled_quantiles()
    # /explain first: its lasting allocations (explainers, caches) then sit below what /predict's large answers use.
    bodies = {"explain": warm_up_body(scorer, min(batch, EXPLAIN_PATIENTS)), "predict": warm_up_body(scorer, batch)}
    patients = {route: len(json.loads(body)["patients"]) for route, body in bodies.items()}
    rss_before = _rss()
    first: dict[str, float] = {}
    second: dict[str, float] = {}
    for route, body in bodies.items():
        for timings in (first, second):
            started = time.perf_counter()
            await answer(route, body)
            timings[route] = time.perf_counter() - started
    del bodies
    gc.collect()
    return WarmUp(patients, first, second, rss_before, _rss())


LARGE_BUFFER = 1 << 20  # bytes from which glibc's malloc maps a block of its own (returned to the system when freed)
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def steady_large_buffers() -> bool:
    """Fix glibc's threshold for a block of its own (mmap) at :data:`LARGE_BUFFER`; True when set (Linux, glibc).

    By default the threshold moves up to the size of every mapped block that
    is freed: after the warm-up's /predict answers (2.7 MB of JSON, and the
    copies BentoML makes) it sat at their size, so a clinic's first answers,
    a little smaller, were carved from the heap instead and the heap kept
    them: a first 500-patient /predict after ready left RSS 8-10 MiB higher
    (in process; +14 MiB for the server tree over HTTP), the second ~2 MiB
    more. With a fixed threshold a request's large buffers are mapped and
    unmapped each time (a page fault per 4 KiB: well under a millisecond for
    a 2.7 MB answer) and the heap only holds what the warm-up already sized.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, LARGE_BUFFER))
    except (OSError, AttributeError):  # not glibc: nothing to fix
        return False


def _rss() -> int:
    """This process's resident memory in bytes (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            import os

            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_WARM_UP_GAUGES: dict = {}


def _record_warm_up(warm: WarmUp) -> None:
    """``responders_warm_up_seconds{endpoint=...}`` and ``responders_warm_up_patients{endpoint=...}`` on ``/metrics``."""
    if not _WARM_UP_GAUGES:
        _WARM_UP_GAUGES["seconds"] = bentoml.metrics.Gauge(
            name="responders_warm_up_seconds",
            documentation="Seconds the worker spent warming an endpoint (synthetic patients, first call) before reporting ready",
            labelnames=["endpoint"],
            multiprocess_mode="livemax",
        )
        _WARM_UP_GAUGES["patients"] = bentoml.metrics.Gauge(
            name="responders_warm_up_patients",
            documentation="Synthetic patients per request the worker sent an endpoint while warming up, before reporting ready",
            labelnames=["endpoint"],
            multiprocess_mode="livemax",
        )
    for endpoint, seconds in warm.first.items():
        _WARM_UP_GAUGES["seconds"].labels(endpoint=f"/{endpoint}").set(seconds)
        _WARM_UP_GAUGES["patients"].labels(endpoint=f"/{endpoint}").set(warm.patients[endpoint])


def _warm_metrics() -> None:
    """Render the metrics once: the first rendering (prometheus' multi-process collector, also used when a request
    is counted) cost about 0.3 s, paid otherwise by the first request after ready."""
    render_metrics()
