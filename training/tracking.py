"""MLflow plumbing: tracking URI resolution, experiments, model logging, registry and the champion alias.

The embedded default is a sqlite store at ``mlruns/mlflow.db`` with artifacts
under ``mlruns/artifacts`` (MLflow 3 deprecates the plain-file store); setting
``MLFLOW_TRACKING_URI`` (or ``--tracking-uri``) points a job at any tracking
server. URIs are resolved by the command's entry point, never at import.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import joblib
import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import ParamSchema, ParamSpec

from training.model import ResponderModel, input_schema, predictions_schema

CHAMPION = "champion"
DEFAULT_DIR = "mlruns"
PACKAGE = "ldn-responders"


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


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if tracking_uri.startswith("sqlite:///"):
        artifacts = Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        artifact_location = artifacts.resolve().as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)


def code_version() -> dict[str, str]:
    """Package version and, when run from a git checkout, the commit (with a dirty flag)."""
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = "unknown"
    tags = {"code.package_version": version}
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            tags["code.git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
            tags["code.git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def pip_requirements() -> list[str]:
    """Explicit requirements (inference takes 4-7 s per model and guesses)."""
    names = ["numpy", "pandas", "scikit-learn", "lightgbm", "shap", "mlflow", "joblib", "pydantic", "pyyaml", "scipy"]
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    try:
        pins.append(f"{PACKAGE}=={metadata.version(PACKAGE)}")
    except metadata.PackageNotFoundError:
        pass
    return pins


def log_responder_model(model: ResponderModel, name: str = "model") -> Any:
    """Log a ResponderModel as an MLflow pyfunc with signature, params and a synthetic input example."""
    signature = ModelSignature(
        inputs=input_schema(model),
        outputs=predictions_schema(),
        params=ParamSchema([ParamSpec("output", "string", "predictions")]),
    )
    example = model.example_input()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "responder.joblib"
        joblib.dump(model, path, compress=3)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts={"responder": str(path)},
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            metadata={
                "spec": model.spec.name,
                "outcome": model.outcome,
                "candidate": model.candidate_name,
                "evidence": model.evidence.to_dict(),
                "label_policy": model.label_policy.to_dict(),
                "average_effect": model.average_effect,
                "interval_level": model.interval_level,
            },
        )


def register(model_uri: str, name: str, tags: dict[str, Any]) -> ModelVersion:
    return mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def set_champion(client: MlflowClient, name: str, version: str) -> None:
    client.set_registered_model_alias(name, CHAMPION, version)


def load_registered(uri: str) -> ResponderModel:
    """Load the ResponderModel behind a ``models:/`` URI (without the pyfunc wrapper)."""
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    return joblib.load(Path(local) / "artifacts" / "responder.joblib")
