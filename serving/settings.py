"""The service's settings, from the environment, and the one error a bad setting raises.

``RESPONDERS_API_TOKEN`` (required unless ``RESPONDERS_INSECURE_DEV=1``),
``RESPONDERS_MAX_BATCH``, ``RESPONDERS_MAX_BODY_BYTES``, ``RESPONDERS_WORKERS``;
checked before the port is bound and read again when a worker starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from serving.scoring import DEFAULT_MAX_BATCH

DEFAULT_MAX_BODY_BYTES = 1 << 20  # a full batch of 500 typical patients is about 0.3 MB


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
