"""The published contract: the routes, the OpenAPI document as the service really behaves, and its pages.

BentoML generates an OpenAPI document from the endpoints; :func:`publish_contract`
completes it (bearer security, the 401/413/415/422 answers, the batch limit, the
trial's title and version), :class:`PublishedSpec` serves that completed form at
``/docs.json``, :func:`docs_page` renders it at ``/docs`` and :func:`_index_html`
is the page at ``/``.
"""

from __future__ import annotations

import copy
from typing import Any

import attr
import yaml

from serving.compat.bentoml import OpenAPISpecification
from serving.settings import ServiceSettings
from serving.trial import SPEC, SUMMARY, TITLE

MAX_LISTED_ERRORS = 50
DATA_ROUTES = ("/predict", "/explain", "/report", "/metadata")
BATCH_ROUTES = ("/predict", "/explain")
OPEN_PATHS = ("/", "/healthz", "/livez", "/readyz", "/metrics", "/docs.json", "/docs")
# Every path the service answers; BentoML also serves its schema at /schema.json (behind the token).
KNOWN_PATHS = frozenset({*OPEN_PATHS, *DATA_ROUTES, "/schema.json"})


def _version() -> str:
    """The installed package's version (the OpenAPI document's ``info.version``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ldn-responders")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


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


def docs_page(doc: dict) -> bytes:
    """``GET /docs``: the OpenAPI contract ``doc`` as one readable, self-contained page (no scripts, nothing loaded from the web)."""
    from html import escape

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
                parts.append("<h3>Request body (JSON)</h3>" + _field_table(_schema_rows(body, schemas)))
            parts.append("<h3>Responses</h3><ul>")
            for status, response in operation.get("responses", {}).items():
                parts.append(f"<li><strong>{escape(str(status))}</strong>: {escape(response.get('description', ''))}</li>")
            parts.append("</ul>")
            ok = operation.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {}).get("schema")
            if ok:
                parts.append("<details><summary>200 response fields</summary>" + _field_table(_schema_rows(ok, schemas)) + "</details>")
    parts.append("<h2 id=\"schemas\">Schemas</h2><p>Every object the endpoints take or answer, field by field.</p>")
    for name, schema in sorted(schemas.items()):
        if not schema.get("properties"):
            continue
        parts.append(f"<h3 id=\"schema-{escape(name)}\">{escape(name)}</h3><p>{escape(schema.get('description', ''))}</p>")
        parts.append(_field_table(_schema_rows(schema, {}, 3), indent=False))
    parts.append("</body></html>")
    return "\n".join(parts).encode()


def _field_table(rows: list[tuple[int, str, str, str]], indent: bool = True) -> str:
    """One table of fields: (depth, field, type, description) rows; nested fields indented by their depth."""
    from html import escape

    cells = "".join(
        "<tr><td{}><code>{}</code></td><td>{}</td><td>{}</td></tr>".format(f' class="d{d}"' if indent else "", escape(f), escape(k), escape(t))
        for d, f, k, t in rows
    )
    return f'<div class="wrap"><table><tr><th>Field</th><th>Type</th><th>Description</th></tr>{cells}</table></div>'


@attr.frozen
class PublishedSpec(OpenAPISpecification):
    """BentoML's OpenAPI specification whose dictionary form is the published contract."""

    def asdict(self) -> dict[str, Any]:
        return publish_contract(super().asdict(), ServiceSettings.from_env())


yaml.add_representer(PublishedSpec, lambda dumper, spec: dumper.represent_dict(spec.asdict()))
