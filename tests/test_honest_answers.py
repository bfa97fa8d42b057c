"""Issue 12: the arm-only floor, Bayesian shrinkage with posterior intervals, labels that follow the evidence."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from helpers import fast_config

from core.candidates import ArmOnly, BayesianCausalForest
from core.config import LabelRule
from core.effects import adjust, risk_difference, score_interval, score_test
from core.labelling import AVERAGE, CONDITIONAL, LIKELY, RISK_BASED, UNCERTAIN, UNLIKELY, build_policy
from core.runtime.explain import NO_DEPENDENCE
from features.pipeline import build_feature_pipeline
from training.evaluation import (
    FoldPredictions,
    eligible,
    floor_comparison,
    log_loss_per_patient,
    select,
)
from training.inference import sequential_p_value
from training.train import outcome_data


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


# Answers and labels -----------------------------------------------------------------------------------
def _policy(answer: str, effect, interval_kind: str = "credible"):
    return build_policy(
        LabelRule(),
        answer=answer,
        answer_reason="(why this answer).",
        evidence_sentence="(evidence sentence).",
        average_effect=effect,
        level=0.95,
        interval_kind=interval_kind,
        treated="LDN",
        control="placebo",
    )


def test_without_effect_modification_there_is_no_patient_label_and_the_population_label_follows_the_average():
    rng = np.random.default_rng(0)
    benefit = rng.uniform(0.0, 0.4, 50)
    lower, upper = benefit - 0.05, benefit + 0.05  # intervals that would look convincing one by one
    not_established = adjust({"pain": _effect("pain", 21, 49, 13, 50)})["pain"]
    established = adjust({"memory": _effect("memory", 30, 49, 7, 50)})["memory"]
    ruled_out = adjust({"x": _effect("x", 100, 1000, 110, 1000)})["x"]
    for answer in (RISK_BASED, AVERAGE):
        for effect, expected in ((not_established, UNCERTAIN), (established, LIKELY), (ruled_out, UNLIKELY)):
            labels = _policy(answer, effect).label(lower, upper)
            assert all(label is None for label in labels.patient_label), answer
            assert set(labels.patient_reason) == {labels.patient_reason[0]} and labels.patient_reason[0].startswith("No patient label")
            assert labels.population_label == expected
            assert "trial population as a whole, not this patient" in labels.population_reason
            assert "%" not in labels.population_reason.replace("% on", "").replace("% interval", "")  # thresholds in pp
    assert "established" in _policy(AVERAGE, established).population_reason


def test_a_patient_label_is_read_from_the_patients_own_interval_and_never_disagrees_with_it():
    rng = np.random.default_rng(1)
    benefit = rng.normal(0.1, 0.12, 400)
    width = rng.uniform(0.02, 0.3, 400)  # intervals of very different widths
    lower, upper = benefit - width, benefit + width
    established = adjust({"memory": _effect("memory", 30, 49, 7, 50)})["memory"]
    policy = _policy(CONDITIONAL, established)
    labels = policy.label(lower, upper)
    mid = LabelRule().unlikely_upper_below
    assert ((labels.patient_label == LIKELY) == (lower > 0)).all()
    assert ((labels.patient_label == UNLIKELY) == (upper < mid)).all()
    assert ((labels.patient_label == UNCERTAIN) == ((lower <= 0) & (upper >= mid))).all()
    assert {LIKELY, UNLIKELY, UNCERTAIN} <= set(labels.patient_label)
    for reason, lo, hi in zip(labels.patient_reason, lower, upper, strict=True):
        assert f"{100 * lo:+.0f} pp to {100 * hi:+.0f} pp" in reason and "credible interval for the conditional average benefit" in reason
    # Finding effect modification does not take the established average away: the population label stays.
    assert labels.population_label == LIKELY
    assert "patient's own 95% interval" in policy.describe() and policy.mode == "individual"
    assert "risk-based" in _policy(RISK_BASED, established).estimand("LDN", "placebo")


def test_relative_effects_match_a_hand_computation():
    from core.effects import relative_effects

    out = relative_effects(30, 49, 12, 50)
    rr = (30 / 49) / (12 / 50)
    se = np.sqrt(1 / 30 - 1 / 49 + 1 / 12 - 1 / 50)
    assert out["risk_ratio"] == pytest.approx(rr) and out["rr_low"] == pytest.approx(rr * np.exp(-1.959964 * se), rel=1e-5)
    odds = (30 * 38) / (19 * 12)
    se = np.sqrt(1 / 30 + 1 / 19 + 1 / 12 + 1 / 38)
    assert out["odds_ratio"] == pytest.approx(odds) and out["or_high"] == pytest.approx(odds * np.exp(1.959964 * se), rel=1e-5)
    assert not out["corrected"] and relative_effects(0, 20, 5, 20)["corrected"]  # an empty cell: Haldane's 0.5


def test_auc_interval_is_delong_and_covers_under_the_null():
    from training.metrics import auc, auc_interval

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    p = y * 0.6 + rng.normal(size=300)
    a, lo, hi = auc_interval(y, p)
    assert a == pytest.approx(auc(y, p)) and lo < a < hi
    covered = [auc_interval(rng.integers(0, 2, 60), rng.normal(size=60))[1:] for _ in range(400)]
    rate = np.mean([lo <= 0.5 <= hi for lo, hi in covered])
    assert 0.92 <= rate <= 0.98
    assert np.isnan(auc_interval(y, np.zeros(300))[0])  # a constant prediction ranks nobody


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


def test_the_default_criterion_serves_bcf_when_it_is_eligible_and_otherwise_the_floor_below_2000_patients():
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
    # auto: the prespecified model below 2,000 patients, where BCF sees every patient; the data choose from there.
    assert default.selection.criterion == "auto"
    assert default.resolved(1_999).selection.criterion == "bcf_when_eligible"
    assert default.resolved(2_000).selection.criterion == "dr_tau_risk"
    eligible_bcf = select(FoldPredictions({"arm_only": floor, "bcf": shrunk, "t_learner": sharp}, *mu), y, t, 0.5, default)
    assert set(eligible_bcf.eligible) == {"arm_only", "bcf", "t_learner"} and eligible_bcf.choice == "bcf"
    # tau-risk would have taken the sharper candidate: the default names its model in advance.
    tau_risk = fast_config(selection={"criterion": "dr_tau_risk"})
    assert select(FoldPredictions({"arm_only": floor, "bcf": shrunk, "t_learner": sharp}, *mu), y, t, 0.5, tau_risk).choice == "t_learner"
    # ... and so does the default resolved for a trial of 2,000 or more (cross_validate resolves it for the trial's n).
    large = default.resolved(2_000)
    assert select(FoldPredictions({"arm_only": floor, "bcf": shrunk, "t_learner": sharp}, *mu), y, t, 0.5, large).choice == "t_learner"
    # BCF worse than the floor: the floor serves, even though another candidate is eligible.
    worse = select(FoldPredictions({"arm_only": floor, "bcf": noisy, "t_learner": sharp}, *mu), y, t, 0.5, default)
    assert "bcf" not in worse.eligible and "t_learner" in worse.eligible and worse.choice == "arm_only"


def test_the_default_stopping_rule_never_changes_holms_first_step_and_keeps_the_level():
    # default.yaml: 199 null trials, stop at h = 5. A stopped test has p = 5 / used >= 5/199 > 0.025, so Holm's first
    # step for two outcomes (alpha / 2) is the one all 199 would give; h = 4 would not guarantee it. At alpha itself a
    # stopped verdict can differ from the full run's, which is why the rule's own p-value must keep the level.
    from core.config import load_config

    evidence = load_config(None).evidence
    B, h = evidence.replicates, evidence.sequential_h
    assert h / B > evidence.alpha / 2
    rng = np.random.default_rng(11)
    differs = {h: [0, 0], h - 1: [0, 0]}
    p_values = []
    for _ in range(3000):
        null, observed = rng.normal(size=B), rng.normal(1.6)
        full = sequential_p_value(null, observed, 0, B)[0]
        for k in differs:
            stopped, used = sequential_p_value(null, observed, k, B)
            differs[k][0] += (stopped <= evidence.alpha / 2) != (full <= evidence.alpha / 2)
            differs[k][1] += (stopped <= evidence.alpha) != (full <= evidence.alpha)
        p_values.append(sequential_p_value(rng.normal(size=B), rng.normal(), h, B)[0])
    assert differs[h][0] == 0 and differs[h - 1][0] > 0
    assert differs[h][1] > 0  # said in default.yaml and the methodology: at alpha the rule can change a verdict
    for alpha in (evidence.alpha / 2, evidence.alpha):  # ... and its own p-value is still valid under the null
        assert np.mean(np.array(p_values) <= alpha) <= alpha + 3 * np.sqrt(alpha / 3000)


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
    from core.effects import score_interval
    from core.runtime.arms import ConstantArms
    from core.runtime.artefact import model_interval

    F, data = features_99
    r1, n1 = int(data.y[data.t == 1].sum()), int((data.t == 1).sum())
    r0, n0 = int(data.y[data.t == 0].sum()), int((data.t == 0).sum())
    # Served (the final fit): the trial's own proportions and its Miettinen-Nurminen interval, the numbers of the
    # average effect the population label reads, through both scoring paths.
    model = ArmOnly(trial_average=True, random_state=1).fit(F, data.t, data.y)
    p1, p0 = model.predict_arms(F)
    assert np.ptp(p1) == 0 and np.ptp(p0) == 0
    assert p1[0] == r1 / n1 and p0[0] == r0 / n0
    low, high = score_interval(r1, n1, r0, n0, 0.95)
    lower, upper = model_interval(model, None, F.head(3), (p1 - p0)[:3], 0.95)
    np.testing.assert_allclose(lower, low)
    np.testing.assert_allclose(upper, high)
    plan = ConstantArms(pickle.loads(pickle.dumps(model)), 0.95).predict(np.zeros((2, 1)))
    np.testing.assert_allclose([v[0] for v in plan], [r1 / n1, r0 / n0, low, high])
    assert model.interval_kind == "confidence" and not model.needs_refits
    # A narrower level gives a narrower interval (the level is the served one, not fixed at fit time).
    assert model.closed_interval(0.80)[0] > low and model.closed_interval(0.80)[1] < high
    # In cross-validation the rates are smoothed: an arm with no responders in a fold keeps a finite log-loss.
    smoothed = ArmOnly().fit(F, data.t, np.zeros_like(data.y))
    assert smoothed.predict_arms(F.head(1))[0][0] == pytest.approx(0.5 / (n1 + 1))
    assert ArmOnly.from_config(None, 0.5, 3, final=True).trial_average and not ArmOnly.from_config(None, 0.5, 3).trial_average
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
    # What travels is the flat forests, not stochtree's own JSON (about 100 MB at 1,000 draws, seconds to write).
    assert not hasattr(restored, "_live") and restored.model_json_ is None and restored.flat_["mu"].n_draws == 40
    # The explanation trees travel as a few packed arrays, not one dictionary per tree.
    assert "explain_trees_" not in restored.__dict__ and set(restored.explain_packed_["tau"]) >= {"starts", "features"}
    # The served plan scores a few patients from the pickled flat forests, without rebuilding stochtree's model.
    from core.runtime.arms import PosteriorForestArms

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
    from core.runtime.forests import flatten_stochtree

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
    from core.labelling import LabelPolicy
    from core.runtime.artefact import Evidence, ResponderModel
    from core.runtime.explain import explain_patients

    data, _ = outcome_data(final_99, spec, "pain", fast_config())
    pipeline = build_feature_pipeline(spec).fit(data.X)
    F = pipeline.transform(data.X)
    evidence = Evidence(True, False, 0.5, 0.5, 0.0, 0.05, 10, "no reliable evidence")
    policy = LabelPolicy(AVERAGE, LabelRule().model_dump(), "", UNCERTAIN, "reason")
    from core.candidates import TLearner

    for candidate in (TLearner(random_state=0).fit(F, data.t, data.y), ArmOnly().fit(F, data.t, data.y)):
        model = ResponderModel(spec, "pain", pipeline, candidate, None, policy, evidence)
        explained = explain_patients(model, data.X.head(15))
        for patient in explained:
            assert not patient.shows_benefit_drivers  # no established effect modification: prognostic drivers
            for output in (patient.benefit, patient.p_response_treated, patient.p_response_control):
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


@pytest.mark.slow  # a whole training job (about 15 s)
def test_default_draw_answers_with_what_the_trial_identifies(tmp_path, spec):
    """The default trial size: without established effect modification no patient label and no drivers of benefit."""
    from training.published import DEFAULT_SEED
    from training.simulate import simulate
    from training.train import run_training

    path = tmp_path / "trial.csv"
    simulate("final", 99, DEFAULT_SEED).to_csv(path, index=False)
    summary = run_training(path, spec, fast_config(), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    frame = pd.read_csv(path, dtype=str)
    from core.data import model_inputs

    for name, result in summary.outcomes.items():
        out = result.model.predict(model_inputs(frame, spec))
        s = result.summary()
        assert s["answer"] == out["answer"].iat[0] and s["estimand"].split(":")[0] in {
            "conditional average benefit", "risk-based benefit", "trial average benefit"
        }
        assert s["heterogeneity_test"] == "imputed_randomisation" and "probit scale" in s["heterogeneity_null"]
        assert s["heterogeneity_bcf_fit"].startswith(f"{fast_config().evidence.warm_starts} warm-start iterations")
        assert s["path"]["n"] == result.counts.n and len(s["path"]["quarters"]) == 4
        assert sum(q["n"] for q in s["path"]["quarters"]) == result.counts.n
        if not result.evidence:
            assert out["patient_label"].isna().all(), name
            assert out["patient_label_reason"].str.startswith("No patient label").all()
            assert s["answer"] in {"risk_based", "average"}
            # risk-based only when the prognostic model discriminates out of fold; else the trial average for all
            assert (s["answer"] == "risk_based") == bool(s["path"]["discriminates"] and "risk_model" not in s["refused"])
            if s["answer"] == "average":
                assert out["benefit"].nunique() == 1
                # The trial average answer is the trial's average effect: the same difference as the population
                # line, and its Miettinen-Nurminen interval at the served level (before the multiplicity adjustment).
                c = result.average_effect
                assert out["benefit"].iat[0] == pytest.approx(c.risk_difference, abs=1e-12)
                assert out["p_response_control"].iat[0] == pytest.approx(c.responders_control / c.n_control, abs=1e-12)
                low, high = score_interval(c.responders_treated, c.n_treated, c.responders_control, c.n_control, 0.95)
                assert (out["benefit_lower"].iat[0], out["benefit_upper"].iat[0]) == pytest.approx((low, high), abs=1e-12)
                assert result.model.label_policy.interval_kind == "confidence"
        assert out["population_label"].nunique() == 1
        assert "trial population as a whole" in out["population_label_reason"].iat[0]
        effect = s["average_effect"]
        assert list(effect)[:4] == ["risk_difference", "ci_low", "ci_high", "p_value"]
        assert effect["relative"]["risk_ratio"] > 0 and effect["relative"]["odds_ratio"] > 0
        if out["population_label"].iat[0] == LIKELY:
            assert effect["established"], name
        assert (out["benefit_lower"] <= out["benefit"]).all() and (out["benefit"] <= out["benefit_upper"]).all()
        # The interval is the model's own: nothing is added for a patient's own deviation.
        F = result.model.features(model_inputs(frame, spec))
        own = result.model.interval(F, out["benefit"].to_numpy())
        np.testing.assert_allclose(own[0], out["benefit_lower"])
        np.testing.assert_allclose(own[1], out["benefit_upper"])


def test_fishers_combination_is_valid_under_the_null_and_its_futility_stop_only_removes_rejections():
    from training.inference import combined_p_value, fisher_p_value, independent_fisher_tail

    assert independent_fisher_tail(0.05, 1) == pytest.approx(0.05)  # one statistic: its own p-value
    u = np.random.default_rng(5).uniform(size=(200_000, 2))
    assert independent_fisher_tail(0.01, 2) == pytest.approx(np.mean(u.prod(axis=1) <= 0.01), abs=0.002)
    rng = np.random.default_rng(21)
    B, alpha = 199, 0.05
    full_p, stopped_p, stopped, lost = [], [], 0, 0
    for _ in range(2000):
        # Two positively dependent statistics, the observed trial exchangeable with the null trials.
        z = rng.normal(size=(B + 1, 2))
        T = np.column_stack([z[:, 0], 0.6 * z[:, 0] + 0.8 * z[:, 1]])
        full = fisher_p_value(T)
        p, used = combined_p_value(T[1:], T[0], alpha, B)
        assert used == B or p > alpha  # a stopped test does not reject
        assert not (p <= alpha and full > alpha)  # stopping never adds a rejection
        stopped += used < B
        lost += full <= alpha < p
        full_p.append(full)
        stopped_p.append(p)
    assert stopped > 1500 and lost <= 5  # most null runs stop early; a rejection is rarely given up
    # Under an alternative (the observed trial shifted on both statistics): the stops give up few of the whole
    # budget's rejections, and a trial that is far from rejecting stops early (stochastic curtailment).
    rejected, given_up, used_far = 0, 0, []
    for shift in np.repeat([1.6, 0.4], 300):
        z = rng.normal(size=(B + 1, 2))
        T = np.column_stack([z[:, 0], 0.6 * z[:, 0] + 0.8 * z[:, 1]])
        T[0] += shift
        full = fisher_p_value(T)
        p, used = combined_p_value(T[1:], T[0], alpha, B)
        assert not (p <= alpha and full > alpha) and (used == B or p > alpha)
        rejected += full <= alpha
        given_up += full <= alpha < p
        if shift < 1 and full > 0.2:
            used_far.append(used)
    assert rejected > 150 and given_up <= 0.02 * rejected, (rejected, given_up)
    assert np.mean(used_far) < 60, np.mean(used_far)  # the independent-statistics bound alone ran most of the budget here
    for level in (0.01, 0.05, 0.1):  # P(p <= level) <= level, within Monte-Carlo error, for the whole budget and the stopped rule
        for p_values in (full_p, stopped_p):
            assert np.mean(np.array(p_values) <= level) <= level + 3 * np.sqrt(level / 2000)
    # Evidence in both statistics adds up: two moderate p-values give a smaller combined one than either.
    T = rng.normal(size=(B + 1, 2))
    T[0] = [np.sort(T[1:, 0])[-8], np.sort(T[1:, 1])[-8]]  # each statistic's own p-value 9/200 (itself counted)
    assert fisher_p_value(T) < 9 / 200
