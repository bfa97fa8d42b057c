"""Registry readers: where the tracking store is, which version is ``@champion``, and loading it.

Serving (the API, ``responders predict``, the Bento build) and training both read
the registry; only training writes to it (``training.tracking``). The embedded
default is a sqlite store at ``mlruns/mlflow.db`` with artifacts under
``mlruns/artifacts``; ``MLFLOW_TRACKING_URI`` (or ``--tracking-uri``) points
anywhere else. Loading checks the artefact's format version
(:func:`core.runtime.artefact.load_artefact`).

MLflow is imported only where it is used: importing it and opening its
SQLAlchemy store took about 1.4 s of the 3 s start-up of ``responders
predict``. :func:`local_champions` reads the champions of a local sqlite store
of the one schema it knows (MLflow 3.17's, :data:`SQLITE_SCHEMA`) directly with
:mod:`sqlite3`, the way MLflow's store looks them up; any other store, schema
or set-up is read through MLflow (tests/test_registry.py resolves both ways).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from core.runtime.artefact import ResponderModel

CHAMPION = "champion"
DEFAULT_DIR = "mlruns"
# The alembic revision of the sqlite schema that local_champions reads (the head of MLflow 3.17's migrations);
# a store at any other revision is read through MLflow, which upgrades or refuses it as it always did.
SQLITE_SCHEMA = "dc11669786a5"
_DEFAULT_WORKSPACE = "default"  # MLflow's single-tenant workspace (workspaces off)
_DELETED = "Deleted_Internal"  # MLflow's stage of a deleted model version (STAGE_DELETED_INTERNAL)


def default_tracking_uri(root: str | Path | None = None) -> str:
    base = Path(root or os.getcwd()) / DEFAULT_DIR
    return f"sqlite:///{(base / 'mlflow.db').resolve()}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """Explicit URI, else ``MLFLOW_TRACKING_URI``, else the embedded ``mlruns/`` store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def check_tracking_uri(uri: str) -> str:
    """``uri`` unchanged, or a ConfigError (one line, exit 2 from any command) for a store MLflow 3 refuses.

    MLflow 3.17 keeps the file store (``file:///...`` or a plain path) in maintenance mode and raises deep
    inside its first use unless ``MLFLOW_ALLOW_FILE_STORE`` is true; a training job would have started its
    fit by then. Checked before any work, with the database URI to use instead.
    """
    from core.errors import ConfigError

    # A plain path is a file store to MLflow; "databricks" (with or without a profile) is its one bare-word store.
    file_store = uri.startswith("file:") or ("://" not in uri and not uri.startswith("databricks"))
    allowed = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in {"1", "true", "yes"}
    if file_store and not allowed:
        folder = Path(uri.removeprefix("file://").removeprefix("file:") or DEFAULT_DIR)
        raise ConfigError(
            f"tracking URI {uri}",
            [
                "MLflow 3 refuses a file store (it keeps it in maintenance mode): use a database URI such as "
                f"sqlite:///{(folder / 'mlflow.db').resolve()} (the default store is {default_tracking_uri()}), "
                "or set MLFLOW_ALLOW_FILE_STORE=true to use the file store anyway"
            ],
        )
    return uri


def setup_tracking(uri: str | None = None) -> tuple[str, MlflowClient]:
    import mlflow
    from mlflow import MlflowClient

    resolved = check_tracking_uri(resolve_tracking_uri(uri))
    if resolved.startswith("sqlite:///"):
        Path(resolved.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    return resolved, MlflowClient(tracking_uri=resolved, registry_uri=resolved)


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def load_registered(uri: str) -> ResponderModel:
    """Load the ResponderModel behind a ``models:/`` URI (without the pyfunc wrapper)."""
    import mlflow.artifacts

    from core.runtime.artefact import load_artefact

    local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    return load_artefact(Path(local) / "artifacts" / "responder.joblib")


# Reading a local sqlite store without MLflow ------------------------------------------------------
@dataclass(frozen=True)
class StoredVersion:
    """A registered model version as a local sqlite store records it: what serving reads of MLflow's ``ModelVersion``.

    ``download_uri``: where its files are, as MLflow's
    ``get_model_version_download_uri`` gives it (the storage location, else
    the source); ``directory``: that place on this machine, or None when it is
    not a local directory (then MLflow downloads it).
    """

    name: str
    version: str
    run_id: str | None
    tags: dict[str, str]
    download_uri: str

    @property
    def directory(self) -> Path | None:
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        uri = self.download_uri
        if uri.startswith("file:"):
            parsed = urlparse(uri)
            if parsed.netloc not in ("", "localhost"):
                return None
            uri = url2pathname(parsed.path)  # as MLflow's local_file_uri_to_path
        elif "://" in uri or ":" in uri.split("/", 1)[0]:  # another scheme (s3://, models:/, ...)
            return None
        path = Path(uri)
        return path if path.is_absolute() and path.is_dir() else None


def local_champions(uri: str, names: list[str]) -> dict[str, StoredVersion | None] | None:
    """Each registered model's ``@champion`` version in a local sqlite store (None for a model without one), read without MLflow.

    Read as MLflow's SQLAlchemy registry store reads it
    (``get_model_version_by_alias`` then ``get_model_version_download_uri``):
    the registered model and the alias in the default workspace, the version
    the alias names unless it was deleted, its tags, and its storage location
    (else its source). Returns None (read it through MLflow, with its checks
    and messages) for anything else: a URI other than a plain
    ``sqlite:///path`` to an existing file, a schema other than
    :data:`SQLITE_SCHEMA`, workspaces switched on, objects outside the default
    workspace (MLflow refuses to start on those), or any sqlite error.
    """
    import sqlite3
    from urllib.parse import quote

    if not uri.startswith("sqlite:///") or "?" in uri:
        return None
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.is_file() or any(k.startswith("MLFLOW_WORKSPACE") or k == "MLFLOW_ENABLE_WORKSPACES" for k in os.environ):
        return None
    try:
        db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if db.execute("SELECT version_num FROM alembic_version").fetchall() != [(SQLITE_SCHEMA,)]:
            return None
        for table in ("registered_models", "webhooks"):
            if table in tables and db.execute(f"SELECT 1 FROM {table} WHERE workspace IS NOT NULL AND workspace != ? LIMIT 1", (_DEFAULT_WORKSPACE,)).fetchone():
                return None
        return {name: _stored_champion(db, name) for name in names}
    except sqlite3.Error:
        return None
    finally:
        db.close()


def _stored_champion(db, name: str) -> StoredVersion | None:
    ws = _DEFAULT_WORKSPACE
    if len(db.execute("SELECT 1 FROM registered_models WHERE workspace = ? AND name = ?", (ws, name)).fetchall()) != 1:
        return None
    alias = db.execute("SELECT version FROM registered_model_aliases WHERE workspace = ? AND name = ? AND alias = ?", (ws, name, CHAMPION)).fetchone()
    if alias is None:
        return None
    rows = db.execute(
        "SELECT version, run_id, storage_location, source FROM model_versions "
        "WHERE workspace = ? AND name = ? AND version = ? AND current_stage != ?",  # as SQLAlchemy's !=: a NULL stage does not match
        (ws, name, alias[0], _DELETED),
    ).fetchall()
    if len(rows) != 1:
        return None
    version, run_id, storage, source = rows[0]
    tags = dict(db.execute("SELECT key, value FROM model_version_tags WHERE workspace = ? AND name = ? AND version = ?", (ws, name, version)).fetchall())
    return StoredVersion(name=name, version=str(version), run_id=run_id, tags=tags, download_uri=storage or source or "")
