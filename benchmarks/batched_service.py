"""Benchmark-only variant of the clinic service with BentoML adaptive batching on /predict.

Same scorer, same champions, same auth middleware as ``serving.service``; the
only difference is ``batchable=True``: BentoML merges the patient lists of
concurrent requests into one call. Used by ``benchmarks/serving.py`` to decide
whether adaptive batching helps this workload; not part of the product API.
"""

from __future__ import annotations

import os

import bentoml

from serving import schemas as S
from serving.scoring import DEFAULT_MAX_BATCH, Scorer, resolve_champions
from serving.service import SPEC, ApiGuard, Patient, api_docs_html


@bentoml.service(name="ldn-responders-batched", traffic={"timeout": 60}, workers=1)
class BatchedResponderService:
    def __init__(self) -> None:
        self.scorer = Scorer(SPEC, resolve_champions(SPEC), max_batch=int(os.environ.get("RESPONDERS_MAX_BATCH", DEFAULT_MAX_BATCH)))

    @bentoml.api(route="/predict", batchable=True, max_batch_size=500, max_latency_ms=1000)
    def predict(self, patients: list[Patient]) -> list[S.PatientPrediction]:  # type: ignore[valid-type]
        return self.scorer.predict([p.model_dump() for p in patients]).results


BatchedResponderService.add_asgi_middleware(ApiGuard, docs_html=api_docs_html)
