"""Training jobs: honest verdicts, no leakage, MLflow tracking, gated champion, executors."""

from __future__ import annotations

import json
import os
import sys
import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import OTHER_SPEC, fast_config, free_port, running
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score

from core.candidates import CANDIDATE_ORDER, make_candidate
from core.data import model_inputs
from core.labels import responder_labels
from core.runtime.artefact import PREDICTION_COLUMNS
from core.spec import load_spec
from training.evaluation import cross_validate
from training.executor import make_executor
from training.heterogeneity import heterogeneity_test
from training.simulate import simulate
from training.tracking import CHAMPION, load_registered
from training.train import outcome_data, run_training

pytestmark = pytest.mark.slow


def _write(frame: pd.DataFrame, path) -> str:
    frame.to_csv(path, index=False)
    return str(path)


def _uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


@pytest.fixture(scope="module")
def strong_job(tmp_path_factory):
    """A strong-subgroup trial of 600 patients, trained end to end into a fresh store."""
    tmp = tmp_path_factory.mktemp("strong")
    frame = simulate("strong", 600, 11)
    data = _write(frame, tmp / "strong.csv")
    config = fast_config(evidence={"replicates": 59})  # p can reach 1/60: below 0.05 after Holm over two outcomes
    summary = run_training(data, load_spec(), config, tracking_uri=_uri(tmp), summary_json=tmp / "summary.json")
    return frame, summary, tmp


@pytest.fixture(scope="module")
def null_job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("null")
    frame = simulate("null", 200, 5)
    summary = run_training(_write(frame, tmp / "null.csv"), load_spec(), fast_config(), tracking_uri=_uri(tmp))
    return frame, summary, tmp


def test_null_trial_gives_no_evidence_and_no_patient_labels(null_job):
    frame, summary, tmp = null_job
    for name, result in summary.outcomes.items():
        assert not result.evidence, (name, result.p_adjusted)
        assert result.p_adjusted >= 0.05
        assert result.answer in {"risk_based", "average"} and result.champion in {"risk_model", "arm_only"}
        assert "no reliable" in result.model.evidence.verdict
        out = result.model.predict(model_inputs(frame, load_spec()))
        assert out["patient_label"].isna().all() and out["population_label"].nunique() == 1
        assert "trial population as a whole" in out["population_label_reason"].iat[0]
        # One benefit for everybody has no calibration slope; a risk-based benefit varies with baseline risk and has one.
        slope = result.summary()["metrics"]["benefit_calibration_slope"]
        assert (slope is None) == (result.answer == "average"), (name, result.answer, slope)
    client = MlflowClient(_uri(tmp))
    version = client.get_model_version_by_alias("fibromyalgia-ldn-pain", CHAMPION)
    assert version.tags["subgroup_evidence"] == "False"
    assert version.tags["candidate"] == summary.outcomes["pain"].champion
    assert version.tags["label_mode"] == "population" and version.tags["answer"] == summary.outcomes["pain"].answer


def test_strong_trial_gives_evidence_and_separates_the_subgroup(strong_job):
    frame, summary, tmp = strong_job
    pain = summary.outcomes["pain"]
    assert pain.evidence and pain.p_adjusted < 0.05
    assert pain.answer == "conditional" and pain.champion == "bcf"
    # The benefit ranking separates the true subgroup, out of fold (nested CV) ...
    oof_auc = roc_auc_score(frame["true_responder_subgroup"], pain.cv.mean_benefit("selected"))
    assert oof_auc > 0.70, oof_auc
    # ... and the registered champion's benefit does too.
    model = load_registered(f"models:/fibromyalgia-ldn-pain@{CHAMPION}")
    predictions = model.predict(model_inputs(frame, load_spec()))
    assert roc_auc_score(frame["true_responder_subgroup"], predictions["benefit"]) > 0.75
    saved = json.loads((tmp / "summary.json").read_text())
    assert saved["outcomes"]["pain"]["evidence"] is True
    assert saved["outcomes"]["pain"]["registered_model"] == "fibromyalgia-ldn-pain"
    assert set(saved["outcomes"]["pain"]["metrics"]) >= {"auc_treated", "brier_mean", "autoc", "c_for_benefit", "qini"}
    # Calibration for benefit of the served ranking (out of fold), with its intervals, in the summary and the CLI text.
    m = saved["outcomes"]["pain"]["metrics"]
    assert m["benefit_calibration_slope_low"] < m["benefit_calibration_slope"] < m["benefit_calibration_slope_high"]
    assert m["benefit_calibration_slope"] > 0  # a ranking the test found carries information on who benefits more
    assert m["benefit_calibration_intercept_low"] < m["benefit_calibration_intercept"] < m["benefit_calibration_intercept_high"]
    assert f"slope {m['benefit_calibration_slope']:.2f} (nominal 95% interval" in summary.render()


def test_a_conditional_answer_records_its_calibration_allowance(strong_job):
    """600 patients make groups too small to measure the calibration error: recorded as not measured, nothing added.
    With groups allowed that small, the allowance is the out-of-fold error of the served candidate, and the served
    interval widens by it (each side in quadrature) around the same benefit."""
    from dataclasses import replace
    from types import SimpleNamespace

    from core.candidates import candidate_label
    from training import metrics as M
    from training.steps import calibration_allowance, disagreement_candidates

    frame, summary, tmp = strong_job
    pain = summary.outcomes["pain"]
    saved = json.loads((tmp / "summary.json").read_text())["outcomes"]
    assert saved["pain"]["calibration_allowance"] == {
        "sd": 0.0, "measured": False, "reason": "not measured: 600 patients make groups of fewer than 200 (needs 2,000)",
    }
    assert pain.model.calibration_allowance == 0.0
    assert MlflowClient(_uri(tmp)).get_run(pain.run_id).data.metrics["calibration_allowance"] == 0.0
    assert "interval: calibration allowance not measured: 600 patients make groups of fewer than 200" in summary.render()
    assert all(saved[o]["calibration_allowance"] is None for o in saved if saved[o]["answer"] != "conditional")
    small = fast_config(intervals={"calibration_min_group": 20})
    measured = calibration_allowance(pain, small)
    tau = pain.cv.mean_benefit(pain.champion)
    expected = M.calibration_error(tau, pain.cv.psi.mean(axis=0), 10)
    # ... and the served model's disagreement with the other eligible candidates that model effect modification.
    rivals = disagreement_candidates(pain, small.resolved(len(pain.data.y)))
    assert rivals and pain.champion not in rivals and not set(rivals) & {"arm_only", "risk_model"}
    assert set(rivals) <= set(pain.cv.eligible)
    spread = M.candidate_disagreement(tau, {name: pain.cv.mean_benefit(name) for name in rivals})
    assert measured["measured"] and measured["calibration_sd"] == expected["sd"] and measured["smallest_group"] == 60
    assert measured["disagreement_sd"] == spread["sd"] > 0 and measured["disagreement"] == spread["candidates"]
    assert measured["sd"] == pytest.approx(np.hypot(expected["sd"], spread["sd"]))
    assert all(candidate_label(name) in measured["reason"] for name in rivals)
    # Its reason gives the size added, or (an estimate of 0: the groups' gaps within their noise) that nothing is added.
    alone = fast_config(intervals={"calibration_min_group": 20, "disagreement": False})
    assert calibration_allowance(pain, alone)["sd"] == expected["sd"]

    def with_scores(psi):
        cv = SimpleNamespace(oof=pain.cv.oof, psi=np.tile(psi, (2, 1)), mean_benefit=pain.cv.mean_benefit, eligible=pain.cv.eligible)
        return calibration_allowance(SimpleNamespace(answer=pain.answer, data=pain.data, champion=pain.champion, cv=cv), alone)

    off = with_scores(3 * tau)  # the benefit is three times as spread out as predicted
    assert off["sd"] > 0 and off["reason"].startswith(f"SD {100 * off['sd']:.1f} pp, added to each side of the interval")
    assert "not counted (intervals.disagreement is off)" in off["reason"]
    zero = with_scores(tau)
    assert zero["measured"] and zero["sd"] == 0.0 and zero["reason"].endswith("so nothing is added to the interval")
    inputs = model_inputs(frame.head(50), load_spec())
    before = pain.model.predict(inputs)
    after = replace(pain.model, calibration_allowance=0.05).predict(inputs)
    np.testing.assert_array_equal(after["benefit"], before["benefit"])
    assert (after["benefit_lower"] < before["benefit_lower"]).all() and (after["benefit_upper"] > before["benefit_upper"]).all()


def test_the_disagreement_leaves_out_the_floor_the_risk_model_the_served_one_and_a_subsampled_fit():
    """From 2,000 patients BCF is fitted on a subsample of 1,000: its own noise would pass for the served model's error."""
    from types import SimpleNamespace

    from training.steps import disagreement_candidates

    names = ["arm_only", "risk_model", "bcf", "interaction_logistic", "t_learner", "dr_learner"]

    def rivals(n, eligible=names, champion="t_learner"):
        result = SimpleNamespace(data=SimpleNamespace(y=np.zeros(n)), champion=champion, cv=SimpleNamespace(eligible=eligible, oof=dict.fromkeys(names)))
        return disagreement_candidates(result, fast_config().resolved(n))

    assert rivals(3_000) == ["interaction_logistic", "dr_learner"]
    assert rivals(1_500) == ["bcf", "interaction_logistic", "dr_learner"]  # below 2,000 BCF sees every patient
    assert rivals(3_000, eligible=["arm_only", "t_learner"]) == []  # only eligible candidates count
    assert rivals(3_000, champion="bcf") == ["interaction_logistic", "t_learner", "dr_learner"]


def test_ground_truth_never_reaches_a_model(strong_job, tmp_path):
    frame, summary, _ = strong_job
    for result in summary.outcomes.values():
        model = result.model
        seen = list(model.pipeline.named_steps["parse"].feature_names_in_)
        assert not [c for c in seen if c.startswith("true_")]
        assert not [c for c in model.candidate.features_ if c.startswith("true_")]
    # A canary: a true_ column equal to the label would make a leaking model perfect.
    spec = load_spec()
    canary = frame.copy()
    canary["true_canary"] = responder_labels(canary, spec.outcomes["pain"])[0]
    data, _ = outcome_data(canary, spec, "pain", fast_config())
    assert "true_canary" not in data.X.columns
    assert not [c for c in data.X.columns if c.startswith("true_")]


def test_mlflow_store_holds_runs_metrics_inputs_artifacts_and_champion(strong_job):
    frame, summary, tmp = strong_job
    client = MlflowClient(_uri(tmp))
    parent = client.get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["spec"] == "fibromyalgia-ldn" and "code.package_version" in parent.data.tags
    [dataset_input] = parent.inputs.dataset_inputs
    assert dataset_input.dataset.name == "strong" and dataset_input.dataset.digest
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "data")}
    assert {"data/validation_report.txt", "data/validation_report.json", "data/spec.yaml"} <= artifacts

    children = client.search_runs([summary.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.data.tags["outcome"] for r in children} == {"pain", "memory"}
    pain_run = next(r for r in children if r.data.tags["outcome"] == "pain")
    assert {"auc_treated", "brier_mean", "autoc", "p_value", "p_adjusted"} <= set(pain_run.data.metrics)
    plots = {a.path for a in client.list_artifacts(pain_run.info.run_id, "plots")}
    assert {"plots/calibration.png", "plots/qini.png"} <= plots
    grandchildren = client.search_runs([summary.experiment_id], f"tags.mlflow.parentRunId = '{pain_run.info.run_id}'")
    assert {r.data.tags["candidate"] for r in grandchildren} == set(CANDIDATE_ORDER)
    assert all("auc_treated" in r.data.metrics for r in grandchildren)

    version = client.get_model_version_by_alias("fibromyalgia-ldn-pain", CHAMPION)
    assert str(version.version) == summary.outcomes["pain"].version
    mlflow.set_tracking_uri(_uri(tmp))
    mlflow.set_registry_uri(_uri(tmp))  # models:/ URIs are read from the registry URI, which an earlier test may have set
    loaded = mlflow.pyfunc.load_model(f"models:/fibromyalgia-ldn-pain@{CHAMPION}")
    patients = model_inputs(frame, load_spec()).head(5)
    out = loaded.predict(patients)
    assert list(out.columns) == PREDICTION_COLUMNS
    assert out["p_response_treated"].between(0, 1).all()
    assert (out["benefit_lower"] <= out["benefit"]).all() and (out["benefit"] <= out["benefit_upper"]).all()
    contributions = loaded.predict(patients.head(1), params={"output": "contributions"})
    assert {"feature", "benefit", "p_response_treated"} <= set(contributions.columns)


def test_the_trial_dataset_logs_the_schema_mlflow_infers_from_every_row():
    """The job's dataset input: MLflow's schema of the whole frame, from the rows that show each column's kinds."""
    from training.tracking import trial_dataset

    frame = simulate("final", 3_000, 5)
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith("true_")])
    text = "sex"
    frame.loc[2_500, text] = None  # missing only far beyond the first rows: the column is not required
    frame["given_as"] = pd.Series(["text"] * len(frame), dtype=object)  # an object column (cells looked at one by one)
    frame.loc[2_800, "given_as"] = None
    numbers = next(c for c in frame.columns if frame[c].dtype.kind == "f" and frame[c].notna().all())
    frame.loc[2_900, numbers] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow cannot tell which local-file source class to use
        full = mlflow.data.from_pandas(frame, source="trial.csv", name="trial", digest="abc")
        ours = trial_dataset(frame, source="trial.csv", name="trial", digest="abc")
    assert full.schema is not None and ours.schema.to_dict() == full.schema.to_dict()
    required = {c["name"]: c.get("required", True) for c in ours.schema.to_dict()}
    assert not required[text] and not required[numbers] and not required["given_as"] and required["age"]
    assert ours.to_dict()["profile"] == full.to_dict()["profile"]  # the whole frame's rows
    frame.loc[2_900, "given_as"] = 3.5  # a number among the text, late: MLflow gives no schema, and neither do we
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert mlflow.data.from_pandas(frame, source="trial.csv").schema is None
        assert trial_dataset(frame, source="trial.csv", name="trial", digest="abc").schema is None


def test_registered_model_takes_a_plain_read_csv_frame(strong_job):
    # pd.read_csv gives whole-number ages as int64 and labs as floats or text: the signature must take them.
    frame, summary, tmp = strong_job
    mlflow.set_tracking_uri(_uri(tmp))
    mlflow.set_registry_uri(_uri(tmp))  # models:/ URIs are read from the registry URI, which an earlier test may have set
    raw = pd.read_csv(tmp / "strong.csv")
    assert raw["age"].dtype == "int64" and raw["esr"].dtype == "float64" and not pd.api.types.is_numeric_dtype(raw["crp"])
    for outcome in ("pain", "memory"):
        uri = f"models:/fibromyalgia-ldn-{outcome}@{CHAMPION}"
        out = mlflow.pyfunc.load_model(uri).predict(raw)
        expected = load_registered(uri).predict(model_inputs(frame, load_spec()))
        np.testing.assert_allclose(out["benefit"].to_numpy(), expected["benefit"].to_numpy(), rtol=1e-9, atol=1e-12)


def test_failure_before_promotion_leaves_champion(tmp_path, monkeypatch):
    frame = simulate("final", 99, 21)
    data = _write(frame, tmp_path / "trial.csv")
    config = fast_config(evidence={"permutations": 0})
    first = run_training(data, load_spec(), config, tracking_uri=_uri(tmp_path))
    client = MlflowClient(_uri(tmp_path))
    before = str(client.get_model_version_by_alias("fibromyalgia-ldn-pain", CHAMPION).version)
    assert before == first.outcomes["pain"].version

    import training.train as job

    def explode(*args, **kwargs):
        raise RuntimeError("injected failure before promotion")

    monkeypatch.setattr(job, "validate_for_promotion", explode)
    with pytest.raises(RuntimeError, match="injected"):
        run_training(data, load_spec(), config, tracking_uri=_uri(tmp_path))
    after = str(client.get_model_version_by_alias("fibromyalgia-ldn-pain", CHAMPION).version)
    assert after == before
    versions = client.search_model_versions("name = 'fibromyalgia-ldn-pain'")
    assert len(versions) == 2  # the failed job registered a version, but it is not champion
    failed = client.search_runs([first.experiment_id], "attributes.status = 'FAILED'")
    assert failed


def test_gate_refuses_a_worse_candidate(tmp_path):
    frame = simulate("final", 99, 22)
    data = _write(frame, tmp_path / "trial.csv")
    config = fast_config(evidence={"permutations": 0}, gate={"max_brier_excess": 0.0})
    summary = run_training(data, load_spec(), config, tracking_uri=_uri(tmp_path))
    for result in summary.outcomes.values():
        if result.promoted:  # only when the risk model happens to beat the no-information Brier
            continue
        assert any("no-information" in reason for reason in result.gate)
        assert result.champion_version is None


def test_gate_reads_every_patient_up_to_its_cap_and_a_seeded_sample_above():
    from training.train import GATE_PATIENTS, gate_rows

    assert gate_rows(GATE_PATIENTS, 1) is None
    rows = gate_rows(10 * GATE_PATIENTS, 1)
    assert len(rows) == GATE_PATIENTS == len(np.unique(rows)) and (np.diff(rows) > 0).all()
    assert rows.min() >= 0 and rows.max() < 10 * GATE_PATIENTS and rows.max() > 9 * GATE_PATIENTS
    assert np.array_equal(rows, gate_rows(10 * GATE_PATIENTS, 1)) and not np.array_equal(rows, gate_rows(10 * GATE_PATIENTS, 2))


def test_same_seed_same_metrics_and_dask_matches_local(spec):
    frame = simulate("final", 99, 31)
    config = fast_config(evidence={"replicates": 5})
    data, _ = outcome_data(frame, spec, "pain", config)
    with make_executor("local", workers=2) as local:
        cv_local = cross_validate(data, spec, config, local)
        perm_local = heterogeneity_test(data, spec, config, local)
        again = cross_validate(data, spec, config, local)
    pd.testing.assert_frame_equal(cv_local.summary, again.summary)
    with make_executor("dask", workers=2) as dask:
        cv_dask = cross_validate(data, spec, config, dask)
        perm_dask = heterogeneity_test(data, spec, config, dask)
    pd.testing.assert_frame_equal(cv_local.summary, cv_dask.summary, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(perm_local.null, perm_dask.null, rtol=1e-9)
    assert perm_local.p_value == perm_dask.p_value




def test_second_layout_trains_end_to_end_without_code_changes(tmp_path):
    source = simulate("strong", 160, 41)
    rng = np.random.default_rng(0)
    crp = pd.to_numeric(source["crp"].str.lstrip("<"), errors="coerce") / 10
    frame = pd.DataFrame(
        {
            "subject": [f"S-{i}" for i in range(len(source))],
            "group": np.where(source["arm"] == "naltrexone", "active", "sham"),
            "years": source["age"],
            "site": rng.choice(["north", "south"], len(source)),
            "wb_0": (100 - 10 * source["pain_baseline"]).round(),
            "wb_26": (100 - 10 * source["pain_week12"]).round(),
            "hs_crp": crp.round(3).astype(str).where(crp.notna(), None),
            "interleukin_6": source["il6"],
            "ana_titre": source["ana"],
        }
    )
    spec_path = tmp_path / "other.yaml"
    spec_path.write_text(OTHER_SPEC)
    data = _write(frame, tmp_path / "other.csv")
    other = load_spec(spec_path)
    summary = run_training(data, other, fast_config(evidence={"permutations": 9}), tracking_uri=_uri(tmp_path))
    assert list(summary.outcomes) == ["wellbeing"]
    result = summary.outcomes["wellbeing"]
    assert result.registered_model == "other-trial-wellbeing" and result.promoted
    model = load_registered(f"models:/other-trial-wellbeing@{CHAMPION}")
    out = model.predict(model_inputs(pd.read_csv(data, dtype=str), other).head(3))
    assert out["p_response_treated"].between(0, 1).all()
    assert "crp_log" in model.feature_info() and "cognitive_dominance" not in model.feature_info()


@pytest.mark.integration
def test_training_against_a_real_mlflow_server(tmp_path):
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", str(tmp_path / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with running(command, f"http://127.0.0.1:{port}/health", env=env, cwd=tmp_path, timeout=120):
        uri = f"http://127.0.0.1:{port}"
        frame = simulate("final", 99, 51)
        summary = run_training(_write(frame, tmp_path / "trial.csv"), load_spec(), fast_config(evidence={"permutations": 0}), tracking_uri=uri)
        client = MlflowClient(uri)
        version = client.get_model_version_by_alias("fibromyalgia-ldn-memory", CHAMPION)
        assert str(version.version) == summary.outcomes["memory"].version
        assert client.get_run(summary.parent_run_id).info.status == "FINISHED"
        model = load_registered(f"models:/fibromyalgia-ldn-memory@{CHAMPION}")
        assert len(model.predict(model_inputs(frame, load_spec()).head(2))) == 2
    assert not os.path.exists(tmp_path / "mlruns")  # nothing fell back to the embedded store


def test_candidates_give_probabilities_and_additive_explanations(spec, final_99):
    config = fast_config()
    data, _ = outcome_data(final_99, spec, "pain", config)
    from features.pipeline import build_feature_pipeline

    F = build_feature_pipeline(spec).fit_transform(data.X)
    for name in CANDIDATE_ORDER:
        model = make_candidate(name, config.candidates, 0.5, 3).fit(F, data.t, data.y)
        p1, p0 = model.predict_arms(F)
        assert ((0 <= p1) & (p1 <= 1) & (0 <= p0) & (p0 <= 1)).all(), name
        explanation = model.explain(F)
        np.testing.assert_allclose(explanation.benefit.base + explanation.benefit.values.sum(1), p1 - p0, atol=1e-9)
        np.testing.assert_allclose(explanation.p_treated.base + explanation.p_treated.values.sum(1), p1, atol=1e-9)


def test_the_job_note_names_the_configured_heterogeneity_test():
    from core.config import load_config
    from training.tracking import job_note

    note = job_note("trial.csv", 99, "0" * 64, "fibromyalgia-ldn", ["pain"], load_config(None).model_dump(mode="json"))
    assert "imputed randomisation test" in note and "at most 199 null trials" in note and "above 2,000 patients the held-out test" in note
    permutation = load_config(None, evidence={"method": "permutation"}).model_dump(mode="json")
    assert "permutation test (199 permutations)" in job_note("trial.csv", 99, "0" * 64, "fibromyalgia-ldn", ["pain"], permutation)


def test_the_prespecified_inner_loop_fits_only_bcf_and_the_floor_and_chooses_as_if_it_fitted_all(spec, monkeypatch):
    from training import evaluation

    frame = simulate("strong", 99, 12)
    config = fast_config()
    assert config.resolved(99).selection.criterion == evaluation.PRESPECIFIED
    assert evaluation.inner_candidates(config.resolved(99)) == ["arm_only", "bcf"]
    assert evaluation.inner_candidates(config.resolved(20_000)) == list(config.candidates.enabled)
    data, _ = outcome_data(frame, spec, "pain", config)
    with make_executor("local", workers=1) as local:
        lean = cross_validate(data, spec, config, local)
        monkeypatch.setattr(evaluation, "inner_candidates", lambda c: list(c.candidates.enabled))
        full = cross_validate(data, spec, config, local)
    assert lean.selections == full.selections and lean.final_choice == full.final_choice
    np.testing.assert_array_equal(lean.oof["selected"], full.oof["selected"])
    pd.testing.assert_frame_equal(lean.summary, full.summary)


def test_a_prespecified_modifier_the_features_lack_stops_the_job_before_its_cross_validation(spec, final_99, monkeypatch):
    import training.steps as steps

    def no_cv(*args, **kwargs):
        raise AssertionError("cross-validation ran before the spec's modifiers were checked")

    monkeypatch.setattr(steps, "cross_validate", no_cv)
    wrong = spec.model_copy(update={"prespecified_modifiers": ["inflammation_index", "crp"]})
    data, _ = outcome_data(final_99, wrong, "pain", fast_config())
    with pytest.raises(ValueError, match=r"prespecified_modifiers: 'crp' is not an engineered feature .*inflammation_index"):
        steps.evaluate_outcome(data, wrong, fast_config(), make_executor(fast_config()), "pain")
    # With the check off (evidence.prespecified: false) the names are not read.
    off = fast_config(evidence={"prespecified": False})
    with pytest.raises(AssertionError, match="cross-validation ran"):
        steps.evaluate_outcome(data, wrong, off, make_executor(off), "pain")
