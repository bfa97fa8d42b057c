"""Issue 12: the arm-only floor, Bayesian shrinkage with posterior intervals, labels that follow the evidence."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from helpers import fast_config

from features.pipeline import build_feature_pipeline
from serving.runtime.explain import NO_DEPENDENCE
from training.candidates import ArmOnly, BayesianCausalForest
from training.config import LabelRule
from training.effects import adjust, risk_difference, score_interval, score_test
from training.evaluation import (
    FoldPredictions,
    eligible,
    floor_comparison,
    log_loss_per_patient,
    select,
    sequential_p_value,
)
from training.labelling import LIKELY, UNCERTAIN, UNLIKELY, build_policy
from training.train import champion_reason, outcome_data


# Average effect -----------------------------------------------------------------------------------
def test_score_interval_matches_the_published_miettinen_nurminen_example():
    # Newcombe (Stat Med 1998;17:873-890), Table II, method 10: 56/70 vs 48/80.
    low, high = score_interval(56, 70, 48, 80)
    assert low == pytest.approx(0.0528, abs=5e-4) and high == pytest.approx(0.3382, abs=5e-4)


@pytest.mark.parametrize("counts", [(22, 49, 14, 50), (30, 49, 12, 50), (0, 30, 0, 31), (30, 30, 0, 31), (5, 40, 9, 41)])
def test_interval_excludes_zero_exactly_when_the_test_rejects(counts):
    p = score_test(*counts)
    for level in (0.9, 0.95, 0.975):
        low, high = score_interval(*counts, level=level)
        assert low <= counts[0] / counts[1] - counts[2] / counts[3] <= high
        assert (low > 0 or high < 0) == (p < 1 - level - 1e-12), (counts, level, p, low, high)


def _effect(name, x1, n1, x2, n2):
    y = np.r_[np.ones(x1), np.zeros(n1 - x1), np.ones(x2), np.zeros(n2 - x2)]
    t = np.r_[np.ones(n1), np.zeros(n2)].astype(bool)
    return risk_difference(name, ">= 30%", "non_responder", y, t)


def test_holm_adjusted_intervals_agree_with_holm_rejections():
    effects = adjust({"a": _effect("a", 30, 49, 12, 50), "b": _effect("b", 22, 49, 14, 50), "c": _effect("c", 26, 49, 13, 50)})
    ps = {k: e.p_value for k, e in effects.items()}
    ordered = sorted(ps, key=ps.get)
    rejected = set()
    for step, key in enumerate(ordered):
        if ps[key] < 0.05 / (3 - step):
            rejected.add(key)
        else:
            break
    for key, effect in effects.items():
        assert effect.established == (key in rejected), (key, effect.p_adjusted, effect.ci_low_adjusted)
        assert (effect.p_adjusted < 0.05) == effect.established
        assert effect.ci_low_adjusted <= effect.ci_low  # adjusted intervals are never narrower


# Labels ---------------------------------------------------------------------------------------------
def _policy(evidence: bool, effect, benefit, lower, upper):
    return build_policy(
        LabelRule(),
        subgroup_evidence=evidence,
        evidence_sentence="(evidence sentence)",
        average_effect=effect,
        benefit=benefit,
        lower=lower,
        upper=upper,
        level=0.95,
        treated="LDN",
        control="placebo",
    )


def test_without_subgroup_evidence_every_patient_shares_one_label_that_follows_the_average_effect():
    rng = np.random.default_rng(0)
    benefit = rng.uniform(0.0, 0.4, 50)
    lower, upper = benefit - 0.05, benefit + 0.05  # intervals that would look convincing one by one
    not_established = adjust({"pain": _effect("pain", 21, 49, 13, 50)})["pain"]
    labels, reasons = _policy(False, not_established, benefit, lower, upper).label(benefit)
    assert set(labels) == {UNCERTAIN}
    assert len(set(reasons)) == 1 and "trial population as a whole" in reasons[0] and "not established" in reasons[0]
    established = adjust({"memory": _effect("memory", 30, 49, 7, 50)})["memory"]
    labels, reasons = _policy(False, established, benefit, lower, upper).label(benefit)
    assert set(labels) == {LIKELY} and "established" in reasons[0]
    ruled_out = adjust({"x": _effect("x", 100, 1000, 110, 1000)})["x"]
    labels, _ = _policy(False, ruled_out, benefit, lower, upper).label(benefit)
    assert set(labels) == {UNLIKELY}
    for reason in reasons:
        assert "%" not in reason.replace("% on", "").replace("% interval", "")  # thresholds are in pp


def test_with_subgroup_evidence_labels_never_contradict_the_order_of_estimates():
    rng = np.random.default_rng(1)
    benefit = rng.normal(0.1, 0.12, 300)
    width = rng.uniform(0.05, 0.3, 300)  # intervals of very different widths
    policy = _policy(True, None, benefit, benefit - width, benefit + width)
    fresh = rng.normal(0.1, 0.15, 500)
    labels, reasons = policy.label(fresh)
    rank = {UNLIKELY: 0, UNCERTAIN: 1, LIKELY: 2}
    order = np.argsort(fresh)
    ranks = np.array([rank[label] for label in labels[order]])
    assert (np.diff(ranks) >= 0).all()
    assert policy.likely_at is not None and all("pp" in r for r in reasons)
    # Every training patient at or above the likely threshold had an interval above 0 pp.
    above = benefit >= policy.likely_at
    assert ((benefit - width)[above] > 0).all()


# The floor and the selection ------------------------------------------------------------------------
def test_a_candidate_worse_than_the_floor_is_not_eligible_and_the_floor_then_serves():
    rng = np.random.default_rng(2)
    n = 400
    t = rng.integers(0, 2, n)
    y = (rng.uniform(size=n) < 0.3 + 0.15 * t).astype(int)
    floor = (np.full(n, y[t == 1].mean()), np.full(n, y[t == 0].mean()))
    noisy = (np.clip(floor[0] + rng.normal(0, 0.25, n), 0.01, 0.99), np.clip(floor[1] + rng.normal(0, 0.25, n), 0.01, 0.99))
    losses = {"arm_only": log_loss_per_patient(y, t, *floor), "t_learner": log_loss_per_patient(y, t, *noisy)}
    comparison = floor_comparison(losses)
    assert comparison["t_learner"][0] > 3 * comparison["t_learner"][1]
    assert eligible(comparison, 1.0) == ["arm_only"]
    preds = FoldPredictions({"arm_only": floor, "t_learner": noisy}, np.full(n, y[t == 1].mean()), np.full(n, y[t == 0].mean()))
    assert select(preds, y, t, 0.5, fast_config()).choice == "arm_only"


def test_the_default_criterion_serves_bcf_when_it_is_eligible_and_otherwise_the_floor():
    rng = np.random.default_rng(5)
    n = 400
    t = rng.integers(0, 2, n)
    x = rng.normal(size=n)
    p_true = (0.3 + 0.3 * t * (x > 0), np.full(n, 0.3))  # the benefit lives in x > 0
    y = (rng.uniform(size=n) < np.where(t == 1, *p_true)).astype(int)
    floor = (np.full(n, y[t == 1].mean()), np.full(n, y[t == 0].mean()))
    sharp = (0.3 + 0.3 * (x > 0), np.full(n, 0.3))  # the truth: the lowest tau-risk and log-loss
    shrunk = (0.5 * floor[0] + 0.5 * sharp[0], 0.5 * floor[1] + 0.5 * sharp[1])  # between the floor and the truth
    noisy = (np.clip(floor[0] + rng.normal(0, 0.3, n), 0.01, 0.99), np.clip(floor[1] + rng.normal(0, 0.3, n), 0.01, 0.99))
    mu = (sharp[0], sharp[1])
    default = fast_config()
    assert default.selection.criterion == "bcf_when_eligible"
    eligible_bcf = select(FoldPredictions({"arm_only": floor, "bcf": shrunk, "t_learner": sharp}, *mu), y, t, 0.5, default)
    assert set(eligible_bcf.eligible) == {"arm_only", "bcf", "t_learner"} and eligible_bcf.choice == "bcf"
    # tau-risk would have taken the sharper candidate: the default names its model in advance.
    tau_risk = fast_config(selection={"criterion": "dr_tau_risk"})
    assert select(FoldPredictions({"arm_only": floor, "bcf": shrunk, "t_learner": sharp}, *mu), y, t, 0.5, tau_risk).choice == "t_learner"
    # BCF worse than the floor: the floor serves, even though another candidate is eligible.
    worse = select(FoldPredictions({"arm_only": floor, "bcf": noisy, "t_learner": sharp}, *mu), y, t, 0.5, default)
    assert "bcf" not in worse.eligible and "t_learner" in worse.eligible and worse.choice == "arm_only"
    # The champion's reason says which happened, in words.
    for selection, says in ((eligible_bcf, "BCF, serves"), (worse, "so the floor serves")):
        result = SimpleNamespace(champion=selection.choice, cv=SimpleNamespace(eligible=selection.eligible))
        assert says in champion_reason(result, default)


def test_the_default_criterion_refuses_a_candidate_list_without_bcf():
    with pytest.raises(ValueError, match="bcf_when_eligible .*needs bcf"):
        fast_config(candidates={"enabled": ["arm_only", "risk_model"]})
    assert fast_config(candidates={"enabled": ["arm_only", "risk_model"]}, selection={"criterion": "dr_tau_risk_1se"})


def test_sequential_p_value_stops_early_and_is_valid_under_the_null():
    null = np.r_[np.ones(10), np.zeros(189)]
    p, used = sequential_p_value(null, 0.5, h=10, budget=199)
    assert used == 10 and p == 1.0
    p, used = sequential_p_value(np.zeros(199), 0.5, h=10, budget=199)
    assert used == 199 and p == pytest.approx(1 / 200)
    rng = np.random.default_rng(3)
    p_values = np.array([sequential_p_value(rng.normal(size=199), rng.normal(), 10, 199)[0] for _ in range(4000)])
    for alpha in (0.01, 0.05, 0.1):  # P(p <= alpha) <= alpha, within Monte-Carlo error
        assert np.mean(p_values <= alpha) <= alpha + 3 * np.sqrt(alpha / 4000)


# Candidates -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def features_99(spec, final_99):
    data, _ = outcome_data(final_99, spec, "memory", fast_config())
    F = build_feature_pipeline(spec).fit_transform(data.X)
    return F, data


def test_arm_only_gives_everyone_the_trial_average_and_explains_nothing(features_99):
    F, data = features_99
    model = ArmOnly(random_state=1).fit(F, data.t, data.y)
    p1, p0 = model.predict_arms(F)
    assert np.ptp(p1) == 0 and np.ptp(p0) == 0
    assert p1[0] == pytest.approx((data.y[data.t == 1].sum() + 0.5) / ((data.t == 1).sum() + 1))
    draws = model.benefit_draws(F.head(3))
    assert draws.shape == (3, 1000) and abs(np.median(draws) - (p1[0] - p0[0])) < 0.03
    explanation = model.explain(F)
    assert not explanation.benefit.values.any()


def test_bcf_posterior_draws_pickle_and_explanations_add_up(features_99):
    F, data = features_99
    model = BayesianCausalForest(num_gfr=3, num_mcmc=40, mu_trees=20, tau_trees=10, explain_draws=8, random_state=4)
    model.fit(F, data.t, data.y)
    p1, p0 = model.predict_arms(F)
    draws = model.benefit_draws(F)
    assert draws.shape == (len(F), 40)
    np.testing.assert_allclose(draws.mean(axis=1), p1 - p0, atol=1e-12)
    live_explanation = model.explain(F.head(20))
    restored = pickle.loads(pickle.dumps(model))
    assert not hasattr(restored, "_live") and restored.model_json_
    # The explanation trees travel as a few packed arrays, not one dictionary per tree.
    assert "explain_trees_" not in restored.__dict__ and set(restored.explain_packed_["tau"]) >= {"starts", "features"}
    # The served plan scores a few patients from the pickled flat forests, without rebuilding stochtree's model.
    from serving.runtime.arms import PosteriorForestArms

    plan_p1, plan_p0 = PosteriorForestArms(restored, 0.95).point(F.to_numpy(dtype=float)[:5])
    restored.explain(F.head(1))  # one patient's explanation needs no stochtree model either
    assert getattr(restored, "_live", None) is None
    np.testing.assert_allclose(plan_p1, p1[:5], atol=1e-12)
    np.testing.assert_allclose(plan_p0, p0[:5], atol=1e-12)
    again = restored.predict_arms(F)
    np.testing.assert_allclose(again[0], p1, atol=1e-12)
    np.testing.assert_allclose(again[1], p0, atol=1e-12)
    explanation = restored.explain(F.head(20))
    np.testing.assert_allclose(explanation.benefit.base + explanation.benefit.values.sum(1), (p1 - p0)[:20], atol=1e-9)
    np.testing.assert_allclose(explanation.benefit.values, live_explanation.benefit.values, atol=1e-12)
    assert np.abs(explanation.benefit.values).sum() > 0
    assert pickle.loads(pickle.dumps(restored)).explain(F.head(20)).benefit.values == pytest.approx(explanation.benefit.values, abs=1e-12)
    # A refit forgets the earlier fit's stored model and trees.
    refit = pickle.loads(pickle.dumps(model)).fit(F.iloc[:60], data.t[:60], data.y[:60])
    assert refit.model_json_ is None and refit.explain_packed_ is None
    assert not np.allclose(pickle.loads(pickle.dumps(refit)).predict_arms(F)[0], p1)
    # The same seed gives the same posterior.
    twin = BayesianCausalForest(num_gfr=3, num_mcmc=40, mu_trees=20, tau_trees=10, random_state=4).fit(F, data.t, data.y)
    np.testing.assert_array_equal(twin.benefit_draws(F), draws)


def test_flattened_posterior_forests_predict_what_stochtree_predicts(features_99):
    from serving.runtime.forests import flatten_stochtree

    F, data = features_99
    model = BayesianCausalForest(num_gfr=3, num_mcmc=30, mu_trees=20, tau_trees=10, random_state=5).fit(F, data.t, data.y)
    live = model._model()
    X = F.to_numpy(dtype=float)
    out = live.predict(X, np.ones(len(X)), np.full(len(X), 0.5), terms=["mu", "tau"], type="posterior")
    mu = flatten_stochtree(live.forest_container_mu).predict(X) + live.y_bar
    tau = flatten_stochtree(live.forest_container_tau).predict(X) + np.asarray(live.tau_0_samples).reshape(1, -1)
    np.testing.assert_allclose(mu, out["mu_hat"], atol=1e-12)
    np.testing.assert_allclose(tau, out["tau_hat"], atol=1e-12)


# Explanations: one driver per input ------------------------------------------------------------------
def test_explanations_have_one_driver_per_input_and_add_up(spec, final_99):
    from serving.runtime.artefact import Evidence, ResponderModel
    from serving.runtime.explain import explain_patients
    from training.labelling import LabelPolicy

    data, _ = outcome_data(final_99, spec, "pain", fast_config())
    pipeline = build_feature_pipeline(spec).fit(data.X)
    F = pipeline.transform(data.X)
    evidence = Evidence(True, False, 0.5, 0.5, 0.0, 0.05, 10, "no reliable evidence")
    policy = LabelPolicy("population", LabelRule().model_dump(), "", UNCERTAIN, "reason")
    from training.candidates import TLearner

    for candidate in (TLearner(random_state=0).fit(F, data.t, data.y), ArmOnly().fit(F, data.t, data.y)):
        model = ResponderModel(spec, "pain", pipeline, candidate, None, policy, evidence)
        explained = explain_patients(model, data.X.head(15))
        for patient in explained:
            for output in (patient.benefit, patient.p_response_treated):
                fields = [d.feature for d in output.drivers]
                assert len(fields) == len(set(fields)), fields  # one driver per input, never two about one lab
                assert abs(output.base_value + sum(d.contribution for d in output.drivers) - output.prediction) < 1e-6
                sentences = [d.sentence for d in output.drivers]
                assert all(("raises" in s) != ("lowers" in s) for s in sentences)
                if candidate.name == "arm_only":
                    assert output.drivers == [] and output.note == NO_DEPENDENCE
                else:
                    assert not any(f.endswith(("_log", "_missing", "_below_lod", "_index")) for f in fields)
        if candidate.name == "t_learner":
            # Composite features are credited to their labs: no driver is named after one.
            all_fields = {d.feature for p in explained for d in p.benefit.drivers}
            assert not all_fields & {"inflammation_index", "markers_above_reference", "autoantibody_burden", "nlr"}


def test_default_draw_has_no_subgroup_evidence_and_labels_say_so(tmp_path, spec):
    """The default trial size: labels follow the evidence, one label per outcome, with its reason."""
    from training.published import DEFAULT_SEED
    from training.simulate import simulate
    from training.train import run_training

    path = tmp_path / "trial.csv"
    simulate("final", 99, DEFAULT_SEED).to_csv(path, index=False)
    summary = run_training(path, spec, fast_config(), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    frame = pd.read_csv(path, dtype=str)
    from training.data import model_inputs

    for name, result in summary.outcomes.items():
        out = result.model.predict(model_inputs(frame, spec))
        if not result.evidence:
            assert out["label"].nunique() == 1 and out["label_reason"].nunique() == 1, name
            assert "trial population as a whole" in out["label_reason"].iat[0]
        effect = result.summary()["average_effect"]
        assert list(effect)[:4] == ["risk_difference", "ci_low", "ci_high", "p_value"]
        if out["label"].iat[0] == LIKELY:
            assert result.evidence or effect["established"], name
        assert (out["benefit_lower"] <= out["benefit"]).all() and (out["benefit"] <= out["benefit_upper"]).all()


def test_interval_allowance_adds_what_the_champions_form_leaves_out(features_99):
    """k x BCF's posterior spread of benefit, plus (in quadrature) the SD of BCF's benefit minus the champion's."""
    import math

    from training.train import _reference_fit, allowance_sd, heterogeneity_reference

    F, data = features_99
    config = fast_config(candidates={"enabled": ["arm_only", "bcf"], "bcf": {"num_gfr": 3, "num_mcmc": 40, "mu_trees": 20, "tau_trees": 10}})
    floor = ArmOnly(random_state=1).fit(F, data.t, data.y)
    reference = _reference_fit(F, data.t, data.y, 0.5, config)
    reference_sd, gap, name = heterogeneity_reference(floor, F, data, config, reference)
    assert name == "bcf" and reference_sd == reference.spread
    # The posterior spread of benefit is wider than the spread of the posterior-mean benefit, which shrinks.
    assert reference_sd > np.std(reference.benefit) > 0
    assert gap == pytest.approx(np.std(reference.benefit), rel=1e-9)  # the floor gives everyone one benefit: it leaves out all of BCF's
    assert allowance_sd(config, reference_sd, gap) == pytest.approx(math.hypot(reference_sd, gap))
    assert allowance_sd(config.model_copy(update={"intervals": config.intervals.model_copy(update={"model_gap": False})}), reference_sd, gap) == reference_sd
    bcf = BayesianCausalForest(num_gfr=3, num_mcmc=40, mu_trees=20, tau_trees=10, random_state=4).fit(F, data.t, data.y)
    assert heterogeneity_reference(bcf, F, data, config)[1] == 0.0  # BCF is its own reference: no gap
