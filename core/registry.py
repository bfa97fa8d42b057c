"""Registry readers: where the tracking store is, which version is ``@champion``, and loading it.

Serving (the API, ``responders predict``, the Bento build) and training both read
the registry; only training writes to it (``training.tracking``). The embedded
default is a sqlite store at ``mlruns/mlflow.db`` with artifacts under
``mlruns/artifacts``; ``MLFLOW_TRACKING_URI`` (or ``--tracking-uri``) points
anywhere else. Loading checks the artefact's format version
(:func:`core.runtime.artefact.load_artefact`).
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from core.runtime.artefact import ResponderModel, load_artefact

CHAMPION = "champion"
DEFAULT_DIR = "mlruns"


def default_tracking_uri(root: str | Path | None = None) -> str:
    base = Path(root or os.getcwd()) / DEFAULT_DIR
    return f"sqlite:///{(base / 'mlflow.db').resolve()}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Explicit URI, else ``MLFLOW_TRACKING_URI``, else the embedded ``mlruns/`` store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def setup_tracking(uri: str | None = None) -> tuple[str, MlflowClient]:
    resolved = resolve_tracking_uri(uri)
    if resolved.startswith("sqlite:///"):
        Path(resolved.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    return resolved, MlflowClient(tracking_uri=resolved, registry_uri=resolved)


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def load_registered(uri: str) -> ResponderModel:
    """Load the ResponderModel behind a ``models:/`` URI (without the pyfunc wrapper)."""
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    return load_artefact(Path(local) / "artifacts" / "responder.joblib")
