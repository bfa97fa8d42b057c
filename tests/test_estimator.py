"""The library API: ResponderEstimator(spec, config).fit(frame) without MLflow, and the job built on the same steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import fast_config, rounded

from core.data import DataContractError
from core.spec import load_spec
from training.estimator import ResponderEstimator
from training.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = json.loads((ROOT / "examples" / "patient.json").read_text())


THIRD_PARTY = {"builtins", "numpy", "pandas", "sklearn", "scipy", "lightgbm", "stochtree", "collections", "copyreg", "_codecs", "joblib", "functools"}


def pickled_modules(obj) -> set[str]:
    """The top-level packages a pickle of ``obj`` names (what loading it imports)."""
    import io
    import pickle

    seen: set[str] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add(module.split(".")[0])
            return super().find_class(module, name)

    Recorder(io.BytesIO(pickle.dumps(obj))).load()
    return seen


@pytest.mark.slow
def test_the_estimator_fits_the_models_the_job_registers_without_touching_mlflow(tmp_path, monkeypatch):
    """Same trial, spec, config and seed: the estimator's answers, tests and predictions are the job's."""
    import mlflow

    from core.registry import load_registered
    from training.train import run_training

    frame = simulate("final", 99, 417)
    spec, config = load_spec(), fast_config()
    touched = []
    monkeypatch.setattr(mlflow, "start_run", lambda *a, **k: touched.append("start_run"))
    fitted = ResponderEstimator(spec, config).fit(frame)
    monkeypatch.undo()
    assert touched == [] and not (tmp_path / "mlruns").exists()

    frame.to_csv(tmp_path / "trial.csv", index=False)
    summary = run_training(tmp_path / "trial.csv", spec, config, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", report_dir=None)
    patient = pd.DataFrame([EXAMPLE])
    for outcome, result in summary.outcomes.items():
        test = fitted.heterogeneity_test()[outcome]
        assert (test["champion"], test["answer"]) == (result.champion, result.answer)
        assert test["p_value"] == result.permutation.p_value and test["p_adjusted"] == result.p_adjusted
        pd.testing.assert_frame_equal(fitted.evaluate()[outcome], result.cv.summary)
        registered = load_registered(result.model_uri)
        assert pickled_modules(result.model) <= {"core", "features"} | THIRD_PARTY, pickled_modules(result.model)
        ours = fitted.predict(patient, outcome).drop(columns=["patient_id", "outcome"])
        pd.testing.assert_frame_equal(ours.reset_index(drop=True), registered.predict(patient).reset_index(drop=True))
    interval = fitted.benefit_interval(patient)
    assert list(interval["outcome"]) == list(spec.outcomes)
    assert np.all(interval["benefit_lower"] <= interval["benefit"]) and np.all(interval["benefit"] <= interval["benefit_upper"])
    explained = fitted.explain(patient)
    assert set(explained) == set(spec.outcomes) and all(len(v) == 1 for v in explained.values())
    assert rounded(explained["pain"][0].benefit.prediction) == rounded(float(interval["benefit"].iloc[0]))


def test_a_frame_that_breaks_the_data_contract_is_refused_before_any_fit():
    frame = simulate("final", 40, 3).drop(columns=["arm"])
    with pytest.raises(DataContractError) as err:
        ResponderEstimator(load_spec(), fast_config()).fit(frame)
    assert "arm" in err.value.report.render()


def test_config_overrides_as_a_dictionary_and_unknown_outcomes_are_named():
    estimator = ResponderEstimator("fibromyalgia-ldn", {"cv": {"folds": 4}})
    assert estimator.config.cv.folds == 4 and estimator.spec.name == "fibromyalgia-ldn"


@pytest.mark.slow
def test_the_quickstart_example_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Heterogeneity test per outcome" in result.stdout and "Benefit and interval for three patients" in result.stdout
    assert result.stdout.count("P0001") == 2  # one row per outcome
