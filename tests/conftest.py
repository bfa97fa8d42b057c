"""Shared test setup: no usage reporting, headless plotting, isolated caches."""

from __future__ import annotations

import os
import tempfile

# Before MLflow or BentoML is imported anywhere in the test session.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), "responders-mpl"))
# Tests build Bentos and import models: keep BentoML's store out of the developer's home.
os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="responders-bentoml-"))

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from training.simulate import simulate  # noqa: E402
from training.spec import DatasetSpec, load_spec  # noqa: E402


@pytest.fixture(scope="session")
def spec() -> DatasetSpec:
    return load_spec()


@pytest.fixture(scope="session")
def final_99() -> pd.DataFrame:
    return simulate("final", 99, 2024)
