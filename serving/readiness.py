"""Readiness: each worker warms up on synthetic patients before ``/readyz`` reports it ready, and says what it cost.

Synthetic patients only: the champions' training medians and modes
(``example_input``), no patient data.
"""

from __future__ import annotations

import json
from typing import Any

import bentoml

from serving.compat.bentoml import render_metrics
from serving.scoring import Scorer
from serving.trial import SPEC


def synthetic_patients(scorer: Scorer, n: int) -> list[dict[str, Any]]:
    """``n`` copies of the champions' typical patient (training medians and modes), validated as a request would be."""
    row: dict[str, Any] = {}
    for champion in scorer.champions.values():
        example = champion.model.example_input()
        row.update(json.loads(example.to_json(orient="records"))[0])
    clean = scorer.patient_model.model_validate(row).model_dump()
    return [dict(clean, **{SPEC.id_column: f"warm-up-{i + 1}"}) for i in range(n)]


def warm_up(scorer: Scorer, batch: int) -> dict[str, float]:
    """Score ``batch`` synthetic patients and explain one, as the endpoints do (answers serialised); seconds taken."""
    import time

    patients = synthetic_patients(scorer, batch)
    started = time.perf_counter()
    scorer.predict(patients).model_dump_json()
    predicted = time.perf_counter()
    scorer.explain(patients[:1]).model_dump_json()
    return {"predict": predicted - started, "explain": time.perf_counter() - predicted}


_WARM_UP_GAUGE: list = []


def _record_warm_up(timings: dict[str, float]) -> None:
    """``responders_warm_up_seconds{endpoint=...}`` on ``/metrics``: the worker warmed up, and what it cost."""
    if not _WARM_UP_GAUGE:
        _WARM_UP_GAUGE.append(
            bentoml.metrics.Gauge(
                name="responders_warm_up_seconds",
                documentation="Seconds the worker spent warming an endpoint (synthetic patients) before reporting ready",
                labelnames=["endpoint"],
                multiprocess_mode="livemax",
            )
        )
    for endpoint, seconds in timings.items():
        _WARM_UP_GAUGE[0].labels(endpoint=f"/{endpoint}").set(seconds)


def _warm_metrics() -> None:
    """Render the metrics once: the first rendering (prometheus' multi-process collector, also used when a request
    is counted) cost about 0.3 s, paid otherwise by the first request after ready."""
    render_metrics()
