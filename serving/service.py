"""The clinic REST API: a BentoML service over the registered champions.

Endpoints (all POST, JSON): ``/predict``, ``/explain``, ``/report`` (HTML) and
``/metadata``; BentoML's ``/healthz``, ``/livez``, ``/readyz``, ``/metrics`` and
the OpenAPI document at ``/docs.json`` stay open. Every data endpoint needs
``Authorization: Bearer <RESPONDERS_API_TOKEN>``.

Settings come from the environment (read when the worker starts):
``RESPONDERS_API_TOKEN`` (required unless ``RESPONDERS_INSECURE_DEV=1``),
``RESPONDERS_MAX_BATCH`` (default 500 patients), ``MLFLOW_TRACKING_URI``
(default ``sqlite:///mlruns/mlflow.db``), ``RESPONDERS_SPEC`` (default
``fibromyalgia-ldn``), ``RESPONDERS_BENTO_MODELS`` (BentoML model tags to serve
instead of the registry's champions; a built Bento serves the models it carries).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from datetime import UTC, datetime
from typing import Annotated

import bentoml
from pydantic import Field
from starlette.responses import HTMLResponse, JSONResponse

from features.catalog import load_catalog
from serving import schemas as S
from serving.scoring import DEFAULT_MAX_BATCH, Scorer, load_bento_champions, resolve_champions
from training.spec import load_spec

log = logging.getLogger("responders.serving")

# The request schema is generated from the dataset spec, so it has to exist when
# the class is defined; reading the packaged spec (or RESPONDERS_SPEC) is the
# only work done at import.
SPEC = load_spec(os.environ.get("RESPONDERS_SPEC"))
Patient = S.patient_model(SPEC, load_catalog())

OPEN_PATHS = ("/healthz", "/livez", "/readyz", "/metrics", "/docs.json", "/docs", "/")
OPEN_PREFIXES = ("/static_content/",)


class _NoRequestData(logging.Filter):
    """Drop exception details that would carry request values into the server log.

    BentoML logs a request's pydantic ValidationError with its traceback, and
    pydantic's message echoes the offending input values (patient data). The
    client gets the details in the 422 body; the log keeps path and method.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            name = type(record.exc_info[1]).__name__
            if name in {"ValidationError", "LabValueError", "LabParseError", "JSONDecodeError"}:
                record.exc_info, record.exc_text = None, None
                record.msg = f"{record.msg} (invalid request; details sent to the client, not logged)"
        return True


def _protect_logs() -> None:
    for name in ("bentoml._internal.server.http_app", "bentoml", "_bentoml_impl"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoRequestData) for f in logger.filters):
            logger.addFilter(_NoRequestData())


def _token() -> str | None:
    return os.environ.get("RESPONDERS_API_TOKEN") or None


def _insecure() -> bool:
    return os.environ.get("RESPONDERS_INSECURE_DEV", "").lower() in {"1", "true", "yes"}


class ApiGuard:
    """ASGI middleware: bearer-token check on data endpoints, and 422 for invalid request bodies.

    BentoML answers a pydantic validation error with 400; the contract here
    (as in FastAPI) is 422 with one entry per bad field, so the integration
    engineer can tell "your JSON does not fit the schema" from other errors.
    """

    def __init__(self, app):
        self.app = app
        self.token = _token()
        self.insecure = _insecure() and self.token is None

    def _authorised(self, scope) -> bool:
        if self.insecure:
            return True
        if self.token is None:
            return False
        headers = dict(scope.get("headers") or [])
        value = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, supplied = value.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), self.token.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return await self.app(scope, receive, send)
        if not self._authorised(scope):
            body = json.dumps({"error": "unauthorised", "detail": "send 'Authorization: Bearer <token>'"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        state: dict = {}

        async def rewrite(message):
            if message["type"] == "http.response.start" and message["status"] == 400:
                state["start"], state["chunks"] = message, []
                return
            if "start" not in state:
                return await send(message)
            state["chunks"].append(message.get("body", b""))
            if message.get("more_body"):
                return
            status, body = _as_unprocessable(b"".join(state["chunks"]))
            headers = [(k, v) for k, v in state["start"]["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**state["start"], "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        return await self.app(scope, receive, rewrite)


def _field_path(loc) -> str:
    parts = [str(p) for p in loc]
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out or "body"


def _as_unprocessable(body: bytes) -> tuple[int, bytes]:
    try:
        data = json.loads(body)
    except ValueError:
        return 400, body
    detail = data.get("detail") if isinstance(data, dict) else None
    if not isinstance(detail, list) or not all(isinstance(d, dict) and "loc" in d for d in detail):
        return 400, body
    fields = [{"field": _field_path(d.get("loc", ())), "message": d.get("msg", ""), "type": d.get("type", "")} for d in detail]
    payload = {"error": "request does not match the schema (see /docs.json)", "detail": fields}
    return 422, json.dumps(payload).encode()


def _error(status: int, error: str, detail) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


@bentoml.service(
    name="ldn-responders",
    description=(
        f"Chance of a clinically meaningful response ({', '.join(o.label for o in SPEC.outcomes.values())}) on "
        f"{SPEC.treated_inline()} and on {SPEC.control_inline()}, the difference "
        "(benefit) with an interval, and why (SHAP). Decision support only, not a substitute for clinical judgement. "
        "All data endpoints require 'Authorization: Bearer <token>'. Invalid bodies get 422 naming each field; a patient "
        "with an unusable lab value gets its own 'errors' and no prediction while the others are scored; batches larger "
        "than the configured limit get 413."
    ),
    traffic={"timeout": 60},
    workers=1,
)
class ResponderService:
    def __init__(self) -> None:
        _protect_logs()
        if _token() is None and not _insecure():
            raise RuntimeError("RESPONDERS_API_TOKEN is not set; refusing to start (RESPONDERS_INSECURE_DEV=1 for local development)")
        if _token() is None:
            log.warning("serving WITHOUT authentication (RESPONDERS_INSECURE_DEV=1): development only")
        bento_models = _bento_model_tags()
        champions = load_bento_champions(SPEC, bento_models) if bento_models else resolve_champions(SPEC)
        self.max_batch = int(os.environ.get("RESPONDERS_MAX_BATCH", DEFAULT_MAX_BATCH))
        self.scorer = Scorer(SPEC, champions, max_batch=self.max_batch)
        log.info("serving %s", ", ".join(f"{r.registered_model} v{r.version}" for r in self.scorer.refs.values()))

    def _too_many(self, n: int) -> JSONResponse | None:
        if n > self.max_batch:
            return _error(413, "batch too large", f"{n} patients sent; the limit is {self.max_batch} per request (RESPONDERS_MAX_BATCH)")
        return None

    @bentoml.api(route="/predict")
    def predict(self, patients: Annotated[list[Patient], Field(min_length=1)]) -> S.PredictResponse:  # type: ignore[valid-type]
        """Per patient and outcome: P(response) on the active and the control arm, benefit with interval, label, warnings."""
        refused = self._too_many(len(patients))
        if refused is not None:
            return refused  # type: ignore[return-value]
        return self.scorer.predict([p.model_dump() for p in patients])

    @bentoml.api(route="/explain")
    def explain(
        self,
        patients: Annotated[list[Patient], Field(min_length=1)],  # type: ignore[valid-type]
        top: Annotated[int, Field(ge=1, le=100, description="drivers returned per output")] = 10,
    ) -> S.ExplainResponse:
        """SHAP contributions to the benefit and to P(response | active arm), ranked, with plain-language sentences."""
        refused = self._too_many(len(patients))
        if refused is not None:
            return refused  # type: ignore[return-value]
        return self.scorer.explain([p.model_dump() for p in patients], top=top)

    @bentoml.api(route="/report")
    def report(self, patient: Patient) -> str:  # type: ignore[valid-type]
        """The one-patient HTML report (self-contained: images embedded, no external resources)."""
        from training.reports import render_patient_report

        frame, problems = self.scorer.patient_frame(patient.model_dump())
        if problems:
            return _error(422, "the patient cannot be scored", [p.model_dump() for p in problems])  # type: ignore[return-value]
        models = {o: c.model for o, c in self.scorer.champions.items()}
        versions = {o: f"{r.registered_model} v{r.version}" for o, r in self.scorer.refs.items()}
        html = render_patient_report(models, frame, versions, now=datetime.now(UTC))
        return HTMLResponse(html)  # type: ignore[return-value]

    @bentoml.api(route="/metadata")
    def metadata(self) -> S.Metadata:
        """Outcomes, registry versions, training runs, evidence verdicts, label rules and the feature list with units."""
        return self.scorer.metadata()


def _bento_model_tags() -> list[str]:
    """Models to serve from the BentoML store: those a built Bento carries, or RESPONDERS_BENTO_MODELS."""
    listed = [t for t in os.environ.get("RESPONDERS_BENTO_MODELS", "").split(",") if t]
    if listed:
        return listed
    bento = getattr(ResponderService, "bento", None)  # set by BentoML when serving a built Bento
    return [str(m.tag) for m in bento.info.models] if bento is not None else []


ResponderService.add_asgi_middleware(ApiGuard)
