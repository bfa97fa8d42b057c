"""Issue 21: per-patient answers built on what a trial can identify.

The PATH risk-based analysis, the heterogeneity test of the null it names
(with the served model as its statistic), which answer serves, and the checks
a served model must pass.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import fast_config
from scipy.stats import norm

from core.labelling import AVERAGE, CONDITIONAL, RISK_BASED
from training.answer import choose_answer, served_model_problems
from training.evaluation import CVResult
from training.executor import LocalExecutor
from training.heterogeneity import imputed_randomisation_test, spread_beyond_prognosis
from training.metrics import calibration, calibration_slope_interval
from training.path import path_analysis


def _trial(n: int, seed: int, prognosis: float, modifier: float, constant: float = 0.4):
    """Covariates, arm and outcome from ``Phi(prognosis * x0 + t * (constant + modifier * (x1 > 0)))``."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 6)), columns=[f"x{i}" for i in range(6)])
    t = rng.permutation(np.r_[np.ones(n // 2), np.zeros(n - n // 2)]).astype(int)
    eta = prognosis * X["x0"].to_numpy() - 0.3 + t * (constant + modifier * (X["x1"].to_numpy() > 0))
    y = (rng.uniform(size=n) < norm.cdf(eta)).astype(int)
    return X, t, y


# PATH -------------------------------------------------------------------------------------------------
def test_path_finds_a_discriminating_prognosis_and_no_risk_interaction_when_the_odds_ratio_is_constant():
    X, t, y = _trial(600, 1, prognosis=1.2, modifier=0.0)
    analysis = path_analysis(X, t, y, fast_config())
    assert analysis.discriminates and analysis.c_low > 0.6
    assert [q["quarter"] for q in analysis.quarters] == [1, 2, 3, 4]
    assert sum(q["n"] for q in analysis.quarters) == 600
    means = [q["predicted_risk_mean"] for q in analysis.quarters]
    assert means == sorted(means)  # quarters of predicted risk, lowest first
    rates = [q["rate_control"] for q in analysis.quarters]
    assert rates[0] < rates[-1]  # the cross-fitted score separates risk out of fold
    for q in analysis.quarters:
        assert q["rd_low"] <= q["risk_difference"] <= q["rd_high"] and q["or_low"] <= q["odds_ratio"] <= q["or_high"]
    assert analysis.interaction["p_value"] > 0.01 and analysis.interaction["constant_odds_ratio"] > 1
    assert "discriminates baseline risk" in analysis.sentence()


def test_path_says_when_the_prognosis_does_not_discriminate():
    X, t, y = _trial(200, 2, prognosis=0.0, modifier=0.0)
    analysis = path_analysis(X, t, y, fast_config())
    assert not analysis.discriminates and analysis.c_low <= 0.5
    assert "does not reliably discriminate" in analysis.sentence()


# The heterogeneity test -------------------------------------------------------------------------------
def test_the_statistic_ignores_effect_variation_that_runs_with_prognosis():
    rng = np.random.default_rng(3)
    mu = rng.normal(size=500)
    aligned = 0.3 + 0.2 * mu - 0.1 * mu**2  # what a misfit prognosis leaks into the effect forest
    assert spread_beyond_prognosis(aligned, mu) < 1e-9
    independent = aligned + 0.3 * (rng.uniform(size=500) > 0.5)
    assert spread_beyond_prognosis(independent, mu) > 0.1


def test_a_null_trial_rerandomises_arms_and_keeps_every_real_outcome_it_can():
    from training.heterogeneity import null_trial

    rng = np.random.default_rng(8)
    n = 4000
    t = rng.permutation(np.r_[np.ones(n // 2), np.zeros(n // 2)]).astype(int)
    eta0 = rng.normal(0, 1, n)
    y = (rng.uniform(size=n) < norm.cdf(eta0 + 0.6 * (t - 0.5))).astype(int)
    arms, outcome = null_trial(np.random.default_rng(1), t, y, eta0, 0.6)
    assert sorted(arms) == sorted(t) and 0.4 < np.mean(arms != t) < 0.6  # a re-randomisation
    kept = arms == t
    assert np.array_equal(outcome[kept], y[kept])  # patients who keep their arm keep their real outcome
    moved_up, moved_down = (arms > t), (arms < t)
    assert (outcome[moved_up] >= y[moved_up]).all() and (outcome[moved_down] <= y[moved_down]).all()  # a positive effect
    # The imputed trial follows the null model: the treated respond at about Phi(eta0 + 0.3), the controls at Phi(eta0 - 0.3).
    for arm, shift in ((1, 0.3), (0, -0.3)):
        rows = arms == arm
        assert abs(outcome[rows].mean() - norm.cdf(eta0[rows] + shift).mean()) < 0.03


@pytest.mark.slow
def test_the_calibrated_test_rejects_a_real_modifier_and_names_its_null():
    config = fast_config()
    executor = LocalExecutor(workers=2)
    X, t, y = _trial(300, 4, prognosis=0.6, modifier=1.6, constant=-0.2)
    strong = imputed_randomisation_test(X, t, y, config, 0.5, executor)
    again = imputed_randomisation_test(X, t, y, config, 0.5, executor)
    assert strong.method == "imputed_randomisation" and strong.kind == "bcf_spread"
    assert "constant treatment effect on the probit scale" in strong.details["null"]
    assert strong.p_value == pytest.approx(1 / 20) and strong.permutations_run == 19  # every replicate below it
    assert again.p_value == strong.p_value and np.array_equal(again.null, strong.null)  # same seed, same test


def test_the_tests_bcf_fits_take_their_own_warm_starts(monkeypatch):
    """Every fit of the imputed randomisation test (observed and null trials) has evidence.warm_starts grow-from-root iterations."""
    from core.candidates.bcf import BayesianCausalForest

    seen: list[int] = []
    fit = BayesianCausalForest.fit

    def spy(self, X, t, y):
        seen.append(self.num_gfr)
        return fit(self, X, t, y)

    monkeypatch.setattr(BayesianCausalForest, "fit", spy)
    config = fast_config(evidence={"replicates": 3, "sequential_h": 0, "warm_starts": 1})
    assert config.candidates.bcf.cv_gfr != 1
    X, t, y = _trial(120, 5, prognosis=0.6, modifier=1.0)
    result = imputed_randomisation_test(X, t, y, config, 0.5, LocalExecutor(workers=1))
    assert result.permutations_run == 3 and seen == [1] * 4
    assert "1 warm-start iterations" in result.details["bcf_fit"]
    seen.clear()
    again = imputed_randomisation_test(X, t, y, fast_config(evidence={"replicates": 3, "sequential_h": 0, "warm_starts": 0}), 0.5, LocalExecutor(workers=1))
    assert seen == [0] * 4 and again.statistic != result.statistic  # the setting reaches the fit


def test_the_held_out_slope_recovers_a_linear_benefit_and_is_a_standard_normal_without_one():
    from training.heterogeneity import BeyondPrognosisSlope

    rng = np.random.default_rng(4)
    n = 20_000
    prognosis, tau = rng.normal(size=n), rng.normal(size=n)
    beyond = tau - np.polyval(np.polyfit(prognosis, tau, 3), prognosis)
    psi = 0.1 + 0.3 * prognosis**2 + 0.5 * beyond + rng.normal(0, 2, n)  # any function of prognosis is absorbed
    slope, se = BeyondPrognosisSlope(tau, prognosis)(psi)
    assert abs(slope - 0.5) < 4 * se and 0.005 < se < 0.03
    z = []
    for seed in range(200):  # benefit a function of prognosis only: the slope's z is about N(0, 1)
        r = np.random.default_rng(seed)
        noise = 0.2 + 0.3 * np.sin(prognosis[:2000]) + r.normal(0, 2, 2000)
        slope, se = BeyondPrognosisSlope(tau[:2000], prognosis[:2000])(noise)
        z.append(slope / se)
    assert abs(np.mean(z)) < 0.25 and 0.8 < np.std(z) < 1.2
    assert BeyondPrognosisSlope(0.3 + 0.2 * prognosis, prognosis)(psi) == (0.0, 0.0)  # nothing beyond prognosis


def test_the_tests_subsample_is_chosen_by_outcome_alone_not_by_the_arms():
    """Chosen by arm x outcome, the patients left would have an arm x outcome table tied to the fit's (benchmarks section 4)."""
    from training.heterogeneity import test_rows

    rng = np.random.default_rng(11)
    y = rng.random(5000) < 0.35
    rows = test_rows(y, 1000, seed=3)
    assert len(rows) == 1000 and len(set(rows)) == 1000 and abs(y[rows].sum() - 0.2 * y.sum()) <= 1  # the outcome's share kept
    assert test_rows(y[:1000], 1000, seed=3) is None


def test_a_large_trial_is_tested_on_held_out_patients_and_its_power_grows_with_them():
    config = fast_config(evidence={"max_patients": 400})
    executor = LocalExecutor(workers=1)
    X, t, y = _trial(2400, 6, prognosis=0.6, modifier=1.6, constant=-0.2)
    result = imputed_randomisation_test(X, t, y, config, 0.5, executor)
    assert result.method == "held_out" and result.kind == "bcf_held_out" and result.permutations_run == len(result.null) == 19
    assert result.details["n_fit"] == 400 and result.details["n_test"] == 2000 and result.details["n_patients"] == 2400
    assert "constant treatment effect on the probit scale" in result.details["null"]
    assert result.p_value == pytest.approx(1 / 20) and result.statistic > 3 and result.details["p_normal"] < 1e-3
    # Up to twice max_patients the imputed randomisation test runs on the subsample.
    X2, t2, y2 = X.iloc[:800], t[:800], y[:800]
    assert imputed_randomisation_test(X2, t2, y2, config.model_copy(update={"evidence": config.evidence.model_copy(update={"replicates": 3})}), 0.5, executor).method == "imputed_randomisation"
    untested = config.model_copy(update={"evidence": config.evidence.model_copy(update={"replicates": 0})})
    assert not imputed_randomisation_test(X, t, y, untested, 0.5, executor).tested  # evidence.replicates: 0 skips the test
    # A constant probit effect with a strong prognosis: no evidence.
    Xn, tn, yn = _trial(2400, 7, prognosis=1.2, modifier=0.0)
    assert imputed_randomisation_test(Xn, tn, yn, config, 0.5, executor).p_value > 0.01


# Which answer serves ----------------------------------------------------------------------------------
def _cv(y, t, oof: dict[str, tuple[np.ndarray, np.ndarray]], eligible: list[str], final: str) -> CVResult:
    from training.evaluation import log_loss_per_patient

    arrays = {name: np.stack([p1, p0], axis=-1)[None] for name, (p1, p0) in oof.items()}
    summary = pd.DataFrame({"log_loss": {name: log_loss_per_patient(y, t, p1, p0).mean() for name, (p1, p0) in oof.items()}})
    return CVResult(len(y), 1, arrays, np.zeros((1, len(y))), pd.DataFrame(), summary, {}, final, eligible)


def _arms(n: int, seed: int):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 2, n)
    risk = rng.uniform(0.1, 0.7, n)
    y = (rng.uniform(size=n) < risk + 0.1 * t).astype(int)
    floor = (np.full(n, y[t == 1].mean()), np.full(n, y[t == 0].mean()))
    good = (np.clip(risk + 0.1, 0, 1), risk)
    backwards = (1 - good[0], 1 - good[1])  # ranks patients the wrong way round in both arms
    return y, t, floor, good, backwards


def test_a_model_that_ranks_worse_than_chance_or_runs_backwards_never_serves():
    y, t, floor, good, backwards = _arms(400, 5)
    cv = _cv(y, t, {"arm_only": floor, "bcf": good, "t_learner": backwards}, ["arm_only", "bcf", "t_learner"], "t_learner")
    problems = served_model_problems(cv, y, t, "t_learner")
    assert any("AUC" in p for p in problems) and any("negative" in p for p in problems)
    assert served_model_problems(cv, y, t, "bcf") == [] and served_model_problems(cv, y, t, "arm_only") == []
    # With evidence, the criterion's (backwards) choice is refused and the next eligible candidate serves.
    choice = choose_answer(cv, y, t, evidence=True, tested=True, discriminates=False, enabled=["arm_only", "bcf", "t_learner"])
    assert choice.answer == CONDITIONAL and choice.champion == "bcf" and "t_learner" in choice.refused


def test_a_slope_that_is_only_noise_around_zero_does_not_refuse_a_model():
    """In an arm whose outcome does not depend on the measured values, every model's calibration slope there is noise
    around 0 and often negative; only a slope below 0 beyond chance (its upper limit) refuses, as for the AUC."""
    rng = np.random.default_rng(11)
    n = 1000
    t = rng.integers(0, 2, n)
    risk = rng.uniform(0.1, 0.7, n)
    y = np.where(t == 1, rng.uniform(size=n) < risk, rng.uniform(size=n) < 0.3).astype(int)  # control: a flat 30%
    wobble = rng.uniform(0.25, 0.35, n)  # the model's control-arm predictions vary, the outcome there does not
    slopes = []
    for seed in range(40):
        y0 = np.where(t == 1, y, (np.random.default_rng(seed).uniform(size=n) < 0.3).astype(int))
        slope, low, high = calibration_slope_interval(y0[t == 0], wobble[t == 0])
        assert low < slope < high
        slopes.append((slope, high))
    assert sum(s < 0 for s, _ in slopes) >= 10, "a flat arm's slope is often negative"
    assert sum(h < 0 for _, h in slopes) <= 4, "and rarely below 0 beyond chance"
    floor = (np.full(n, y[t == 1].mean()), np.full(n, y[t == 0].mean()))
    model = (np.clip(risk, 0, 1), wobble)
    negative_but_noise = next(seed for seed in range(40) if -0.5 < slopes[seed][0] < 0 < slopes[seed][1])
    y0 = np.where(t == 1, y, (np.random.default_rng(negative_but_noise).uniform(size=n) < 0.3).astype(int))
    cv = _cv(y0, t, {"arm_only": floor, "bcf": model}, ["arm_only", "bcf"], "bcf")
    assert served_model_problems(cv, y0, t, "bcf") == []
    assert choose_answer(cv, y0, t, evidence=True, tested=True, discriminates=False, enabled=["arm_only", "bcf"]).champion == "bcf"
    # The interval is around the slope `calibration` reports (one fit, the same number).
    assert calibration_slope_interval(y0[t == 0], wobble[t == 0])[0] == calibration(y0[t == 0], wobble[t == 0])[1]


def test_the_answer_follows_the_evidence_then_the_prognosis_then_the_average():
    y, t, floor, good, backwards = _arms(400, 6)
    enabled = ["arm_only", "risk_model", "bcf"]
    cv = _cv(y, t, {"arm_only": floor, "risk_model": good, "bcf": good}, enabled, "bcf")
    assert choose_answer(cv, y, t, True, True, False, enabled).answer == CONDITIONAL
    risk = choose_answer(cv, y, t, False, True, True, enabled)
    assert (risk.answer, risk.champion) == (RISK_BASED, "risk_model") and "discriminates" in risk.reason
    average = choose_answer(cv, y, t, False, True, False, enabled)
    assert (average.answer, average.champion) == (AVERAGE, "arm_only") and "does not discriminate" in average.reason
    # Evidence, but only the floor beats the floor: not conditional; the prognosis decides what is served.
    floor_only = _cv(y, t, {"arm_only": floor, "risk_model": good, "bcf": backwards}, ["arm_only"], "arm_only")
    fallback = choose_answer(floor_only, y, t, True, True, True, enabled)
    assert fallback.answer == RISK_BASED and "established" in fallback.reason
    # A risk model that runs backwards is refused: the trial average serves and the reason says why.
    bad_risk = _cv(y, t, {"arm_only": floor, "risk_model": backwards, "bcf": good}, enabled, "bcf")
    refused = choose_answer(bad_risk, y, t, False, True, True, enabled)
    assert refused.answer == AVERAGE and "risk_model" in refused.refused and "failed the served-model checks" in refused.reason
    # Evidence, and the effect-modifying candidate is refused: PATH's constant relative effect never stands in for the
    # conditional answer (it cannot express effect modification); the risk-based answer serves, named as such.
    refused_bcf = _cv(y, t, {"arm_only": floor, "risk_model": good, "bcf": backwards}, enabled, "bcf")
    risk_instead = choose_answer(refused_bcf, y, t, True, True, True, enabled)
    assert (risk_instead.answer, risk_instead.champion) == (RISK_BASED, "risk_model") and "bcf" in risk_instead.refused
    assert "no candidate that models it" in risk_instead.reason
    # ... also when the criterion itself chose the risk model.
    chose_risk = _cv(y, t, {"arm_only": floor, "risk_model": good, "bcf": good}, enabled, "risk_model")
    assert (choose_answer(chose_risk, y, t, True, True, True, enabled).answer, choose_answer(chose_risk, y, t, True, True, True, enabled).champion) == (CONDITIONAL, "bcf")


# The served BCF: several chains, diagnostics, thinning --------------------------------------------------
def test_bcf_chains_are_diagnosed_then_thinned_for_serving_with_the_change_measured():
    import pickle

    from core.candidates import BayesianCausalForest
    from core.runtime.arms import PosteriorForestArms
    from training.diagnostics import bcf_diagnostics, describe, thin_and_measure

    X, t, y = _trial(200, 7, prognosis=0.8, modifier=1.0)
    model = BayesianCausalForest(num_gfr=4, num_mcmc=160, num_chains=4, num_burnin=20, mu_trees=20, tau_trees=10, random_state=3)
    model.fit(X, t, y)
    assert model.benefit_draws(X.head(3)).shape == (3, 160)  # 4 chains x 40 retained draws
    diagnostics = bcf_diagnostics(model, X)
    assert diagnostics["chains"] == 4 and diagnostics["draws"] == 160
    for quantity in ("average_benefit", "average_probit_effect", "benefit_spread"):
        assert 0.9 < diagnostics[quantity]["rhat"] < 2 and 1 <= diagnostics[quantity]["ess"] <= 160
    full = model.predict_arms(X)
    diagnostics["thinning"] = thinning = thin_and_measure(model, X, 40, 0.95)
    assert (thinning["retained_draws"], thinning["served_draws"]) == (160, 40)
    assert 0 < thinning["mean_limit_change"] <= thinning["max_limit_change"] < 1
    assert model.benefit_draws(X).shape == (200, 40)
    assert np.abs(model.predict_arms(X)[0] - full[0]).max() < 0.1  # a subset of the same posterior
    assert "Served from 40 of them" in describe(diagnostics)
    restored = pickle.loads(pickle.dumps(model))
    arms = PosteriorForestArms(restored, 0.95)  # the served plan: flat forests of the 40 served draws
    np.testing.assert_allclose(arms.point(X.to_numpy(float)[:5])[0], model.predict_arms(X.head(5))[0], atol=1e-12)
    np.testing.assert_allclose(restored.benefit_draws(X), model.benefit_draws(X), atol=1e-12)
    explanation = restored.explain(X.head(5))
    np.testing.assert_allclose(explanation.benefit.base + explanation.benefit.values.sum(1), restored.predict_benefit(X.head(5)), atol=1e-9)


def test_a_bcf_fit_sent_back_from_a_worker_is_thinned_without_rebuilding_stochtree(monkeypatch):
    """The final fit comes back from the worker pool pickled (stochtree's JSON and the flat forests of every draw):
    thinning takes the served draws from the flat forests, the same arrays as flattening the live model's."""
    import pickle

    from core.candidates import BayesianCausalForest
    from core.runtime.forests import flatten_stochtree

    X, t, y = _trial(200, 7, prognosis=0.8, modifier=1.0)
    model = BayesianCausalForest(num_gfr=4, num_mcmc=160, num_chains=4, num_burnin=20, mu_trees=20, tau_trees=10, random_state=3)
    model.fit(X, t, y)
    sent = pickle.loads(pickle.dumps(model))  # what a worker returns
    live = model.thin_for_serving(40, X)  # thinned with the live stochtree model
    reference = live.flat_forests()
    index = live.serve_index_
    expected_mu = flatten_stochtree(live._model().forest_container_mu, index)
    monkeypatch.setattr(BayesianCausalForest, "_model", lambda self: pytest.fail("stochtree's model was rebuilt from JSON"))
    sent.thin_for_serving(40, X)
    assert np.array_equal(sent.serve_index_, index)
    for part in ("mu", "tau"):
        for name in ("feature", "threshold", "left", "right", "value", "roots", "slot_starts"):
            assert np.array_equal(getattr(sent.flat_[part], name), getattr(reference[part], name)), (part, name)
        assert sent.flat_[part].n_draws == 40
    assert np.array_equal(sent.flat_["mu"].left, expected_mu.left) and sent.flat_["mu_offset"] == reference["mu_offset"]
    assert np.array_equal(sent.flat_["tau_offset"], reference["tau_offset"])
    assert np.array_equal(sent.benefit_draws(X), live.benefit_draws(X))
    served = pickle.loads(pickle.dumps(sent))  # explanation trees made from the flat forests of the served draws
    explanation = served.explain(X.head(5))
    np.testing.assert_allclose(explanation.benefit.base + explanation.benefit.values.sum(1), served.predict_benefit(X.head(5)), atol=1e-9)
    np.testing.assert_allclose(explanation.benefit.values, live.explain(X.head(5)).benefit.values, atol=1e-12)


def test_a_model_stored_in_an_older_format_is_refused_with_one_line():
    from types import SimpleNamespace

    from core.runtime.artefact import FORMAT_VERSION, ArtefactFormatError, check_format

    current = SimpleNamespace(format_version=FORMAT_VERSION)
    assert check_format(current) is current
    with pytest.raises(ArtefactFormatError, match=f"format 1, this code reads format {FORMAT_VERSION}: retrain with `make train`"):
        check_format(SimpleNamespace())  # pickled before the format was recorded


def test_a_model_pickled_under_the_old_module_paths_is_refused_with_the_same_line(tmp_path, monkeypatch):
    """Format 2 pickled serving.runtime.artefact.ResponderModel; that module is gone, and loading says retrain."""
    import pickle
    import sys
    import types

    from core.runtime.artefact import FORMAT_VERSION, ArtefactFormatError, load_artefact

    old = types.ModuleType("serving.runtime.artefact")

    class ResponderModel:  # what a format-2 pickle names
        pass

    ResponderModel.__module__, ResponderModel.__qualname__ = "serving.runtime.artefact", "ResponderModel"
    old.ResponderModel = ResponderModel
    monkeypatch.setitem(sys.modules, "serving.runtime.artefact", old)
    stored = ResponderModel()
    stored.format_version = 2
    (tmp_path / "responder.joblib").write_bytes(pickle.dumps(stored))
    monkeypatch.delitem(sys.modules, "serving.runtime.artefact")
    monkeypatch.delitem(sys.modules, "serving.runtime", raising=False)

    with pytest.raises(ArtefactFormatError, match=f"this code reads format {FORMAT_VERSION}: retrain with `make train`") as err:
        load_artefact(tmp_path / "responder.joblib")
    assert "serving.runtime" in str(err.value) and "\n" not in str(err.value)


def test_rhat_and_ess_tell_agreeing_chains_from_disagreeing_and_autocorrelated_ones():
    from training.diagnostics import effective_sample_size, split_rhat

    rng = np.random.default_rng(11)
    iid = rng.normal(size=(4, 500))
    assert abs(split_rhat(iid) - 1) < 0.01 and effective_sample_size(iid) > 1500
    shifted = iid + np.arange(4)[:, None]  # chains stuck in different places
    assert split_rhat(shifted) > 1.3
    ar = np.zeros((4, 2000))
    for i in range(1, 2000):
        ar[:, i] = 0.9 * ar[:, i - 1] + rng.normal(size=4)
    assert effective_sample_size(ar) < 0.15 * ar.size  # theory: (1 - 0.9) / (1 + 0.9) = 5% of the draws


def _modified(n: int, seed: int, modifier: float):
    """A trial whose effect varies along a named engineered feature ``m`` (among five noise features) and its prognosis on x0."""
    X, t, _ = _trial(n, seed, prognosis=0.0, modifier=0.0)
    X = X.rename(columns={"x5": "m"})
    rng = np.random.default_rng(seed + 100)
    eta = 0.6 * X["x0"].to_numpy() - 0.3 + t * (0.2 + modifier * X["m"].to_numpy())
    return X, t, (rng.uniform(size=n) < norm.cdf(eta)).astype(int)


@pytest.mark.slow
def test_the_prespecified_modifiers_join_bcfs_spread_and_the_combination_finds_a_named_modifier_and_not_an_absent_one():
    config = fast_config(evidence={"replicates": 39})
    executor = LocalExecutor(workers=2)
    X, t, y = _modified(300, 8, modifier=0.7)
    found = imputed_randomisation_test(X, t, y, config, 0.5, executor, modifiers=["m"])
    assert found.kind == "bcf_spread_modifiers" and found.method == "imputed_randomisation"
    parts = found.details["components"]
    assert set(parts) == {"bcf_spread", "prespecified_modifiers"} and parts["prespecified_modifiers"]["modifiers"] == ["m"]
    assert parts["prespecified_modifiers"]["p_value"] == pytest.approx(1 / 40)  # no null trial reaches the named modifier
    assert found.p_value <= 2 / 40 and found.null_components.shape == (found.permutations_run, 2)
    # The statistic is Fisher's combination of the two statistics' own p-values.
    assert found.statistic == pytest.approx(-sum(np.log(c["p_value"]) for c in parts.values()))
    # No modification: the futility rule stops once the test cannot reject, with both statistics' p-values reported.
    Xn, tn, yn = _modified(300, 9, modifier=0.0)
    quiet = imputed_randomisation_test(Xn, tn, yn, config, 0.5, executor, modifiers=["m"])
    assert quiet.p_value > config.evidence.alpha
    assert quiet.stopped_early == (quiet.permutations_run < 39)
    # Without names the test is BCF's spread alone, as before; a name the features lack is a clear error.
    alone = imputed_randomisation_test(X, t, y, config, 0.5, executor)
    assert alone.kind == "bcf_spread" and alone.null_components is None and "components" not in alone.details
    with pytest.raises(ValueError, match="prespecified_modifiers: 'crp' is not an engineered feature"):
        imputed_randomisation_test(X, t, y, config, 0.5, executor, modifiers=["crp"])
    # A direction makes the modifier's statistic one-sided: the expected direction finds it, the other counts nothing.
    rises = imputed_randomisation_test(X, t, y, config, 0.5, executor, modifiers=["m"], direction="increasing")
    named = rises.details["components"]["prespecified_modifiers"]
    assert named["direction"] == "increasing" and "one-sided: large when the effect rises with it" in named["label"]
    assert named["observed"] > 2 and named["p_value"] == pytest.approx(1 / 40) and rises.p_value <= 2 / 40
    falls = imputed_randomisation_test(X, t, y, config, 0.5, executor, modifiers=["m"], direction="decreasing")
    assert falls.details["components"]["prespecified_modifiers"]["observed"] == pytest.approx(-named["observed"])
    assert falls.details["components"]["prespecified_modifiers"]["p_value"] > 0.5


@pytest.mark.slow
def test_the_bonferroni_combination_doubles_the_smaller_of_bcfs_and_the_bootstrapped_modifiers_p_values():
    """``evidence.combination: bonferroni``: BCF's spread on the null trials, the named modifier by a parametric bootstrap."""
    config = fast_config(evidence={"replicates": 19, "combination": "bonferroni"})
    executor = LocalExecutor(workers=1)
    X, t, y = _modified(300, 8, modifier=0.7)
    found = imputed_randomisation_test(X, t, y, config, 0.5, executor, modifiers=["m"], direction="increasing")
    assert found.kind == "bcf_spread_or_modifiers" and found.method == "imputed_randomisation" and found.null_components is None
    parts = found.details["components"]
    named, spread = parts["prespecified_modifiers"], parts["bcf_spread"]
    assert named["p_value"] == pytest.approx(1 / 20) and named["null_trials"] == 19  # no drawn trial reaches the named modifier
    assert "parametric bootstrap" in named["calibration"] and "one-sided" in named["label"]
    assert found.p_value == pytest.approx(min(1.0, 2 * min(named["p_value"], spread["p_value"])))
    # The statistic shown with its null trials is BCF's spread, whose own p-value is its Besag-Clifford one.
    assert found.statistic == spread["observed"] and len(found.null) == found.permutations_run == spread["null_trials"]
    assert "Bonferroni" in found.details["combination"] and "doubled" in found.label
    # Without modification the test does not reject.
    Xn, tn, yn = _modified(300, 9, modifier=0.0)
    quiet = imputed_randomisation_test(Xn, tn, yn, config, 0.5, executor, modifiers=["m"], direction="increasing")
    assert quiet.p_value > config.evidence.alpha
    assert quiet.p_value == pytest.approx(min(1.0, 2 * min(c["p_value"] for c in quiet.details["components"].values())))


@pytest.mark.slow
def test_the_benchmarks_read_the_jobs_verdict_under_every_combination_from_their_fisher_run():
    """Section 1 always runs Fisher's combination; under ``combination: bonferroni`` or ``fisher_or_bootstrap`` a
    work-up's answer must follow the job's own verdict, which ``job_verdict`` rebuilds from that run (read at the job's
    budget as run_replicate reads it) and the parametric bootstrap's row."""
    from types import SimpleNamespace

    from benchmarks.modifier_tests import parametric_bootstrap_test
    from benchmarks.recovery import job_budget_result, job_verdict
    from training.inference import sequential_p_value
    from training.modifiers import modifier_matrix

    base = fast_config(evidence={"replicates": 39})  # 39: the smallest p doubled is alpha
    evidence = base.evidence
    executor = LocalExecutor(workers=1)
    spec = SimpleNamespace(prespecified_modifiers=["m"], prespecified_direction="increasing")
    for modifier, seed in ((0.7, 8), (0.0, 9)):
        X, t, y = _modified(300, seed, modifier=modifier)
        longer = imputed_randomisation_test(X, t, y, base, 0.5, executor, modifiers=["m"], min_hits=evidence.sequential_h, direction="increasing")
        assert longer.kind == "bcf_spread_modifiers"
        fisher = job_budget_result(longer, evidence.replicates, evidence.sequential_h, evidence.alpha)
        p_spread, used = sequential_p_value(longer.null_components[:, 0], longer.observed_components[0], evidence.sequential_h, evidence.replicates)
        results = {
            "imputed_randomisation_bcf": {"p": p_spread, "stat": float(longer.observed_components[0]), "permutations_run": used},
            "composites_parametric": parametric_bootstrap_test(
                X, modifier_matrix(X, ["m"]), t, y, base, "increasing", evidence.replicates, evidence.sequential_h, base.seed + 77
            ),
        }
        # The job's default (Fisher) is read as the run itself.
        assert job_verdict(base, spec, fisher, longer, results) is fisher
        for combination, kind in (("bonferroni", "bcf_spread_or_modifiers"), ("fisher_or_bootstrap", "bcf_spread_modifiers_or_bootstrap")):
            config = base.model_copy(update={"evidence": evidence.model_copy(update={"combination": combination})})
            job = imputed_randomisation_test(X, t, y, config, 0.5, executor, modifiers=["m"], direction="increasing")
            read = job_verdict(config, spec, fisher, longer, results)
            assert read.kind == job.kind == kind, combination
            assert read.p_value == pytest.approx(job.p_value) and read.permutations_run == job.permutations_run
            assert read.details == job.details  # every statement the job makes about its test, the same numbers
            np.testing.assert_allclose(read.null, job.null)
            parts = job.details["components"]
            if combination == "fisher_or_bootstrap":
                # Fisher's test whole (its own p-value, as the job's default computes it) or the bootstrap, doubled.
                assert parts["fisher_combination"]["p_value"] == pytest.approx(fisher.p_value)
                assert job.statistic == pytest.approx(fisher.statistic) and job.permutations_run == fisher.permutations_run
                assert parts["prespecified_modifiers_bootstrap"]["p_value"] == pytest.approx(results["composites_parametric"]["p"])
                assert "parametric bootstrap" in parts["prespecified_modifiers_bootstrap"]["calibration"] and "Bonferroni" in job.details["combination"]
                assert job.p_value == pytest.approx(min(1.0, 2 * min(fisher.p_value, results["composites_parametric"]["p"])))
                assert (job.p_value <= evidence.alpha) == (modifier > 0), (modifier, job.p_value)


def test_a_modifier_joined_from_features_is_the_mean_of_them_standardised_and_a_direction_reads_one_side():
    from training.modifiers import modifier_lr_test, modifier_matrix

    rng = np.random.default_rng(3)
    n = 600
    F = pd.DataFrame({"a": rng.normal(2.0, 3.0, n), "b": rng.normal(-1.0, 0.5, n), "c": rng.normal(size=n)})
    joined = modifier_matrix(F, ["a + b", "c"])
    za, zb = ((F[k] - F[k].mean()) / F[k].std(ddof=0) for k in "ab")
    assert joined.shape == (n, 2) and np.allclose(joined[:, 0], (za + zb) / 2) and np.allclose(joined[:, 1], F["c"])
    with pytest.raises(ValueError, match="prespecified_modifiers: 'd' is not an engineered feature"):
        modifier_matrix(F, ["a + d"])
    risk, t = rng.normal(size=n), rng.integers(0, 2, n)
    m = joined[:, 0]
    y = (rng.random(n) < norm.cdf(0.5 * risk + 0.3 * t + 0.5 * t * m)).astype(int)
    two_sided, rises, falls = (modifier_lr_test(risk, m, t, y, d) for d in ("any", "increasing", "decreasing"))
    assert rises["stat"] == pytest.approx(np.sqrt(two_sided["stat"])) and falls["stat"] == pytest.approx(-rises["stat"])
    assert rises["p"] == pytest.approx(two_sided["p"] / 2) and falls["p"] == pytest.approx(1 - rises["p"])
    with pytest.raises(ValueError, match="needs exactly one modifier"):
        modifier_lr_test(risk, joined, t, y, "increasing")


def test_the_spec_refuses_a_direction_for_more_than_one_modifier_and_an_empty_joined_name(spec):
    from pydantic import ValidationError

    data = spec.model_dump()
    assert spec.prespecified_modifiers == ["inflammation_index + autoantibody_index"] and spec.prespecified_direction == "increasing"
    with pytest.raises(ValidationError, match="prespecified_direction: increasing needs exactly one entry .*join the features with \\+"):
        type(spec).model_validate({**data, "prespecified_modifiers": ["inflammation_index", "autoantibody_index"]})
    with pytest.raises(ValidationError, match="'inflammation_index \\+ ' has an empty name"):
        type(spec).model_validate({**data, "prespecified_modifiers": ["inflammation_index + "]})
    two = type(spec).model_validate({**data, "prespecified_modifiers": ["inflammation_index", "autoantibody_index"], "prespecified_direction": "any"})
    assert two.prespecified_direction == "any"
