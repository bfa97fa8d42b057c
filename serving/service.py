"""The clinic REST API: a BentoML service over the registered champions.

Endpoints (POST, JSON): ``/predict``, ``/explain``, ``/report`` (HTML) and
``/metadata`` (also GET); BentoML's ``/healthz``, ``/livez``, ``/readyz``, ``/metrics``, the
OpenAPI document at ``/docs.json`` (title, version and description of this
trial's service), its readable form at ``/docs`` and a plain index page at ``/`` stay open.
Every data endpoint needs ``Authorization: Bearer <RESPONDERS_API_TOKEN>``.
Any other path is a 404, answered before BentoML's metrics see it (so unknown
paths add no series to ``/metrics``).

Settings come from the environment (checked before the port is bound, read again
when the worker starts): ``RESPONDERS_API_TOKEN`` (required unless
``RESPONDERS_INSECURE_DEV=1``), ``RESPONDERS_MAX_BATCH`` (default 500 patients),
``RESPONDERS_MAX_BODY_BYTES`` (default 1 MiB), ``MLFLOW_TRACKING_URI`` (default
``sqlite:///mlruns/mlflow.db``), ``RESPONDERS_SPEC`` (default
``fibromyalgia-ldn``), ``RESPONDERS_BENTO_MODELS`` (BentoML model tags to serve
instead of the registry's champions; a built Bento serves the models it carries),
``RESPONDERS_WORKERS`` (default 1). The registry is checked before MLflow touches
it (:func:`serving.registry_check.check_registry`); see docs/operations.md, "Deployment".

Bounded requests, in this order, before any per-patient work: the body size
(413, read no further than the limit), the media type (415 unless JSON), the
JSON syntax (422) and the batch size (413); then the schema (422, listing at
most :data:`serving.contract.MAX_LISTED_ERRORS` errors and saying how many were left out).

Start-up (``bentoml serve``, also under ``responders serve``): the
``on_deployment`` hook checks the settings and loads every champion in the
serving process before the port is bound, and exits non-zero with one line
naming the registered model, version and file when it cannot; it then starts
the worker supervision of :mod:`serving.supervision`. Binds 127.0.0.1 unless
``--host`` / ``BENTOML_HOST`` says otherwise (0.0.0.0 inside the Bento's container).
Each worker dies with the server, and warms up on synthetic patients before it
serves (``/readyz`` is 503 until then).

This module is the BentoML service class and its start-up; each other concept
has its own module: :mod:`serving.trial` (the spec, the patient request model,
the title), :mod:`serving.settings` (the environment), :mod:`serving.guards`
(the ASGI guards and the 422 answers), :mod:`serving.contract` (the published
OpenAPI contract, ``/docs`` and ``/``), :mod:`serving.logs` (no patient data in
the server log), :mod:`serving.readiness` (the warm-up) and
:mod:`serving.registry_check` (the registry checked before MLflow touches it).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated

import attr
import bentoml
from pydantic import Field
from starlette.responses import HTMLResponse, JSONResponse, Response

from serving import schemas as S
from serving import supervision
from serving.compat.bentoml import OpenAPISpecification, Service, json_response_body
from serving.contract import PublishedSpec, docs_page
from serving.guards import ApiGuard, PathFilter, _error, _unprocessable_payload, check_body
from serving.logs import _protect_logs
from serving.readiness import _record_warm_up, _warm_metrics, warm_up
from serving.registry_check import REGISTRY_HTTP_DEFAULTS, check_registry
from serving.scoring import ChampionError, Scorer, load_bento_champions, resolve_champions
from serving.settings import ConfigurationError, ServiceSettings, _default_host, _workers
from serving.trial import SPEC, SUMMARY, Patient

log = logging.getLogger("responders.serving")


class HardenedService(Service):
    """A BentoML service whose ASGI app is wrapped in :class:`PathFilter` and whose OpenAPI is the real contract."""

    def to_asgi(self, is_main: bool = True):
        return PathFilter(super().to_asgi(is_main=is_main))

    @property
    def openapi_spec(self) -> OpenAPISpecification:
        generated = super().openapi_spec
        return PublishedSpec(**{a.name: getattr(generated, a.name) for a in attr.fields(OpenAPISpecification)})


@bentoml.service(
    name="ldn-responders",
    description=(
        f"{SUMMARY} Decision support only, not a substitute for clinical judgement. "
        "All data endpoints require 'Authorization: Bearer <token>' and a JSON body. Invalid bodies get 422 naming each "
        "field (at most 50 listed); a patient with an unusable lab value gets its own 'errors' and no prediction while the "
        "others are scored; bodies over the size limit and batches over the batch limit get 413."
    ),
    traffic={"timeout": 60},
    workers=_workers(),  # RESPONDERS_WORKERS; one process per core at most pays (benchmarks/RESULTS.md)
    # Loopback unless told otherwise (`--host`, BENTOML_HOST): a clinic puts its own proxy in front.
    http={"host": _default_host()},
    service_class=HardenedService,
)
class ResponderService:
    @bentoml.on_deployment
    def _check_before_binding() -> None:
        """In the ``bentoml serve`` process, before the port is bound: settings and champions, or exit with one line."""
        _protect_logs()
        try:
            ServiceSettings.from_env().require_token()
            champions = _load_champions()
        except Exception as err:  # also the registry itself (unreachable tracking server, broken store): one line
            raise SystemExit(f"ldn-responders cannot start: {_reason(err)}") from None
        log.info("verified %s", ", ".join(f"{c.ref.registered_model} v{c.ref.version}" for c in champions.values()))
        del champions
        supervision.start_supervision()

    def __init__(self) -> None:
        supervision.die_with_supervisor()  # first: a worker must not outlive a killed server, even while loading
        _protect_logs()
        self.warm = False
        try:
            settings = ServiceSettings.from_env()
            settings.require_token()
            champions = _load_champions()
        except Exception as err:  # re-raised: under `bentoml serve` the server stops instead of respawning this worker
            supervision.stop_supervisor(f"ldn-responders cannot start: {_reason(err)}")
            raise
        if settings.token is None:
            log.warning("serving WITHOUT authentication (RESPONDERS_INSECURE_DEV=1): development only")
        self.max_batch = settings.max_batch
        self.scorer = Scorer(SPEC, champions, max_batch=self.max_batch)
        log.info("serving %s", ", ".join(f"{r.registered_model} v{r.version}" for r in self.scorer.refs.values()))

    @bentoml.on_startup
    async def _warm_up(self) -> None:
        """Before the worker serves (and so before ``/readyz`` is 200): every data endpoint's request path, warm.

        ``/predict`` with a full batch and ``/explain`` with a few patients,
        twice each, through :meth:`_answer` (what a request does with its body);
        see :mod:`serving.readiness`. Synthetic patients only, no patient data.
        """
        import anyio

        warm = await warm_up(self.scorer, self.max_batch, self._answer)
        _record_warm_up(warm)
        await anyio.to_thread.run_sync(_warm_metrics)
        log.info(warm.summary())
        self.warm = True

    async def _answer(self, route: str, body: bytes) -> bytes:
        """What a request to ``/<route>`` does with its JSON body after the token check: the answer's bytes.

        As a request runs: in the event loop's thread the body checks of
        :class:`~serving.guards.ApiGuard`, BentoML's request model and, at the
        end, BentoML's serialisation of the answer; the endpoint scores a
        batch in the thread pool and a few patients in the loop (:func:`_scored`).
        """
        refused = check_body(body, f"/{route}", self.max_batch)
        if refused is not None:
            raise RuntimeError(f"the warm-up's /{route} request was refused: {refused[1].get('error')}")
        api = ResponderService.apis[route]
        request = api.input_spec.model_validate_json(body)
        output = await api.func(self, **{name: getattr(request, name) for name in type(request).model_fields})
        if isinstance(output, _Answer):
            return bytes(output.body)
        if isinstance(output, Response):
            raise RuntimeError(f"the warm-up's /{route} request was answered {output.status_code}")
        return json_response_body(output)

    def __is_ready__(self) -> bool:
        """BentoML's ``/readyz``: 503 until the warm-up has run."""
        return self.warm

    def _too_many(self, n: int) -> JSONResponse | None:
        if n > self.max_batch:
            return _error(413, "batch too large", f"{n} patients sent; the limit is {self.max_batch} per request (RESPONDERS_MAX_BATCH)")
        return None

    @bentoml.api(route="/predict")
    async def predict(self, patients: Annotated[list[Patient], Field(min_length=1)]) -> S.PredictResponse:  # type: ignore[valid-type]
        """Per patient and outcome: P(response) on the active and the control arm, benefit with interval, label, warnings."""
        refused = self._too_many(len(patients))
        if refused is not None:
            return refused  # type: ignore[return-value]
        return await _scored(len(patients), self._predict, patients)

    def _predict(self, patients: list) -> Response:
        response = self.scorer.predict([p.model_dump() for p in patients])
        _warn_duplicate_ids(response.results)
        return _answered(response)

    @bentoml.api(route="/explain")
    async def explain(
        self,
        patients: Annotated[list[Patient], Field(min_length=1)],  # type: ignore[valid-type]
        top: Annotated[int, Field(ge=1, le=100, strict=True, description="drivers returned per output")] = 10,
    ) -> S.ExplainResponse:
        """SHAP contributions to the benefit and to P(response | active arm), ranked, with plain-language sentences."""
        refused = self._too_many(len(patients))
        if refused is not None:
            return refused  # type: ignore[return-value]
        return await _scored(len(patients), self._explain, patients, top)

    def _explain(self, patients: list, top: int) -> Response:
        response = self.scorer.explain([p.model_dump() for p in patients], top=top)
        _warn_duplicate_ids(response.results)
        return _answered(response)

    @bentoml.api(route="/report")
    def report(self, patient: Patient) -> str:  # type: ignore[valid-type]
        """The one-patient HTML report (self-contained: images embedded, no external resources)."""
        from serving.reports import render_patient_report

        frame, problems = self.scorer.patient_frame(patient.model_dump())
        if problems:
            fields = [{"field": p.field, "message": p.message, "type": p.code} for p in problems]
            payload = _unprocessable_payload(fields) | {"error": "the patient cannot be scored"}
            return JSONResponse(payload, status_code=422)  # type: ignore[return-value]
        models = {o: c.model for o, c in self.scorer.champions.items()}
        versions = {o: f"{r.registered_model} v{r.version}" for o, r in self.scorer.refs.items()}
        html = render_patient_report(models, frame, versions, now=datetime.now(UTC))
        return HTMLResponse(html)  # type: ignore[return-value]

    @bentoml.api(route="/metadata")
    def metadata(self) -> S.Metadata:
        """Outcomes, registry versions, training runs, evidence verdicts, label rules and the feature list with units."""
        return self.scorer.metadata()


class _Answer(Response):
    """An endpoint's pydantic answer already serialised, as BentoML would (the same bytes: :func:`json_response_body`).

    Written where the answer is made (a batch's in the worker thread) and sent
    as one body with its length: BentoML would serialise it in the event loop
    and stream it in three sends through every middleware.
    """

    media_type = "application/json"


def _answered(model) -> _Answer:
    return _Answer(json_response_body(model))


INLINE_PATIENTS = 8  # requests of up to this many patients are scored in the event loop's thread


async def _scored(n: int, work, *args):
    """``work(*args)``: a request of a few patients in the event loop's thread, a larger one in the thread pool.

    One patient takes 1-3 ms to score; handing it to a worker thread and back
    cost more than BentoML's whole request handling besides, and the scoring
    holds the GIL either way. A batch (a 500-patient /predict takes about
    0.1 s) goes to the thread pool, so that the loop keeps answering
    ``/healthz``, ``/metrics`` and reading other requests meanwhile.
    """
    if n <= INLINE_PATIENTS:
        return work(*args)
    import anyio

    return await anyio.to_thread.run_sync(work, *args)


def _reason(err: BaseException) -> str:
    """An exception as one line; our own errors already say what failed, others get their type."""
    text = " ".join(str(err).split())
    return text if isinstance(err, (ConfigurationError, ChampionError)) else f"{type(err).__name__}: {text}"


def _warn_duplicate_ids(results: list) -> None:
    """Patients sharing an id are all scored, in request order; each gets a warning saying so."""
    positions: dict[str, list[int]] = defaultdict(list)
    for i, result in enumerate(results):
        positions[result.patient_id].append(i + 1)
    for result in results:
        rows = positions[result.patient_id]
        if len(rows) > 1:
            message = (
                f"this patient_id appears {len(rows)} times in the request (positions {', '.join(map(str, rows))}); "
                "each is scored on its own, results follow the request order"
            )
            result.warnings = [*result.warnings, S.InputWarningOut(code="duplicate_id", field=SPEC.id_column, message=message)]


def _load_champions():
    """The champions to serve: those a built Bento carries, RESPONDERS_BENTO_MODELS, or the registry's aliases."""
    tags = _bento_model_tags()
    if tags:
        return load_bento_champions(SPEC, tags)
    from core.registry import resolve_tracking_uri

    for name, value in REGISTRY_HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    uri = resolve_tracking_uri()
    check_registry(uri)
    return resolve_champions(SPEC, uri)


def _bento_model_tags() -> list[str]:
    """Models to serve from the BentoML store: those a built Bento carries, or RESPONDERS_BENTO_MODELS."""
    listed = [t for t in os.environ.get("RESPONDERS_BENTO_MODELS", "").split(",") if t]
    if listed:
        return listed
    bento = getattr(ResponderService, "bento", None)  # set by BentoML when serving a built Bento
    return [str(m.tag) for m in bento.info.models] if bento is not None else []


def _forbid_unknown_fields(service) -> None:
    """Every endpoint's request model refuses fields it does not know (422 naming them), as the patient model does.

    BentoML builds each request model from the method's parameters, accepting
    and ignoring anything else; a misspelt ``top`` or ``patient`` must not pass unnoticed.
    """
    for method in service.apis.values():
        model = method.input_spec
        model.model_config = {**model.model_config, "extra": "forbid"}
        model.model_rebuild(force=True)


@lru_cache(maxsize=1)
def api_docs_html() -> bytes:
    """``GET /docs``: the OpenAPI contract as one readable, self-contained page (no scripts, nothing loaded from the web)."""
    return docs_page(ResponderService.openapi_spec.asdict())


_forbid_unknown_fields(ResponderService)
ResponderService.add_asgi_middleware(ApiGuard, docs_html=api_docs_html)
