"""Build a deployable Bento that carries the champions, offline (no container needed).

The champions are resolved from the MLflow registry, imported into the BentoML
model store with ``bentoml.mlflow.import_model`` under a tag that names their
registry version (``fibromyalgia-ldn-pain:mlflow-v3``), and the Bento is built
with those exact tags; a service started from the Bento serves the models it
carries (never the registry's current alias). A spec other than the default
needs ``RESPONDERS_SPEC`` set where the Bento runs.
"""

from __future__ import annotations

from pathlib import Path

import bentoml

from core.spec import DatasetSpec, load_spec
from serving.scoring import resolve_champions

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("features", "core", "serving")
BENTO_INCLUDE = tuple(f"{package}/**/*.{ext}" for package in PACKAGES for ext in ("py", "yaml", "j2"))


def import_champions(spec: DatasetSpec, tracking_uri: str | None = None) -> list[str]:
    """Import each outcome's champion into the BentoML model store (once per registry version)."""
    import bentoml.mlflow

    from core.registry import setup_tracking

    # The models:/ URIs below are read through MLflow's process-wide registry URI: point it at this store
    # (resolve_champions may read a local store without MLflow and then leaves it wherever it was).
    setup_tracking(tracking_uri)
    tags = []
    for outcome, champion in resolve_champions(spec, tracking_uri).items():
        ref = champion.ref
        tag = f"{ref.registered_model}:mlflow-v{ref.version}"
        try:
            stored = bentoml.models.get(tag)
        except bentoml.exceptions.NotFound:
            stored = None
        if stored is not None and stored.info.labels.get("training_run_id") != ref.training_run_id:
            # The same name and version from another registry (another store, a re-created one): not this champion.
            bentoml.models.delete(tag)
            stored = None
        if stored is None:
            bentoml.mlflow.import_model(
                tag,
                f"models:/{ref.registered_model}/{ref.version}",
                labels={
                    "registered_model": ref.registered_model,
                    "mlflow_version": ref.version,
                    "training_run_id": ref.training_run_id,
                    "outcome": outcome,
                    "candidate": ref.candidate,
                },
            )
        tags.append(tag)
    return tags


def build_bento(spec_name: str | None = None, tracking_uri: str | None = None, version: str | None = None) -> bentoml.Bento:
    spec = load_spec(spec_name)
    tags = import_champions(spec, tracking_uri)
    return bentoml.bentos.build(
        "serving.service:ResponderService",
        name="ldn-responders",
        description="LDN responder-subgroup API with its champion models",
        # Recursive globs for every package: a subpackage (core/runtime/) missing here breaks the Bento at import.
        include=[*BENTO_INCLUDE],
        # Anchored at the root: a bare "reports" also dropped serving/reports/, the /report endpoint's code.
        exclude=["/tests/", "/benchmarks/", "/mlruns/", "/data/", "/reports/", "/.venv/"],
        # Offline build: no lock resolution against an index; the pins are the project's lock file.
        python={"requirements_txt": "requirements/lock.txt", "lock_packages": False},
        models=tags,
        labels={"spec": spec.name},
        version=version,
        build_ctx=str(ROOT),
    )
