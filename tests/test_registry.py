"""The registry read without MLflow (core.registry.local_champions) resolves what MLflow resolves, or hands over to MLflow.

A real MLflow sqlite store with moved, deleted and missing aliases: for every
registered model the version, run id, tags and files found by reading the
store's tables are those MLflow's client gives; a store this reader does not
know (another schema, workspaces, another kind of URI) is left to MLflow.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from core.registry import CHAMPION, SQLITE_SCHEMA, StoredVersion, local_champions


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def version(name: str, tag: str) -> str:
        folder = tmp / "files" / f"{name}-{tag}"
        (folder / "artifacts").mkdir(parents=True)
        (folder / "artifacts" / "responder.joblib").write_text(tag)
        return client.create_model_version(name, str(folder), run_id=None, tags={"training_run_id": f"run-{tag}", "candidate": tag}).version

    for name in ("moved", "deleted", "unaliased", "older-deleted"):
        client.create_registered_model(name)
    v1, v2, v3 = version("moved", "a"), version("moved", "b"), version("moved", "c")
    client.set_registered_model_alias("moved", CHAMPION, v1)
    client.set_registered_model_alias("moved", CHAMPION, v2)  # the alias moved: v2, not the newest v3
    client.set_registered_model_alias("moved", "staging", v3)
    client.delete_model_version("moved", v1)
    d1 = version("deleted", "d")
    client.set_registered_model_alias("deleted", CHAMPION, d1)
    client.delete_model_version("deleted", d1)  # MLflow drops the alias with the version
    version("unaliased", "e")
    a1, a2 = version("older-deleted", "f"), version("older-deleted", "g")
    client.set_registered_model_alias("older-deleted", CHAMPION, a2)
    client.delete_model_version("older-deleted", a1)  # a deleted version beside the champion
    del v3
    return {"uri": uri, "client": client, "path": tmp / "mlflow.db", "names": ["moved", "deleted", "unaliased", "older-deleted", "never-registered"]}


def test_the_sqlite_schema_read_is_mlflows_current_one():
    from mlflow.store.db.utils import _get_latest_schema_revision

    assert _get_latest_schema_revision() == SQLITE_SCHEMA  # a new MLflow: check local_champions' queries, then update it


def test_local_champions_are_the_versions_mlflow_resolves(store):
    import mlflow.artifacts

    from core.registry import current_champion, setup_tracking

    _, client = setup_tracking(store["uri"])  # as serving reads it through MLflow (global URIs: models:/ downloads use them)
    local = local_champions(store["uri"], store["names"])
    assert local is not None
    found = 0
    for name in store["names"]:
        want = current_champion(client, name)
        got = local[name]
        if want is None:
            assert got is None, name
            continue
        found += 1
        assert isinstance(got, StoredVersion)
        assert (got.version, got.run_id, got.tags) == (str(want.version), want.run_id, want.tags), name
        assert got.download_uri == client.get_model_version_download_uri(name, want.version)
        downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{want.version}"))
        assert got.directory is not None and got.directory.resolve() == downloaded.resolve(), name
    assert found == 2 and local["moved"].tags["candidate"] == "b" and local["older-deleted"].version == "2"


def test_a_store_the_reader_does_not_know_is_left_to_mlflow(store, tmp_path, monkeypatch):
    import shutil

    assert local_champions(f"sqlite:///{tmp_path / 'absent.db'}", ["moved"]) is None  # MLflow would create it
    assert local_champions(f"file://{tmp_path}", ["moved"]) is None
    assert local_champions("http://127.0.0.1:5000", ["moved"]) is None
    other = tmp_path / "other.db"
    shutil.copy(store["path"], other)
    with sqlite3.connect(other) as db:
        db.execute("UPDATE alembic_version SET version_num = 'older'")
    assert local_champions(f"sqlite:///{other}", ["moved"]) is None  # MLflow upgrades or refuses it
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", "true")
    assert local_champions(store["uri"], ["moved"]) is None
    monkeypatch.delenv("MLFLOW_ENABLE_WORKSPACES")
    assert local_champions(store["uri"], ["moved"])["moved"].version == "2"


def test_a_version_stored_elsewhere_has_no_local_directory():
    kept = {"name": "m", "version": "1", "run_id": None, "tags": {}}
    assert StoredVersion(**kept, download_uri="s3://bucket/models/m-1/artifacts").directory is None
    assert StoredVersion(**kept, download_uri="models:/m-1").directory is None
    assert StoredVersion(**kept, download_uri="file://otherhost/models/m-1").directory is None
    assert StoredVersion(**kept, download_uri="file:///nonexistent/models/m-1").directory is None


def test_a_file_store_uri_is_refused_before_any_work_with_the_database_uri_to_use(tmp_path, monkeypatch):
    """MLflow 3 raises deep inside a file store's first use; the product says so in one line and does nothing."""
    from typer.testing import CliRunner

    from core.errors import ConfigError
    from core.registry import check_tracking_uri
    from responders.cli import app

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["simulate", "--n", "99", "--seed", "3", "--out", "t.csv"]).exit_code == 0
    result = runner.invoke(app, ["train", "t.csv", "--tracking-uri", f"file://{tmp_path}/store", "--report-dir", "out"])
    assert result.exit_code == 2, result.output
    assert f"use a database URI such as sqlite:///{tmp_path}/store/mlflow.db" in result.output
    assert "MLFLOW_ALLOW_FILE_STORE=true" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "store").exists() and not (tmp_path / "out").exists()  # nothing was started
    with pytest.raises(ConfigError, match="refuses a file store"):
        check_tracking_uri("./mlruns")
    for fine in (f"sqlite:///{tmp_path}/m.db", "http://127.0.0.1:5000", "databricks"):
        assert check_tracking_uri(fine) == fine
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's own opt-out is honoured
    assert check_tracking_uri("./mlruns") == "./mlruns"
