"""BentoML's private APIs (``_bentoml_sdk``, ``bentoml._internal``), checked with BentoML 1.4.

- :data:`Service`: the class ``@bentoml.service`` builds, subclassed so the ASGI
  app gets the path filter and ``/docs.json`` the published contract
  (``bentoml.service(service_class=...)`` takes a subclass of it);
- :data:`OpenAPISpecification`: the attrs class of the generated OpenAPI
  document, whose dictionary form the service replaces;
- :func:`render_metrics`: the Prometheus client behind ``/metrics``, rendered
  once at start-up so the first request does not pay for it;
- :data:`SERVER_LOGGERS`: the loggers that would otherwise print request data;
- :func:`json_response_body`: an endpoint's answer serialised as BentoML's JSON serde
  writes it into the response (the warm-up's requests).
"""

from __future__ import annotations

from _bentoml_sdk import Service
from bentoml._internal.service.openapi.specification import OpenAPISpecification

CHECKED_WITH = "1.4"  # the BentoML minor version these calls were checked with (tests/test_compat.py)

SERVER_LOGGERS = ("bentoml._internal.server.http_app", "bentoml", "_bentoml_impl")


def render_metrics() -> bytes:
    """The Prometheus exposition of this process (BentoML's metrics client)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return BentoMLContainer.metrics_client.get().generate_latest()


def json_response_body(output) -> bytes:
    """The body BentoML sends for an endpoint's pydantic answer (``JSONSerde.serialize_model``)."""
    from _bentoml_impl.serde import JSONSerde

    return b"".join(JSONSerde().serialize_model(output).data)


__all__ = ["CHECKED_WITH", "SERVER_LOGGERS", "OpenAPISpecification", "Service", "json_response_body", "render_metrics"]
