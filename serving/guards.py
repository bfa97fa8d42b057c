"""The ASGI guards in front of the endpoints: unknown paths, the bearer token, bounded bodies, and 422 for bad ones.

:class:`PathFilter` wraps BentoML's whole application (404 before the metrics
see an unknown path); :class:`ApiGuard` is BentoML middleware that checks a data
request in order of cost: the token (401), the body size (413), the media type
(415), JSON nesting and syntax and non-finite numbers (422) and the batch size
(413), and turns BentoML's 400 for a schema error into a bounded 422 naming each field.
"""

from __future__ import annotations

import hmac
import json
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.responses import JSONResponse

from serving import supervision
from serving.contract import (
    _INDEX_HEADERS,
    BATCH_ROUTES,
    DATA_ROUTES,
    KNOWN_PATHS,
    MAX_LISTED_ERRORS,
    OPEN_PATHS,
    _index_html,
)
from serving.settings import ServiceSettings
from serving.trial import SPEC, Patient


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

    def __init__(self, app, docs_html: Callable[[], bytes]):
        self.app = app
        self.docs_html = docs_html  # GET /docs: the service's readable contract (serving.service.api_docs_html)
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
            return await _respond(send, 200, self.docs_html(), b"text/html; charset=utf-8", _INDEX_HEADERS, head=method == "HEAD")
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
        refused = check_body(body, scope["path"], self.max_batch)
        if refused is None:
            return body
        status, payload = refused
        await _respond(send, status, json.dumps(payload).encode(), b"application/json")
        return None


def check_body(body: bytes, path: str, max_batch: int) -> tuple[int, dict] | None:
    """The checks of a data request's non-empty JSON body after its size and media type: None, or (status, answer).

    In order: nesting deeper than :data:`MAX_JSON_DEPTH` (422), JSON syntax
    (422), non-finite numbers (422, one entry per field) and the batch size
    (413). The start-up warm-up runs it too, on its synthetic bodies.
    """
    # Fewer opening brackets than the limit cannot nest deeper (a 1-patient request has 3): no scan needed.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _nesting_depth(body) > MAX_JSON_DEPTH:
        message = f"JSON nested deeper than {MAX_JSON_DEPTH} levels; a request needs at most {MAX_REQUEST_DEPTH}"
        return 422, _unprocessable_payload([{"field": "body", "message": message, "type": "json_too_deep"}])
    try:
        # Python's own parser (NaN, Infinity and overflowing literals become non-finite floats); only when one is
        # there is the body parsed again with hooks that keep each one's text for the answer.
        data = json.loads(body)
        non_finite = _has_non_finite(data)
        if non_finite:
            data = json.loads(body, parse_constant=_NonFinite, parse_float=_finite_float)
    except RecursionError:  # not reached after the depth check; kept so that nesting can never become a 500
        return 422, _unprocessable_payload([{"field": "body", "message": "JSON nested too deeply", "type": "json_too_deep"}])
    except ValueError as err:  # JSONDecodeError and undecodable bytes; the message carries no values
        where = f" at line {err.lineno}, column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        return 422, _unprocessable_payload([{"field": "body", "message": f"not valid JSON{where}", "type": "json_invalid"}])
    if non_finite:
        return 422, _unprocessable_payload(_non_finite_fields(data))
    patients = data.get("patients") if isinstance(data, dict) else None
    if path in BATCH_ROUTES and isinstance(patients, list) and len(patients) > max_batch:
        return 413, {"error": "batch too large", "detail": f"{len(patients)} patients sent; the limit is {max_batch} per request (RESPONDERS_MAX_BATCH)"}
    return None


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


def _has_non_finite(data: Any) -> bool:
    """Whether a float in ``data`` (as ``json.loads`` made it) is NaN or infinite (iterative; the depth is bounded)."""
    stack = [data]
    while stack:
        value = stack.pop()
        if type(value) is float:
            if value - value != 0.0:  # NaN or an infinity
                return True
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


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
