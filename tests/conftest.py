"""Shared test setup: no usage reporting, headless plotting, isolated caches."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# benchmarks/ is not part of the installed distribution: every test that uses its helpers (test_benchmarks,
# test_scale's process stopper) imports it from the repository, whichever test runs first.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# Before MLflow or BentoML is imported anywhere in the test session.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), "responders-mpl"))
# Tests build Bentos and import models: keep BentoML's store out of the developer's home.
os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="responders-bentoml-"))
# prometheus_client picks single- or multi-process values once, at import, from this variable; dask
# (test_scale) imports it long before test_serving's in-process BentoML app, whose /metrics reads the
# multi-process files and was empty in a full run. Set before anything imports it.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="responders-prometheus-"))

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from core.spec import DatasetSpec, load_spec  # noqa: E402
from training.simulate import simulate  # noqa: E402


@pytest.fixture(scope="session")
def spec() -> DatasetSpec:
    return load_spec()


@pytest.fixture(scope="session")
def final_99() -> pd.DataFrame:
    return simulate("final", 99, 2024)
