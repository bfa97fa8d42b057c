"""The model registry checked before MLflow touches it: a missing sqlite store or an unreachable server is one line.

Also the settings of MLflow's REST client in the server (fewer retries, shorter
timeouts than MLflow's own), which an operator's environment overrides.
"""

from __future__ import annotations

import os
from pathlib import Path

from serving.settings import ConfigurationError

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
