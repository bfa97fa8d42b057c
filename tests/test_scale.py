"""Scale: lean fits equal the estimator wrappers, settings follow n, data reach workers once, and the
same code runs against a separate Dask scheduler. The 10^5-patient job itself is in the benchmarks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import FAST, fast_config, free_port
from scipy.special import expit
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.preprocessing import StandardScaler

from core.candidates import (
    LIBLINEAR_MAX_N,
    BootstrapEnsemble,
    fit_lgbm,
    fit_logistic,
    fit_logistic_cv,
    logistic_solver,
    make_candidate,
    stratified_subsample,
)
from core.config import LightGBMParams, _merge, load_config
from core.data import validate
from features.pipeline import build_feature_pipeline
from training import metrics as M
from training.evaluation import cross_validate, fit_pipeline, parsed_inputs
from training.executor import LocalExecutor, make_executor
from training.heterogeneity import heterogeneity_test
from training.simulate import _export, simulate
from training.train import outcome_data


@pytest.fixture(scope="module")
def design():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(90, 12))
    y = (rng.random(90) < 1 / (1 + np.exp(-X[:, 0] + 0.3 * X[:, 1]))).astype(int)
    return X, y


# Lean fits ---------------------------------------------------------------------------------------------
def test_lean_logistic_fits_equal_scikit_learn_bit_for_bit(design):
    X, y = design
    Z = StandardScaler().fit_transform(X)
    model = LogisticRegression(C=0.1, solver="liblinear", max_iter=2000).fit(Z, y)
    coef, intercept = fit_logistic(Z, y, 0.1)
    assert np.array_equal(coef, model.coef_[0]) and intercept == model.intercept_[0]
    cv = LogisticRegressionCV(
        Cs=[0.001, 0.01, 0.1, 1.0], l1_ratios=(0.0,), cv=3, scoring="neg_log_loss", solver="liblinear", max_iter=5000, use_legacy_attributes=False
    ).fit(Z, y)
    coef, intercept, C = fit_logistic_cv(Z, y, [0.001, 0.01, 0.1, 1.0], 3)
    assert C == np.ravel(cv.C_)[0] and np.array_equal(coef, cv.coef_[0]) and intercept == cv.intercept_[0]


def test_lightgbm_on_arrays_grows_the_wrappers_trees(design):
    X, y = design
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    params = LightGBMParams(n_estimators=25)
    wrapped = lgb.LGBMClassifier(**params.kwargs(3)).fit(frame, y)
    lean = fit_lgbm(X, y, params, 3, list(frame.columns))
    assert _trees(lean.booster_) == _trees(wrapped.booster_)
    assert np.array_equal(lean.predict_proba(X), wrapped.predict_proba(frame))
    regressor = lgb.LGBMRegressor(**params.kwargs(4)).fit(frame, X[:, 2])
    assert _trees(fit_lgbm(X, X[:, 2], params, 4, list(frame.columns), "regression").booster_) == _trees(regressor.booster_)


def _trees(booster: lgb.Booster) -> str:
    # The model text without its last line, which records pandas categories (none either way).
    text = booster.model_to_string()
    assert "pandas_categorical" in text.splitlines()[-1]
    return "\n".join(text.splitlines()[:-1])


def test_solver_rule_and_large_n_fits_agree_with_the_small_n_solver():
    assert logistic_solver("auto", LIBLINEAR_MAX_N - 1) == "liblinear" and logistic_solver("auto", LIBLINEAR_MAX_N) == "lbfgs"
    assert logistic_solver("newton-cholesky", 10) == "newton-cholesky"  # an explicit choice wins
    rng = np.random.default_rng(2)
    Z = rng.normal(size=(6000, 8))
    y = (rng.random(6000) < 1 / (1 + np.exp(-Z[:, 0]))).astype(int)
    p_lib = 1 / (1 + np.exp(-(Z @ fit_logistic(Z, y, 0.1, "liblinear")[0])))
    p_lbfgs = 1 / (1 + np.exp(-(Z @ fit_logistic(Z, y, 0.1, "lbfgs")[0])))
    assert np.abs(p_lib - p_lbfgs).max() < 5e-3  # the same model up to the intercept's (tiny) penalty


def test_the_large_n_penalty_choice_matches_scikit_learns_cv_without_copying_folds():
    rng = np.random.default_rng(4)
    Z = rng.normal(size=(6000, 10))
    y = (rng.random(6000) < 1 / (1 + np.exp(-(0.8 * Z[:, 0] - 0.5 * Z[:, 1] + 0.1 * Z[:, 2])))).astype(int)
    Cs = [0.0003, 0.001, 0.01, 0.1]
    reference = LogisticRegressionCV(
        Cs=Cs, l1_ratios=(0.0,), cv=3, scoring="neg_log_loss", solver="lbfgs", max_iter=5000, use_legacy_attributes=False
    ).fit(Z, y)
    coef, intercept, C = fit_logistic_cv(Z, y, Cs, 3, "lbfgs")
    assert C == np.ravel(reference.C_)[0]
    # The same model up to lbfgs's tolerance (scikit-learn's refit starts from the folds' mean coefficients).
    np.testing.assert_allclose(coef, reference.coef_[0], atol=1e-3)
    assert np.abs(expit(Z @ coef + intercept) - reference.predict_proba(Z)[:, 1]).max() < 1e-3


def test_the_interaction_design_is_written_in_place_with_the_same_floats():
    from core.candidates.base import _scale

    rng = np.random.default_rng(6)
    A, t = rng.normal(3.0, 2.0, size=(500, 7)), rng.integers(0, 2, 500).astype(float)
    model = make_candidate("interaction_logistic", load_config().candidates, 0.5, 1)
    model.scaler_ = StandardScaler().fit(A)
    Z = _scale(A, model.scaler_)
    assert np.array_equal(model._design(A, t), np.column_stack([Z, model.treatment_scale * t, Z * t[:, None]]))


# Settings that follow n ----------------------------------------------------------------------------------
def test_auto_settings_follow_n_and_an_explicit_value_wins():
    config = load_config()
    small, large = config.resolved(99), config.resolved(100_000)
    assert (small.cv.folds, small.cv.repeats, small.cv.inner_folds) == (5, 3, 3)
    assert small.intervals.bootstrap_models == 100 and small.candidates.bcf.max_patients is None
    assert (large.cv.folds, large.cv.repeats, large.cv.inner_folds) == (2, 1, 2)
    assert large.intervals.bootstrap_models < 100 and large.candidates.bcf.max_patients == 1_000
    mine = load_config(None, cv={"repeats": 2}, intervals={"bootstrap_models": 7}, candidates={"bcf": {"max_patients": None}})
    resolved = mine.resolved(100_000)
    assert resolved.cv.repeats == 2 and resolved.intervals.bootstrap_models == 7 and resolved.candidates.bcf.max_patients is None
    assert resolved.resolved(50) == resolved  # resolving twice changes nothing


def test_bcf_subsample_keeps_each_stratum_in_proportion():
    strata = np.repeat([0, 1, 2, 3], [500, 250, 150, 100])
    rows = stratified_subsample(strata, 100, 7)
    assert len(rows) == 100 and len(set(rows)) == 100
    assert np.bincount(strata[rows]).tolist() == [50, 25, 15, 10]
    assert np.array_equal(rows, stratified_subsample(strata, 100, 7))


def test_c_for_benefit_by_sorting_equals_the_pairwise_definition():
    rng = np.random.default_rng(0)
    for n in (6, 7, 40, 301):
        t, y = rng.integers(0, 2, n), rng.integers(0, 2, n)
        tau = np.round(rng.normal(size=n), 1)  # ties included
        treated, control = np.nonzero(t == 1)[0], np.nonzero(t == 0)[0]
        treated, control = treated[M._order(tau[treated])], control[M._order(tau[control])]
        m = min(len(treated), len(control))
        pt = treated[np.round(np.linspace(0, len(treated) - 1, m)).astype(int)]
        pc = control[np.round(np.linspace(0, len(control) - 1, m)).astype(int)]
        pred, obs = (tau[pt] + tau[pc]) / 2, y[pt] - y[pc]
        usable = obs[:, None] > obs[None, :]
        d = pred[:, None] - pred[None, :]
        with np.errstate(invalid="ignore"):
            expected = (np.sum((d > 0) & usable) + 0.5 * np.sum((d == 0) & usable)) / usable.sum()
        np.testing.assert_equal(M.c_for_benefit(tau, t, y), expected)  # NaN when no pair is usable


# Data movement and the final fits -------------------------------------------------------------------------
def test_parsing_once_gives_the_pipeline_of_the_raw_rows(spec, final_99):
    config = fast_config()
    data, _ = outcome_data(final_99, spec, "pain", config)
    rows = np.arange(10, 80)
    direct = build_feature_pipeline(spec).fit(data.X.iloc[rows])
    expected = direct.transform(data.X.iloc[rows]).reset_index(drop=True)
    parsed = parsed_inputs(spec, data.X)
    pipeline, F = fit_pipeline(spec, data.X.iloc[rows], parsed.iloc[rows])
    pd.testing.assert_frame_equal(F, expected, check_exact=True)
    pd.testing.assert_frame_equal(pipeline.transform(data.X.head(5)), direct.transform(data.X.head(5)), check_exact=True)
    # Whatever the parsing step learns about its rows (used for input warnings when serving) is learned from the same rows.
    learned = [k for k in vars(direct.steps[0][1]) if k.endswith("_") and not k.startswith("_")]
    for key in learned:
        assert repr(getattr(pipeline.steps[0][1], key)) == repr(getattr(direct.steps[0][1], key)), key


def _square_plus(item, shared):
    return item * item + shared["offset"] + os.getpid() * 0


def test_shared_data_reach_local_workers_once_per_loop_and_results_keep_order():
    executor = LocalExecutor(workers=2)
    assert executor.map(_square_plus, list(range(12)), shared={"offset": 3}) == [i * i + 3 for i in range(12)]
    assert LocalExecutor(workers=1).map(_square_plus, [2, 3], shared={"offset": 1}) == [5, 10]
    assert not list(Path("/dev/shm").glob(f"responders-shared-{os.getpid()}-*")) if Path("/dev/shm").is_dir() else True


def _has_module(item, shared):
    import sys

    return os.getpid(), shared in sys.modules


def test_workers_started_ahead_import_the_modules_and_the_next_map_waits_for_them():
    """A training job starts its local workers while it opens MLflow; the first loop reuses them (loky's pool)."""
    from training.executor import _STARTING, start_local_workers

    start_local_workers(2, ["tabnanny"])  # a module nothing else here imports
    assert len(_STARTING) == 1  # returned at once, the start still pending
    answers = LocalExecutor(workers=2).map(_has_module, list(range(8)), shared="tabnanny")
    assert not _STARTING  # the map waited for the start first: no two joblib calls on one pool at once
    assert any(imported for _, imported in answers)
    start_local_workers(1, ["tabnanny"])  # one worker runs in process: nothing to start
    assert not _STARTING


def test_every_map_is_counted_and_bytes_only_when_asked():
    from training.executor import MAP_LOG, pickled_size

    shared = {"offset": 3, "table": np.arange(5_000.0)}
    MAP_LOG.clear()
    assert LocalExecutor(workers=2).map(_square_plus, list(range(6)), desc="pain: nested CV", shared=shared) == [i * i + 3 for i in range(6)]
    [off] = MAP_LOG.records
    assert (off.desc, off.executor, off.workers, off.tasks) == ("pain: nested CV", "local", 2, 6) and off.seconds > 0
    assert off.shared_bytes == pickled_size(shared) > 40_000 and off.item_bytes == off.result_bytes == off.count_seconds == 0  # free
    MAP_LOG.measure_bytes = True
    try:
        LocalExecutor(workers=2).map(_square_plus, list(range(6)), desc="final fits", shared=shared)
        LocalExecutor(workers=1).map(_square_plus, [2, 3], desc="in process", shared=shared)
    finally:
        MAP_LOG.measure_bytes = False
    pooled, alone = list(MAP_LOG.records)[1:]
    assert pooled.item_bytes == sum(pickled_size(i) for i in range(6)) and pooled.result_bytes == sum(pickled_size(i * i + 3) for i in range(6))
    assert 0 < pooled.count_seconds < pooled.seconds
    assert alone.tasks == 2 and alone.shared_bytes == pickled_size(shared) and alone.result_bytes == pickled_size(7) + pickled_size(12)
    MAP_LOG.clear()
    assert MAP_LOG.to_list() == []


def test_bootstrap_refits_made_in_the_pool_equal_the_serial_ensemble(spec, final_99):
    config = fast_config()
    data, _ = outcome_data(final_99, spec, "pain", config)
    F = build_feature_pipeline(spec).fit_transform(data.X)
    candidate = make_candidate("t_learner", config.candidates, 0.5, 1, final=True).fit(F, data.t, data.y)
    serial = BootstrapEnsemble(candidate, 6, 0.95, 1).fit(F, data.t, data.y)
    resamples = serial.resamples(data.t)
    models = LocalExecutor(workers=2).map(_refit, resamples, shared=(candidate, F, data.t, data.y))
    pooled = BootstrapEnsemble(candidate, 6, 0.95, 1).fit(F, data.t, data.y, models=models)
    point = candidate.predict_benefit(F)
    for a, b in zip(serial.interval(F, point), pooled.interval(F, point), strict=True):
        assert np.array_equal(a, b)


def _refit(resample, shared):
    candidate, F, t, y = shared
    rows, seed, _ = resample
    return BootstrapEnsemble.refit(candidate, F, t, y, rows, seed)


# The simulator and the data contract ---------------------------------------------------------------------
def test_simulated_labs_above_the_plausible_range_are_reported_above_the_measuring_range(spec):
    out = _export(np.array([12.0, 160.4, 160.6, 179.0, 0.5]), np.zeros(5, bool), 0, 1.0, "esr", 160.0)
    assert out.tolist() == ["12", "160", ">160", ">160", "<1"]
    frame = simulate("final", 300, 3)
    frame.loc[:4, "esr"] = ">160"  # what a 1-in-20,000 draw now looks like: the contract accepts it
    assert not validate(frame, spec).errors


def test_a_large_simulated_trial_satisfies_the_data_contract(spec):
    frame = simulate("strong", 20_000, 1)
    report = validate(frame, spec)
    assert not report.errors, report.render()[:2000]


# The same code against a separate Dask scheduler -----------------------------------------------------------
@pytest.mark.integration
def test_a_job_runs_against_a_dask_scheduler_with_workers_in_other_processes(tmp_path):
    dask = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")
    assert dask, "the dask command comes with dask[distributed]"
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = [open(tmp_path / name, "w") for name in ("scheduler.log", "worker.log")]  # noqa: SIM115 - closed below
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    processes = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0", "--no-show"],
            stdout=logs[0], stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )
    ]
    try:
        _wait_for_port(port, processes[0])
        processes.append(
            subprocess.Popen(
                [dask, "worker", address, "--nworkers", "2", "--nthreads", "1", "--host", "127.0.0.1",
                 "--dashboard-address", ":0", "--local-directory", str(tmp_path / "dask-worker")],
                stdout=logs[1], stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
            )
        )
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
        frame = simulate("final", 80, 8)
        data = tmp_path / "trial.csv"
        frame.to_csv(data, index=False)
        overrides = {"evidence": {"replicates": 9}}
        config_file = tmp_path / "tiny.yaml"
        config_file.write_text(yaml.safe_dump(_merge(FAST, overrides)))
        responders = Path(sys.executable).parent / "responders"
        summary = tmp_path / "summary.json"
        job = subprocess.run(
            [str(responders), "train", str(data), "--config", str(config_file), "--scheduler", address,
             "--tracking-uri", f"sqlite:///{tmp_path / 'remote.db'}", "--summary-json", str(summary)],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
        )
        assert job.returncode == 0, job.stderr[-3000:]
        remote = json.loads(summary.read_text())
        # The same numbers as this process computes with local worker processes.
        config, spec = fast_config(**overrides), spec_default()
        with make_executor("local", workers=2) as local:
            for outcome, result in remote["outcomes"].items():
                outcome_frame, _ = outcome_data(frame, spec, outcome, config)
                cv = cross_validate(outcome_frame, spec, config, local)
                test = heterogeneity_test(outcome_frame, spec, config, local)
                assert result["eligible"] == cv.eligible and result["permutations"] == test.permutations_run
                assert result["p_value"] == pytest.approx(test.p_value, rel=1e-12)
                served = "selected" if result["answer"] == "conditional" and result["champion"] == cv.final_choice else result["champion"]
                assert result["metrics"]["brier_mean"] == pytest.approx(cv.metric(served, "brier_mean"), rel=1e-12)
    finally:
        from benchmarks.common import stop_process

        for process in reversed(processes):  # our own processes, by their handles
            stop_process(process, 30)
        for log in logs:
            log.close()


def spec_default():
    from core.spec import load_spec

    return load_spec()


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dask scheduler exited with code {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"no scheduler on port {port} after {timeout:.0f} s")


def test_dask_executor_map_with_shared_data_matches_local():
    with make_executor("dask", workers=2) as dask:
        got = dask.map(_square_plus, list(range(7)), shared={"offset": 2})
        assert dask.workers == 2
    assert got == [i * i + 2 for i in range(7)]


def _kill_every_worker_once(item, shared):
    """Item 2, the first time: wait until both workers have run a task, kill the other one, then die (both stop)."""
    import signal

    index, folder = item
    folder = Path(folder)
    (folder / f"pid-{os.getpid()}").touch()
    time.sleep(0.3)
    if index == 2 and not (folder / "killed").exists():
        deadline = time.monotonic() + 20
        while len(list(folder.glob("pid-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        (folder / "killed").touch()
        for path in folder.glob("pid-*"):
            pid = int(path.name.removeprefix("pid-"))
            if pid != os.getpid():
                os.kill(pid, signal.SIGKILL)
        os._exit(1)
    return index + shared["offset"]


def test_dask_map_resends_the_shared_data_when_every_worker_holding_it_stops(tmp_path, caplog):
    """Scattered data has no recipe: once every worker holding it stopped, Dask cancelled the loop's tasks and the job
    failed ("already forgotten"). The executor sends the data again and resubmits only the lost tasks."""
    import logging

    with caplog.at_level(logging.WARNING, logger="responders.executor"), make_executor("dask", workers=2) as dask:
        got = dask.map(_kill_every_worker_once, [(i, str(tmp_path)) for i in range(6)], desc="test loop", shared={"offset": 10})
    assert got == [i + 10 for i in range(6)]
    assert (tmp_path / "killed").exists()
    assert any("lost with the loop's shared data" in r.getMessage() and "attempt 2 of 3" in r.getMessage() for r in caplog.records)


def test_final_fits_in_the_pool_equal_the_serial_champion_fit(spec, final_99):
    from types import SimpleNamespace

    from training.train import final_fits

    config = fast_config()
    results = {}
    for outcome, champion in (("pain", "risk_model"), ("memory", "interaction_logistic")):
        data, _ = outcome_data(final_99, spec, outcome, config)
        results[outcome] = SimpleNamespace(data=data, champion=champion)
    fits = final_fits(results, spec, config, LocalExecutor(workers=2))
    for outcome, result in results.items():
        data = result.data
        F = build_feature_pipeline(spec).fit_transform(data.X).reset_index(drop=True)
        pd.testing.assert_frame_equal(fits[outcome].F, F, check_exact=True)
        candidate = make_candidate(result.champion, config.candidates, 0.5, config.seed, final=True).fit(F, data.t, data.y)
        assert np.array_equal(fits[outcome].candidate.predict_benefit(F), candidate.predict_benefit(F))
        serial = BootstrapEnsemble(candidate, config.intervals.bootstrap_models, 0.95, config.seed).fit(F, data.t, data.y)
        pooled = BootstrapEnsemble(candidate, config.intervals.bootstrap_models, 0.95, config.seed).fit(F, data.t, data.y, models=fits[outcome].bootstrap)
        point = candidate.predict_benefit(F)
        assert all(np.array_equal(a, b) for a, b in zip(serial.interval(F, point), pooled.interval(F, point), strict=True))


def test_keeping_the_chosen_penalty_refits_once_with_it(spec, final_99):
    config = fast_config()
    data, _ = outcome_data(final_99, spec, "pain", config)
    F = build_feature_pipeline(spec).fit_transform(data.X)
    candidate = make_candidate("interaction_logistic", config.candidates, 0.5, 1).fit(F, data.t, data.y)
    keep = BootstrapEnsemble(candidate, 5, 0.95, 1, penalty="keep")
    assert keep.template().Cs == (candidate.C_,)
    assert BootstrapEnsemble(candidate, 5, 0.95, 1).template() is candidate  # reselect: the served fit's own procedure
    refit = BootstrapEnsemble.refit(keep.template(), F, data.t, data.y, np.arange(len(data.y)), 1)
    assert refit.C_ == candidate.C_ and np.allclose(refit.predict_benefit(F), candidate.predict_benefit(F))


def test_large_trial_path_gives_the_small_trial_numbers(spec, final_99, monkeypatch):
    """Tasks per (fold, candidate), forced on a small trial: the same CV."""
    import training.evaluation as evaluation

    config = fast_config(cv={"repeats": 2})
    data, _ = outcome_data(final_99, spec, "memory", config)
    executor = LocalExecutor(workers=2)
    small = evaluation.cross_validate(data, spec, config, executor)
    monkeypatch.setattr(evaluation, "LARGE_N", 0)
    large = evaluation.cross_validate(data, spec, config, executor)
    assert large.final_choice == small.final_choice and large.selections == small.selections
    for name in small.oof:
        assert np.array_equal(large.oof[name], small.oof[name], equal_nan=True)
    pd.testing.assert_frame_equal(large.summary, small.summary, check_exact=True)


def test_bootstrap_interval_groups_rescale_each_group_around_its_own_median():
    from core.runtime.intervals import bootstrap_interval

    rng = np.random.default_rng(0)
    draws, point = rng.normal(size=(50, 40)), rng.normal(size=50) * 0.1
    plain = bootstrap_interval(draws, point, 0.9)
    one_group = bootstrap_interval(draws, point, 0.9, np.zeros(40, int), np.ones(40))
    assert all(np.allclose(a, b, atol=1e-12) for a, b in zip(plain, one_group, strict=True))
    # Two groups with different centres and spreads: each is centred on its own median and shrunk by its factor.
    groups = np.repeat([0, 1], 20)
    shifted = draws + np.where(groups == 1, 5.0, 0.0) * 0.01
    lo, hi = bootstrap_interval(shifted, point, 0.9, groups, np.where(groups == 0, 0.5, 0.25))
    deviations = np.column_stack([
        (shifted[:, :20] - np.median(shifted[:, :20], axis=1, keepdims=True)) * 0.5,
        (shifted[:, 20:] - np.median(shifted[:, 20:], axis=1, keepdims=True)) * 0.25,
    ])
    assert np.allclose(lo, np.clip(point + np.quantile(deviations, 0.05, axis=1), -1, 1))
    assert np.allclose(hi, np.clip(point + np.quantile(deviations, 0.95, axis=1), -1, 1))
    assert np.all(lo <= point) and np.all(point <= hi)


@pytest.fixture(scope="module")
def trial_4000(spec):
    config = fast_config()
    data, _ = outcome_data(simulate("strong", 4_000, 5), spec, "memory", config)
    F = build_feature_pipeline(spec).fit_transform(data.X).reset_index(drop=True)
    candidate = make_candidate("interaction_logistic", config.candidates, data.treated_fraction, 1, final=True).fit(F, data.t, data.y)
    return data, F, candidate


def test_m_out_of_n_bootstrap_refits_two_smaller_sizes_and_carries_their_spread_to_the_trial(trial_4000):
    data, F, candidate = trial_4000
    ensemble = BootstrapEnsemble(candidate, 8, 0.95, 3, penalty="keep", fraction=0.2)
    resamples = ensemble.resamples(data.t)
    assert len(resamples) == 16 and [k for _, _, k in resamples] == [0] * 8 + [1] * 8
    arms = [int((data.t == a).sum()) for a in (0, 1)]
    for rows, _, k in resamples:
        share = (0.2, 0.05)[k]
        assert [int((data.t[rows] == a).sum()) for a in (0, 1)] == [round(share * m) for m in arms]
    # A kept penalty is the same per patient: C grows as the resample shrinks.
    assert [tpl.Cs for tpl in ensemble.templates()] == [(candidate.C_ / 0.2,), (candidate.C_ / 0.05,)]
    ensemble.fit(F, data.t, data.y)
    assert list(ensemble.groups_) == [k for _, _, k in resamples]
    assert 0.0 <= ensemble.rate_ <= 0.5
    assert np.allclose(ensemble.factors_, np.where(ensemble.groups_ == 0, 0.2, 0.05) ** ensemble.rate_)
    # The refits made in the pool (resamples + templates, in any order of chunks) give the same ensemble.
    templates = ensemble.templates()
    models = LocalExecutor(workers=2).map(_refit_sized, resamples, shared=(templates, F, data.t, data.y))
    pooled = BootstrapEnsemble(candidate, 8, 0.95, 3, penalty="keep", fraction=0.2).fit(F, data.t, data.y, models=models)
    point = candidate.predict_benefit(F)
    assert pooled.rate_ == ensemble.rate_
    assert all(np.array_equal(a, b) for a, b in zip(ensemble.interval(F, point), pooled.interval(F, point), strict=True))


def _refit_sized(resample, shared):
    templates, F, t, y = shared
    rows, seed, k = resample
    return BootstrapEnsemble.refit(templates[k], F, t, y, rows, seed)


def test_m_out_of_n_interval_is_about_as_wide_as_the_full_bootstrap(trial_4000):
    """A penalised logistic with a kept penalty is a root-n estimator: the rescaled spread must land near the full bootstrap's."""
    data, F, candidate = trial_4000
    point = candidate.predict_benefit(F)
    widths = {}
    for fraction in (1.0, 0.2):
        ensemble = BootstrapEnsemble(candidate, 20, 0.95, 3, penalty="keep", fraction=fraction).fit(F, data.t, data.y)
        lo, hi = ensemble.interval(F, point)
        widths[fraction] = float(np.mean(hi - lo))
    assert 0.35 <= ensemble.rate_ <= 0.5  # near root-n
    assert 0.7 <= widths[0.2] / widths[1.0] <= 1.4, widths


@pytest.mark.parametrize("name", ["interaction_logistic", "t_learner"])
def test_the_scoring_plan_serves_the_m_out_of_n_interval_the_ensemble_gives(trial_4000, name):
    """What ships: the compiled plan (linear and tree forms) applies each refit's group and factor as the ensemble does."""
    from core.runtime.arms import compile_arms

    data, F, _ = trial_4000
    candidate = make_candidate(name, fast_config().candidates, data.treated_fraction, 1, final=True).fit(F, data.t, data.y)
    ensemble = BootstrapEnsemble(candidate, 6, 0.95, 3, penalty="keep", fraction=0.2).fit(F, data.t, data.y)
    assert ensemble.rate_ is not None and not np.allclose(ensemble.factors_, 1)
    rows = F.iloc[:300][list(candidate.features_)]
    p1, p0, lower, upper = compile_arms(candidate, ensemble, 0.95).predict(rows.to_numpy(dtype=float))
    expected = ensemble.interval(rows, p1 - p0)
    np.testing.assert_allclose(lower, expected[0], atol=1e-9)
    np.testing.assert_allclose(upper, expected[1], atol=1e-9)
    unscaled = BootstrapEnsemble(candidate, 6, 0.95, 3, penalty="keep", fraction=0.2).fit(F, data.t, data.y)
    unscaled.factors_ = np.ones(len(unscaled.models_))  # the same refits without the rate: a different (wider) interval
    assert not np.allclose(upper - lower, np.subtract(*unscaled.interval(rows, p1 - p0)[::-1]))
