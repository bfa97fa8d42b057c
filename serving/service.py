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
it (:func:`check_registry`); see docs/operations.md, "Deployment".

Bounded requests, in this order, before any per-patient work: the body size
(413, read no further than the limit), the media type (415 unless JSON), the
JSON syntax (422) and the batch size (413); then the schema (422, listing at
most :data:`MAX_LISTED_ERRORS` errors and saying how many were left out).

Start-up (``bentoml serve``, also under ``responders serve``): the
``on_deployment`` hook checks the settings and loads every champion in the
serving process before the port is bound, and exits non-zero with one line
naming the registered model, version and file when it cannot; it then starts
the worker supervision of :mod:`serving.supervision`. Binds 127.0.0.1 unless
``--host`` / ``BENTOML_HOST`` says otherwise (0.0.0.0 inside the Bento's container).
Each worker dies with the server, and warms up on synthetic patients before it
serves (``/readyz`` is 503 until then).
"""

from __future__ import annotations

import copy
import hmac
import json
import logging
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import attr
import bentoml
import numpy as np
import yaml
from pydantic import Field
from starlette.responses import HTMLResponse, JSONResponse

from core.labelling import Wording
from core.spec import inline, load_spec
from serving import schemas as S
from serving import supervision
from serving.compat.bentoml import SERVER_LOGGERS, OpenAPISpecification, Service, render_metrics
from serving.scoring import DEFAULT_MAX_BATCH, ChampionError, Scorer, load_bento_champions, resolve_champions

log = logging.getLogger("responders.serving")

# The request schema is generated from the dataset spec, so it has to exist when
# the class is defined; reading the packaged spec (or RESPONDERS_SPEC) is the
# only work done at import.
SPEC = load_spec(os.environ.get("RESPONDERS_SPEC"))
Patient = S.patient_model(SPEC, SPEC.lab_catalog())
TITLE = f"Responder-subgroup API: {SPEC.treated_display()} vs {inline(SPEC.control_display())} ({SPEC.name})"


def _summary() -> str:
    """What the service answers for this spec's trial, in a sentence (an event to prevent as its risk)."""
    events = [o.label for o in SPEC.outcomes.values() if Wording.of(o).prevents]
    scores = [o.label for o in SPEC.outcomes.values() if not Wording.of(o).prevents]
    what = []
    if scores:
        what.append(f"the chance of a clinically meaningful response ({'; '.join(scores)}) and the difference (benefit)")
    if events:
        what.append(f"the risk of each event to prevent ({'; '.join(events)}) and the absolute risk reduction with the number needed to treat")
    return (
        f"Per patient, on {SPEC.treated_inline()} and on {SPEC.control_inline()}: {' and '.join(what)}, with an interval, "
        "the estimand they answer, a population label and, only where effect modification is established, a patient label; and why (SHAP)."
    )


SUMMARY = _summary()


def _version() -> str:
    """The installed package's version (the OpenAPI document's ``info.version``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ldn-responders")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"

DEFAULT_MAX_BODY_BYTES = 1 << 20  # a full batch of 500 typical patients is about 0.3 MB
MAX_LISTED_ERRORS = 50
DATA_ROUTES = ("/predict", "/explain", "/report", "/metadata")
BATCH_ROUTES = ("/predict", "/explain")
OPEN_PATHS = ("/", "/healthz", "/livez", "/readyz", "/metrics", "/docs.json", "/docs")
# Every path the service answers; BentoML also serves its schema at /schema.json (behind the token).
KNOWN_PATHS = frozenset({*OPEN_PATHS, *DATA_ROUTES, "/schema.json"})


class ConfigurationError(ValueError):
    """A setting in the environment that the service cannot run with; names the variable."""


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigurationError(f"{name}={text!r} is not a whole number") from None
    if value < 1:
        raise ConfigurationError(f"{name}={value} must be at least 1")
    return value


def _workers() -> int:
    """``RESPONDERS_WORKERS`` server processes (default 1); a bad value is reported before binding, not here."""
    try:
        return _env_int("RESPONDERS_WORKERS", 1)
    except ConfigurationError:
        return 1


def _default_host() -> str:
    """127.0.0.1, except inside the container BentoML generates for the Bento (BENTOML_CONTAINERIZED=true).

    A container's loopback is unreachable from outside it, so there the server
    listens on the container's own interfaces; what is exposed is decided by
    publishing the port (and the clinic's proxy), not by this address.
    """
    return "0.0.0.0" if os.environ.get("BENTOML_CONTAINERIZED", "").lower() == "true" else "127.0.0.1"


@dataclass(frozen=True)
class ServiceSettings:
    """The service's settings, from the environment."""

    token: str | None
    insecure: bool
    max_batch: int
    max_body_bytes: int
    workers: int = 1  # server processes, each with its own copy of the champions

    @classmethod
    def from_env(cls) -> ServiceSettings:
        token = os.environ.get("RESPONDERS_API_TOKEN") or None
        insecure = os.environ.get("RESPONDERS_INSECURE_DEV", "").lower() in {"1", "true", "yes"}
        return cls(
            token=token,
            insecure=insecure and token is None,
            max_batch=_env_int("RESPONDERS_MAX_BATCH", DEFAULT_MAX_BATCH),
            max_body_bytes=_env_int("RESPONDERS_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            workers=_env_int("RESPONDERS_WORKERS", 1),
        )

    def require_token(self) -> None:
        if self.token is None and not self.insecure:
            raise ConfigurationError(
                "RESPONDERS_API_TOKEN is not set; refusing to start (RESPONDERS_INSECURE_DEV=1 for local development)"
            )


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
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoRequestData) for f in logger.filters):
            logger.addFilter(_NoRequestData())
    # BentoML's server log shows warnings only; what the service loaded is worth a line.
    logging.getLogger("responders").setLevel(logging.INFO)


def _index_html() -> bytes:
    """The index page: what this service answers, for the trial of its dataset spec, and where the contract is."""
    from html import escape

    outcomes = ", ".join(escape(o.label) for o in SPEC.outcomes.values())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(TITLE)}</title></head>
<body>
<h1>{escape(TITLE)}</h1>
<p>{escape(SUMMARY)} Outcomes: {outcomes}. Decision support only, not a substitute for clinical judgement.</p>
<ul>
<li><a href="/docs">/docs</a>: the API documentation (readable); <a href="/docs.json">/docs.json</a>: the OpenAPI contract of
<code>POST /predict</code>, <code>/explain</code>, <code>/report</code> and <code>GET</code> or <code>POST /metadata</code>
(each needs <code>Authorization: Bearer &lt;token&gt;</code>)</li>
<li><a href="/readyz">/readyz</a>, <a href="/livez">/livez</a>, <a href="/healthz">/healthz</a>: readiness and health</li>
<li><a href="/metrics">/metrics</a>: Prometheus metrics</li>
</ul>
</body></html>
""".encode()


# The index page loads nothing: no scripts, styles, images or third-party resources.
_INDEX_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


async def _respond(send, status: int, body: bytes, content_type: bytes, headers: list | None = None, head: bool = False) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _refuse(send, status: int, error: str, detail: Any, headers: list | None = None) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    await _respond(send, status, body, b"application/json", headers)


class _TooLarge(Exception):
    pass


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole request body, or None when the client went away; raises _TooLarge past ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


class PathFilter:
    """Outermost ASGI layer: 404 for any path the service does not have; notes a clean shutdown.

    It wraps BentoML's whole application, so an unknown path never reaches the
    metrics middleware, which labels its series with the raw request path
    (300 requests to ``/x-$i`` would otherwise add thousands of series). When
    the application reports its shutdown complete, the worker supervision is
    told that this worker stopped rather than died.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":

            async def noting_shutdown(message):
                if message["type"] == "lifespan.shutdown.complete":
                    supervision.mark_clean_stop()
                await send(message)

            return await self.app(scope, receive, noting_shutdown)
        if scope["type"] in ("http", "websocket") and scope.get("path", "") not in KNOWN_PATHS:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            return await _refuse(send, 404, "not found", "see /docs.json for the endpoints")
        return await self.app(scope, receive, send)


class ApiGuard:
    """ASGI middleware inside BentoML: the index page, the bearer token, bounded bodies, and 422 for invalid ones.

    Requests to the data endpoints are checked in order of cost before BentoML
    parses them: the token (401), the body size (413, without reading past the
    limit), the media type (415), the JSON syntax (422) and the batch size
    (413). BentoML answers a pydantic validation error with 400; the contract
    here (as in FastAPI) is 422 with one entry per bad field, at most
    :data:`MAX_LISTED_ERRORS` of them, so the integration engineer can tell
    "your JSON does not fit the schema" from other errors.
    """

    def __init__(self, app):
        self.app = app
        settings = ServiceSettings.from_env()
        self.token = settings.token
        self.insecure = settings.insecure
        self.max_batch = settings.max_batch
        self.max_body = settings.max_body_bytes

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
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if path == "/" and method in ("GET", "HEAD"):
            return await _respond(send, 200, _index_html(), b"text/html; charset=utf-8", _INDEX_HEADERS, head=method == "HEAD")
        if path == "/docs" and method in ("GET", "HEAD"):
            return await _respond(send, 200, api_docs_html(), b"text/html; charset=utf-8", _INDEX_HEADERS, head=method == "HEAD")
        if path in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if not self._authorised(scope):
            return await _refuse(send, 401, "unauthorised", "send 'Authorization: Bearer <token>'", [(b"www-authenticate", b"Bearer")])
        if path == "/metadata" and method not in ("GET", "POST"):
            return await _refuse(send, 405, "method not allowed", "use GET or POST", [(b"allow", b"GET, POST")])
        if path == "/metadata" and method == "GET":  # the same answer as POST /metadata with an empty body
            headers = [(k, v) for k, v in scope.get("headers") or [] if k.lower() not in (b"content-type", b"content-length")]
            scope = {**scope, "method": "POST", "headers": [*headers, (b"content-type", b"application/json"), (b"content-length", b"2")]}
            sent = False

            async def empty_object():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": b"{}", "more_body": False}
                return await receive()

            return await self.app(scope, empty_object, _unprocessable_rewriter(send))
        if method != "POST" or path not in DATA_ROUTES:
            return await self.app(scope, receive, send)
        body = await self._bounded_body(scope, receive, send)
        if body is None:
            return None
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, _unprocessable_rewriter(send))

    async def _bounded_body(self, scope, receive, send) -> bytes | None:
        """The body of a data request, or None after answering it (or when the client left)."""
        headers = dict(scope.get("headers") or [])
        limit = f"the limit is {self.max_body} bytes (RESPONDERS_MAX_BODY_BYTES)"
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > self.max_body:
            await _refuse(send, 413, "request body too large", f"{int(declared)} bytes sent; {limit}")
            return None
        media = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if media != b"application/json":
            shown = media.decode("latin-1")[:80] or "(empty)"
            await _refuse(send, 415, "unsupported media type", f"{shown} is not accepted: send 'Content-Type: application/json'")
            return None
        try:
            body = await _read_body(receive, self.max_body)
        except _TooLarge:
            await _refuse(send, 413, "request body too large", f"more than {self.max_body} bytes sent; {limit}")
            return None
        if body is None or not body.strip():
            return body  # an empty body is an empty object to BentoML: the schema decides
        if _nesting_depth(body) > MAX_JSON_DEPTH:
            message = f"JSON nested deeper than {MAX_JSON_DEPTH} levels; a request needs at most {MAX_REQUEST_DEPTH}"
            await _send_unprocessable(send, [{"field": "body", "message": message, "type": "json_too_deep"}])
            return None
        try:
            data = json.loads(body, parse_constant=_NonFinite, parse_float=_finite_float)
        except RecursionError:  # not reached after the depth check; kept so that nesting can never become a 500
            await _send_unprocessable(send, [{"field": "body", "message": "JSON nested too deeply", "type": "json_too_deep"}])
            return None
        except ValueError as err:  # JSONDecodeError and undecodable bytes; the message carries no values
            where = f" at line {err.lineno}, column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
            await _send_unprocessable(send, [{"field": "body", "message": f"not valid JSON{where}", "type": "json_invalid"}])
            return None
        non_finite = _non_finite_fields(data)
        if non_finite:
            await _send_unprocessable(send, non_finite)
            return None
        patients = data.get("patients") if isinstance(data, dict) else None
        if scope["path"] in BATCH_ROUTES and isinstance(patients, list) and len(patients) > self.max_batch:
            await _refuse(
                send, 413, "batch too large", f"{len(patients)} patients sent; the limit is {self.max_batch} per request (RESPONDERS_MAX_BATCH)"
            )
            return None
        return body


# The deepest a valid request goes is {"patients": [{"field": value}]}: 3 levels. A little room for a
# client's harmless wrapping, far below the depth at which json.loads (and pydantic) would recurse for long.
MAX_REQUEST_DEPTH = 3
MAX_JSON_DEPTH = 16
_OPENING, _CLOSING = frozenset(b"[{"), frozenset(b"]}")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def _nesting_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in ``body``, outside strings, without recursing (linear time)."""
    brackets = np.frombuffer(_JSON_STRING.sub(b"", body), dtype=np.uint8)
    steps = np.isin(brackets, list(_OPENING)).astype(np.int32) - np.isin(brackets, list(_CLOSING)).astype(np.int32)
    return int(np.cumsum(steps).max()) if steps.size else 0


class _NonFinite:
    """A JSON number that is not finite: the constants NaN, Infinity, -Infinity (not JSON), or a literal like 1e999."""

    def __init__(self, text: str):
        self.text = text


def _finite_float(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _non_finite_fields(data: Any) -> list[dict]:
    """One 422 entry per field holding NaN, Infinity or an overflowing number (never imputed as if missing)."""
    found, stack = [], [((), data)]
    while stack:  # iterative: the depth is bounded already, and no recursion is needed
        loc, value = stack.pop()
        if isinstance(value, _NonFinite):
            shown = value.text if len(value.text) <= 24 else value.text[:21] + "..."
            found.append(
                {"field": _field_path(loc), "message": f"{shown} is not a finite number; send a number, or null for a missing value", "type": "non_finite_number"}
            )
        elif isinstance(value, dict):
            stack.extend(((*loc, k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend(((*loc, i), v) for i, v in reversed(list(enumerate(value))))
    return found


def _unprocessable_rewriter(send):
    """Wrap ``send`` so that BentoML's 400 for a pydantic validation error leaves as a bounded 422."""
    state: dict = {}

    async def rewrite(message):
        if message["type"] == "http.response.start" and message["status"] == 400:
            state["start"], state["chunks"] = message, []
            return None
        if "start" not in state:
            return await send(message)
        state["chunks"].append(message.get("body", b""))
        if message.get("more_body"):
            return None
        status, body = _as_unprocessable(b"".join(state["chunks"]))
        headers = [(k, v) for k, v in state["start"]["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**state["start"], "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return None

    return rewrite


def _field_path(loc) -> str:
    parts = [str(p) for p in loc]
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out or "body"


def _error_fields(detail: list[dict]) -> list[dict]:
    """One entry per field and message; a union field (lab: number or text) reports under its own name."""
    fields, seen = [], set()
    names = set(Patient.model_fields) | {"patients", "patient", "top"}
    for d in detail:
        loc = list(d.get("loc", ()))
        # pydantic appends the union member that failed ("float", "constrained-str") after the field name
        while len(loc) > 1 and isinstance(loc[-1], str) and loc[-2] in names and loc[-1] not in names:
            loc.pop()
        entry = {"field": _field_path(loc), "message": d.get("msg", ""), "type": d.get("type", "")}
        if entry["type"] == "string_pattern_mismatch" and loc and loc[-1] == SPEC.id_column:
            entry["message"] = "must not be blank, contain control or invisible characters, or start or end with a space"
        key = (entry["field"], entry["message"])
        if key not in seen:
            seen.add(key)
            fields.append(entry)
    return fields


def _unprocessable_payload(fields: list[dict]) -> dict:
    listed = fields[:MAX_LISTED_ERRORS]
    omitted = len(fields) - len(listed)
    error = "request does not match the schema (see /docs.json)"
    if omitted:
        error += f"; the first {len(listed)} of {len(fields)} errors are listed, {omitted} omitted"
    return {"error": error, "detail": listed, "omitted": omitted}


async def _send_unprocessable(send, fields: list[dict]) -> None:
    body = json.dumps(_unprocessable_payload(fields)).encode()
    await _respond(send, 422, body, b"application/json")


def _as_unprocessable(body: bytes) -> tuple[int, bytes]:
    try:
        data = json.loads(body)
    except ValueError:
        return 400, body
    detail = data.get("detail") if isinstance(data, dict) else None
    if not isinstance(detail, list) or not all(isinstance(d, dict) and "loc" in d for d in detail):
        return 400, body
    return 422, json.dumps(_unprocessable_payload(_error_fields(detail))).encode()


def _error(status: int, error: str, detail) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


# The published contract ---------------------------------------------------------------------------------------
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"description": "What to change, in words."}},
}
_UNPROCESSABLE_SCHEMA = {
    "type": "object",
    "required": ["error", "detail", "omitted"],
    "properties": {
        "error": {"type": "string"},
        "detail": {
            "type": "array",
            "maxItems": MAX_LISTED_ERRORS,
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {
                    "field": {"type": "string", "description": "e.g. patients[0].age, or body"},
                    "message": {"type": "string"},
                    "type": {"type": "string", "description": "Machine-readable kind (pydantic error type or lab problem code)."},
                },
            },
        },
        "omitted": {"type": "integer", "minimum": 0, "description": "Errors not listed (at most 50 are)."},
    },
}


def _json_response(description: str, ref: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def publish_contract(doc: dict, settings: ServiceSettings) -> dict:
    """BentoML's generated OpenAPI document, completed with what the service really does.

    Adds the bearer security scheme, the 401/413/415/422 answers of every data
    endpoint, the batch limit as ``maxItems``, marks the bodies that must be
    sent as required (``/metadata`` takes an empty one) and declares ``/report``
    as HTML.
    """
    doc = copy.deepcopy(doc)
    components = doc.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "The service's token (RESPONDERS_API_TOKEN), as 'Authorization: Bearer <token>'.",
    }
    schemas = components.setdefault("schemas", {})
    schemas["ErrorResponse"] = _ERROR_SCHEMA
    schemas["UnprocessableResponse"] = _UNPROCESSABLE_SCHEMA
    limit = f"{settings.max_body_bytes} bytes (RESPONDERS_MAX_BODY_BYTES)"
    for path in DATA_ROUTES:
        operation = doc.get("paths", {}).get(path, {}).get("post")
        if operation is None:
            continue
        operation["security"] = [{"bearer": []}]
        responses = operation.setdefault("responses", {})
        responses["401"] = _json_response("Missing or wrong bearer token.", "ErrorResponse")
        responses["413"] = _json_response(
            f"Request body over {limit}" + (f", or more than {settings.max_batch} patients (RESPONDERS_MAX_BATCH)." if path in BATCH_ROUTES else "."),
            "ErrorResponse",
        )
        responses["415"] = _json_response("The body is not sent as application/json.", "ErrorResponse")
        responses["422"] = _json_response(
            "The body is not JSON or does not fit the schema: one entry per bad field, at most "
            f"{MAX_LISTED_ERRORS} (`omitted` counts the rest)."
            + (" For /report also a patient whose labs cannot be used (implausible, unknown unit, unparseable)." if path == "/report" else ""),
            "UnprocessableResponse",
        )
        body = operation.get("requestBody")
        if body is not None:
            body["required"] = path != "/metadata"
            schema = body.get("content", {}).get("application/json", {}).get("schema", {})
            patients = schema.get("properties", {}).get("patients")
            if path in BATCH_ROUTES and patients is not None:
                patients["maxItems"] = settings.max_batch
                named = schemas.get(f"{path.strip('/')}__Input", {}).get("properties", {}).get("patients")
                if named is not None:
                    named["maxItems"] = settings.max_batch
    doc["info"] = {  # instead of BentoML's boilerplate (its team as contact, version "None")
        "title": TITLE,
        "version": _version(),
        "description": (
            f"{SUMMARY} Trial: {SPEC.description.strip().rstrip('.') or SPEC.name}. Decision support only, not a substitute for "
            "clinical judgement. Probabilities, benefits and risks are fractions (0.12 = 12 percentage points); the "
            "sentences say percent and percentage points. Every data endpoint needs 'Authorization: Bearer <token>'. "
            "Readable documentation: GET /docs."
        ),
    }
    metadata = doc.get("paths", {}).get("/metadata", {})
    if "post" in metadata:
        get = {k: v for k, v in copy.deepcopy(metadata["post"]).items() if k != "requestBody"}
        get["operationId"] = f"{get.get('operationId', 'metadata')}__get"
        get["responses"] = {k: v for k, v in get.get("responses", {}).items() if k not in ("413", "415", "422")}
        get["description"] = (get.get("description") or "") + " The same answer as POST /metadata with an empty body."
        metadata["get"] = get
    report = doc.get("paths", {}).get("/report", {}).get("post")
    if report is not None:
        report["responses"]["200"] = {
            "description": "The self-contained one-patient HTML report.",
            "content": {"text/html": {"schema": {"type": "string"}}},
        }
    return doc


def _schema_rows(schema: dict, schemas: dict, depth: int = 0, seen: frozenset = frozenset()) -> list[tuple[int, str, str, str]]:
    """(depth, field, type, description) for a schema's properties, following references a few levels down."""
    ref = schema.get("$ref") or next((s.get("$ref") for s in schema.get("allOf", []) + schema.get("anyOf", []) if "$ref" in s), None)
    if ref:
        name = ref.rsplit("/", 1)[-1]
        if name in seen or depth > 3:
            return []
        return _schema_rows({**schemas.get(name, {}), **{k: v for k, v in schema.items() if k not in ("$ref", "allOf", "anyOf")}}, schemas, depth, seen | {name})
    rows = []
    for field, prop in schema.get("properties", {}).items():
        kinds = [p.get("type") or p.get("$ref", "").rsplit("/", 1)[-1] for p in prop.get("anyOf", [prop])]
        kind = " or ".join(k for k in kinds if k) or "object"
        if prop.get("type") == "array":
            kind = f"array of {prop.get('items', {}).get('type') or prop.get('items', {}).get('$ref', '').rsplit('/', 1)[-1] or 'items'}"
        unit = prop.get("unit")
        described = next((p for p in [prop, *prop.get("anyOf", [])] if p.get("description")), {})
        unit = unit or described.get("unit")
        description = (described.get("description") or "") + (f" Unit: {unit}." if unit else "")
        rows.append((depth, field, kind, description))
        inner = prop.get("items", prop) if prop.get("type") == "array" else prop
        if any("$ref" in p for p in inner.get("anyOf", [inner])) and depth < 2:
            target = next(p for p in inner.get("anyOf", [inner]) if "$ref" in p)
            rows += _schema_rows(target, schemas, depth + 1, seen)
    return rows


@lru_cache(maxsize=1)
def api_docs_html() -> bytes:
    """``GET /docs``: the OpenAPI contract as one readable, self-contained page (no scripts, nothing loaded from the web)."""
    from html import escape

    doc = ResponderService.openapi_spec.asdict()
    schemas = doc.get("components", {}).get("schemas", {})
    info = doc.get("info", {})
    parts = [
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">",
        f"<title>{escape(info.get('title', 'API'))}: documentation</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem;line-height:1.45}"
        "table{border-collapse:collapse;width:100%;font-size:.9rem}td,th{border-bottom:1px solid #ddd;padding:.25rem .4rem;"
        "text-align:left;vertical-align:top}code{background:#f3f3f3;padding:0 .2rem}.d1{padding-left:1.4rem}.d2{padding-left:2.8rem}"
        ".d3{padding-left:4.2rem}.wrap{overflow-x:auto}</style></head><body>",
        f"<h1>{escape(info.get('title', 'API'))}</h1><p>Version {escape(str(info.get('version', '')))}.</p>",
        f"<p>{escape(info.get('description', ''))}</p>",
        "<p>Machine-readable contract: <a href=\"/docs.json\">/docs.json</a> (OpenAPI).</p>",
    ]
    for path in (*DATA_ROUTES,):
        for method, operation in doc.get("paths", {}).get(path, {}).items():
            parts.append(f"<h2 id=\"{method}-{escape(path.strip('/'))}\"><code>{method.upper()} {escape(path)}</code></h2>")
            parts.append(f"<p>{escape(operation.get('description') or operation.get('summary') or '')}</p>")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                rows = _schema_rows(body, schemas)
                parts.append("<h3>Request body (JSON)</h3><div class=\"wrap\"><table><tr><th>Field</th><th>Type</th><th>Description</th></tr>")
                parts += [f"<tr><td class=\"d{d}\"><code>{escape(f)}</code></td><td>{escape(k)}</td><td>{escape(t)}</td></tr>" for d, f, k, t in rows]
                parts.append("</table></div>")
            parts.append("<h3>Responses</h3><ul>")
            for status, response in operation.get("responses", {}).items():
                parts.append(f"<li><strong>{escape(str(status))}</strong>: {escape(response.get('description', ''))}</li>")
            parts.append("</ul>")
            ok = operation.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {}).get("schema")
            if ok:
                rows = _schema_rows(ok, schemas)
                parts.append("<details><summary>200 response fields</summary><div class=\"wrap\"><table><tr><th>Field</th><th>Type</th><th>Description</th></tr>")
                parts += [f"<tr><td class=\"d{d}\"><code>{escape(f)}</code></td><td>{escape(k)}</td><td>{escape(t)}</td></tr>" for d, f, k, t in rows]
                parts.append("</table></div></details>")
    parts.append("<h2 id=\"schemas\">Schemas</h2><p>Every object the endpoints take or answer, field by field.</p>")
    for name, schema in sorted(schemas.items()):
        if not schema.get("properties"):
            continue
        parts.append(f"<h3 id=\"schema-{escape(name)}\">{escape(name)}</h3><p>{escape(schema.get('description', ''))}</p>")
        parts.append("<div class=\"wrap\"><table><tr><th>Field</th><th>Type</th><th>Description</th></tr>")
        parts += [f"<tr><td><code>{escape(f)}</code></td><td>{escape(k)}</td><td>{escape(t)}</td></tr>" for _, f, k, t in _schema_rows(schema, {}, 3)]
        parts.append("</table></div>")
    parts.append("</body></html>")
    return "\n".join(parts).encode()


@attr.frozen
class PublishedSpec(OpenAPISpecification):
    """BentoML's OpenAPI specification whose dictionary form is the published contract."""

    def asdict(self) -> dict[str, Any]:
        return publish_contract(super().asdict(), ServiceSettings.from_env())


yaml.add_representer(PublishedSpec, lambda dumper, spec: dumper.represent_dict(spec.asdict()))


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
        """Before the worker serves (and so before ``/readyz`` is 200): one full batch predicted, one patient explained.

        The first calls otherwise pay for lazy imports, first allocations and
        caches (a first 500-patient ``/predict`` took 4.6-7.2 s and kept about
        280 MiB, a first ``/explain`` about 1 s). Synthetic patients only: the
        champions' training medians and modes (``example_input``), no patient data.
        """
        import anyio

        # In the thread pool that serves the sync endpoints, as a request would run.
        timings = await anyio.to_thread.run_sync(warm_up, self.scorer, self.max_batch)
        _record_warm_up(timings)
        await anyio.to_thread.run_sync(_warm_metrics)
        self.warm = True
        log.info(
            "warm: /predict of %d synthetic patients took %.2f s, /explain of one %.2f s (before reporting ready)",
            self.max_batch, timings["predict"], timings["explain"],
        )  # fmt: skip

    def __is_ready__(self) -> bool:
        """BentoML's ``/readyz``: 503 until the warm-up has run."""
        return self.warm

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
        response = self.scorer.predict([p.model_dump() for p in patients])
        _warn_duplicate_ids(response.results)
        return response

    @bentoml.api(route="/explain")
    def explain(
        self,
        patients: Annotated[list[Patient], Field(min_length=1)],  # type: ignore[valid-type]
        top: Annotated[int, Field(ge=1, le=100, strict=True, description="drivers returned per output")] = 10,
    ) -> S.ExplainResponse:
        """SHAP contributions to the benefit and to P(response | active arm), ranked, with plain-language sentences."""
        refused = self._too_many(len(patients))
        if refused is not None:
            return refused  # type: ignore[return-value]
        response = self.scorer.explain([p.model_dump() for p in patients], top=top)
        _warn_duplicate_ids(response.results)
        return response

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


# Settings for MLflow's REST client in the server: its defaults (7 retries with exponential back-off,
# 120 s timeouts) kept an unreachable registry silent for minutes. An operator's own values win.
REGISTRY_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
REGISTRY_PROBE_SECONDS = 3.0


def check_registry(uri: str, timeout: float = REGISTRY_PROBE_SECONDS) -> None:
    """Raise :class:`ConfigurationError` naming ``uri`` when its registry cannot be there, before MLflow touches it.

    A sqlite store must exist already (MLflow would create an empty ``mlflow.db``
    and report no champion, leaving the file behind); a tracking server must
    accept a connection within ``timeout`` seconds (MLflow would retry for minutes).
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if "@" in parts.netloc else uri  # no credentials
    if os.environ.get("MLFLOW_TRACKING_URI"):
        missing = f"no model registry: MLFLOW_TRACKING_URI={shown} names a store that does not exist; train first (make train) or point it at the registry"
    else:
        missing = f"no model registry: MLFLOW_TRACKING_URI is unset or empty and the default store {shown} does not exist; train first (make train) or set it"
    if parts.scheme == "sqlite":
        path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:" or not Path(path).is_file():
            raise ConfigurationError(missing)
    elif parts.scheme in ("http", "https"):
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as err:
            reason = err.strerror or type(err).__name__
            raise ConfigurationError(
                f"the model registry at {shown} is unreachable ({reason}, waited at most {timeout:.0f} s); check MLFLOW_TRACKING_URI"
            ) from None
    elif parts.scheme in ("", "file"):
        path = parts.path if parts.scheme == "file" else uri
        if not Path(path).is_dir():
            raise ConfigurationError(missing)


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


_forbid_unknown_fields(ResponderService)
ResponderService.add_asgi_middleware(ApiGuard)
