"""Unit tests of responder labels and the benefit / calibration metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.labels import responder_labels
from core.spec import OutcomeSpec, ResponderRule
from training import metrics as M
from training.evaluation import choose, criterion_scores
from training.inference import holm
from training.rate_tests import _statistic, statistic_kind

PAIN = OutcomeSpec(label="pain", baseline="b", followup="f", scale=(0, 10), better="lower")


def _frame(base, follow):
    return pd.DataFrame({"b": base, "f": follow})


def test_relative_rule_default_30_percent_and_50_percent():
    frame = _frame([6.0, 6.0, 6.0, 0.0], [4.2, 4.3, 3.0, 0.0])
    labels, counts = responder_labels(frame, PAIN)
    assert labels.tolist() == [1.0, 0.0, 1.0, 0.0]  # exactly 30% counts; a baseline of 0 cannot respond
    assert counts.zero_baseline == 1
    labels50, _ = responder_labels(frame, PAIN, ResponderRule(rule="relative", threshold=0.5))
    assert labels50.tolist() == [0.0, 0.0, 1.0, 0.0]


def test_absolute_and_threshold_rules_and_higher_is_better():
    frame = _frame([6.0, 6.0], [4.0, 4.5])
    assert responder_labels(frame, PAIN, ResponderRule(rule="absolute", threshold=2))[0].tolist() == [1.0, 0.0]
    assert responder_labels(frame, PAIN, ResponderRule(rule="threshold", threshold=4))[0].tolist() == [1.0, 0.0]
    wellbeing = OutcomeSpec(label="wb", baseline="b", followup="f", scale=(0, 100), better="higher")
    labels, _ = responder_labels(_frame([40.0, 40.0], [52.0, 51.9]), wellbeing, ResponderRule(rule="relative", threshold=0.3))
    assert labels.tolist() == [1.0, 0.0]


def test_missing_followup_policies_are_counted():
    frame = _frame([6.0, 6.0, 6.0], [3.0, None, 5.0])
    labels, counts = responder_labels(frame, PAIN)
    assert labels.tolist() == [1.0, 0.0, 0.0] and counts.missing_followup == 1 and counts.n == 3
    labels, counts = responder_labels(frame, PAIN, missing_policy="exclude")
    assert np.isnan(labels[1]) and counts.excluded == 1 and counts.n == 2


def test_calibration_of_well_calibrated_predictions():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, 20_000)
    y = rng.random(20_000) < p
    intercept, slope = M.calibration(y, p)
    assert abs(intercept) < 0.05 and abs(slope - 1) < 0.05
    _, slope_over = M.calibration(y, np.clip(0.5 + 1.6 * (p - 0.5), 0.01, 0.99))
    assert slope_over < 0.8  # over-confident predictions get a slope below 1


def _trial(n, seed, heterogeneous):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = rng.random(n) < 0.5
    tau = 0.3 * (x > 0) if heterogeneous else np.full(n, 0.15)
    p = 0.3 + t * tau
    y = (rng.random(n) < p).astype(int)
    return x, t.astype(int), y, tau


def test_benefit_metrics_reward_true_ranking_and_not_noise():
    x, t, y, tau = _trial(4000, 1, True)
    psi = M.dr_scores(y, t, np.full(len(y), 0.3) + 0.3 * (x > 0) * 0.5, np.full(len(y), 0.3), 0.5)
    good = M.benefit_metrics(y, t, x, psi)
    noise = M.benefit_metrics(y, t, np.random.default_rng(2).normal(size=len(y)), psi)
    assert good["autoc"] > 0.05 and abs(noise["autoc"]) < 0.03
    assert good["qini"] > noise["qini"] and good["auuc"] > noise["auuc"]
    assert good["c_for_benefit"] > 0.53 and abs(noise["c_for_benefit"] - 0.5) < 0.04
    assert good["tau_risk"] < noise["tau_risk"] or np.isclose(good["tau_risk"], noise["tau_risk"], rtol=0.05)


def test_calibration_for_benefit_reads_the_scale_of_predicted_differences():
    # Binary outcomes with known conditional benefit tau(x); DR scores from the true arm probabilities.
    rng = np.random.default_rng(11)
    n, reps = 2000, 200
    x = rng.normal(size=(reps, n))
    tau = 0.15 + 0.10 * np.tanh(x)
    t = rng.random((reps, n)) < 0.5
    p0 = np.full((reps, n), 0.3)
    y = (rng.random((reps, n)) < p0 + t * tau).astype(int)
    lines = {}
    for name, predicted in {"calibrated": tau, "too_spread": 0.15 + 2.0 * (tau - 0.15), "too_cautious": 0.15 + 0.5 * (tau - 0.15), "shifted": tau - 0.05}.items():
        lines[name] = [M.benefit_calibration_line(predicted[r], M.dr_scores(y[r], t[r], p0[r] + tau[r], p0[r], 0.5)) for r in range(reps)]
    slope = {k: np.mean([v["benefit_calibration_slope"] for v in lines[k]]) for k in lines}
    assert slope["calibrated"] == pytest.approx(1.0, abs=0.1)
    assert slope["too_spread"] == pytest.approx(0.5, abs=0.05) and slope["too_cautious"] == pytest.approx(2.0, abs=0.2)
    # The intervals cover the truth about as often as they say (slope 1 and calibration in the large 0).
    covered = np.mean([v["benefit_calibration_slope_low"] <= 1 <= v["benefit_calibration_slope_high"] for v in lines["calibrated"]])
    assert 0.90 <= covered <= 0.99
    covered = np.mean([v["benefit_calibration_intercept_low"] <= 0 <= v["benefit_calibration_intercept_high"] for v in lines["calibrated"]])
    assert 0.90 <= covered <= 0.99
    shifted = np.mean([v["benefit_calibration_intercept"] for v in lines["shifted"]])
    assert shifted == pytest.approx(0.05, abs=0.01)  # observed minus predicted average benefit
    # One benefit for everybody: no slope, and the sentence says why.
    flat = M.benefit_calibration_line(np.full(n, 0.15), M.dr_scores(y[0], t[0], p0[0] + tau[0], p0[0], 0.5))
    assert np.isnan(flat["benefit_calibration_slope"]) and np.isfinite(flat["benefit_calibration_intercept"])
    assert "no slope (the same benefit for every patient)" in M.describe_benefit_calibration(flat)
    assert "larger than the randomised comparison shows" in M.describe_benefit_calibration(lines["too_spread"][0])
    cautious = dict(zip(M.BENEFIT_CALIBRATION, (0.0, -0.01, 0.01, 2.0, 1.5, 2.5), strict=True))
    assert "smaller than the randomised comparison shows" in M.describe_benefit_calibration(cautious)
    assert "consistent with 1" in M.describe_benefit_calibration({**cautious, "benefit_calibration_slope_low": 0.9})
    assert "too imprecise" in M.describe_benefit_calibration({**cautious, "benefit_calibration_slope_low": -0.2})


def test_the_calibration_slope_is_aggregated_over_the_cross_fittings_repeats():
    """Each repeat's slope with its HC1 standard error; over repeats the median, with the repeats' spread in its variance
    (double/debiased ML's aggregation): one repeat is read alone, and repeats that disagree widen the interval."""
    rng = np.random.default_rng(5)
    n = 300
    x = rng.normal(size=n)
    tau = 0.15 + 0.10 * np.tanh(x)
    t = rng.random(n) < 0.5
    y = (rng.random(n) < 0.3 + t * tau).astype(int)
    psi = M.dr_scores(y, t, 0.3 + tau, np.full(n, 0.3), 0.5)
    repeats = np.stack([tau + rng.normal(0, s, n) for s in (0.01, 0.05, 0.10)])  # three cross-fittings' predictions
    z = 1.959963984540054
    parts = [M.HC1Slope(np.column_stack([np.ones(n), r - r.mean()]))(psi) for r in repeats]
    slopes, ses = np.array([b for b, _ in parts]), np.array([se for _, se in parts])
    one = M.benefit_calibration_line(repeats[1], psi)
    assert one["benefit_calibration_slope"] == pytest.approx(slopes[1])
    assert one["benefit_calibration_slope_high"] - one["benefit_calibration_slope"] == pytest.approx(z * ses[1])
    line = M.benefit_calibration_line(repeats, np.stack([psi] * 3))
    middle = float(np.median(slopes))
    se = float(np.sqrt(np.median(ses**2 + (slopes - middle) ** 2)))
    assert line["benefit_calibration_slope"] == pytest.approx(middle)
    assert (line["benefit_calibration_slope_low"], line["benefit_calibration_slope_high"]) == pytest.approx((middle - z * se, middle + z * se))
    assert se >= float(np.median(ses))  # the spread between repeats only adds
    # Calibration in the large: of the repeat-averaged predictions and scores, as before.
    assert line["benefit_calibration_intercept"] == pytest.approx(float(np.mean(psi - repeats.mean(axis=0))))
    # A repeat whose benefit is one number for everybody: no slope.
    flat = M.benefit_calibration_line(np.vstack([repeats[:2], np.full(n, 0.15)]), np.stack([psi] * 3))
    assert np.isnan(flat["benefit_calibration_slope"]) and np.isfinite(flat["benefit_calibration_intercept"])
    with pytest.raises(ValueError, match="differ in shape"):
        M.benefit_calibration_line(repeats, psi[None, :])


def test_holm_and_the_paired_one_se_rule():
    adjusted = holm({"pain": 0.01, "memory": 0.04, "sleep": float("nan")})
    assert adjusted["pain"] == pytest.approx(0.02) and adjusted["memory"] == pytest.approx(0.04)
    assert np.isnan(adjusted["sleep"])
    rng = np.random.default_rng(5)
    shared = rng.normal(0, 1, 500) ** 2  # the DR-score noise every candidate's loss shares
    losses = {"arm_only": shared + 0.010, "risk_model": shared + rng.normal(0.0002, 0.01, 500), "dr_learner": shared}
    scores = criterion_scores(losses)
    # Marginal SEs (about 0.06) would call all three equal; the paired SE sees the floor is worse.
    assert scores["arm_only"][1] < 0.005
    assert choose(scores, "dr_tau_risk_1se") == "risk_model"  # within one paired SE of the best: simpler wins
    assert choose(scores, "dr_tau_risk") == "dr_learner"


def test_beyond_risk_statistic_ignores_benefit_that_baseline_risk_explains():
    # Benefit that only follows baseline risk (what the risk model models) is not a responder subgroup;
    # benefit the risk model cannot explain is.
    rng = np.random.default_rng(0)
    n = 4000
    risk_benefit = rng.uniform(0.0, 0.3, n)  # e.g. patients near the floor cannot improve by 30%
    noise = rng.normal(0, 0.5, n)
    tau = {"risk_model": risk_benefit, "t_learner": risk_benefit + rng.normal(0, 0.01, n)}
    psi = risk_benefit + noise  # DR scores: true benefit plus noise
    any_spread, _ = _statistic(tau, psi, "rate")
    beyond, per_candidate = _statistic(tau, psi, "beyond_risk")
    assert any_spread > 0.01  # the spread is real, and "rate" counts it
    assert abs(beyond) < 0.005 and set(per_candidate) == {"t_learner"}
    subgroup = (rng.uniform(size=n) < 0.3) * 0.3  # now a subgroup the risk model does not see
    tau["t_learner"] = risk_benefit + subgroup
    beyond, _ = _statistic(tau, risk_benefit + subgroup + noise, "beyond_risk")
    assert beyond > 0.01


def test_beyond_risk_needs_an_effect_model_besides_the_risk_model():
    from core.config import load_config

    assert statistic_kind(load_config(None)) == "beyond_risk"
    assert statistic_kind(load_config(None, evidence={"candidates": ["risk_model"]})) == "rate"
    assert statistic_kind(load_config(None, evidence={"statistic": "rate"})) == "rate"


@pytest.mark.parametrize(
    "rule",
    [ResponderRule(rule="relative", threshold=0.3), ResponderRule(rule="absolute", threshold=2), ResponderRule(rule="threshold", threshold=0)],
)
def test_missing_followup_follows_the_declared_policy_whatever_the_rule(rule):
    # A drop-out with a baseline of 0 used to pass "pain <= 0" under non_responder (follow-up filled with the baseline).
    outcome = PAIN.model_copy(update={"zero_baseline": "non_responder"})
    frame = _frame([0.0, 6.0, 6.0], [None, None, 0.0])
    labels, counts = responder_labels(frame, outcome, rule, "non_responder")
    assert labels.tolist() == [0.0, 0.0, 1.0]
    assert (counts.counted_non_responder, counts.excluded, counts.n) == (2, 0, 3)
    labels, counts = responder_labels(frame, outcome, rule, "exclude")
    assert np.isnan(labels.iat[0]) and np.isnan(labels.iat[1]) and labels.iat[2] == 1.0
    assert (counts.counted_non_responder, counts.excluded, counts.n) == (0, 2, 1)


def test_zero_baseline_can_be_declared_excluded():
    outcome = PAIN.model_copy(update={"zero_baseline": "exclude"})
    labels, counts = responder_labels(_frame([0.0, 6.0], [0.0, 3.0]), outcome)
    assert np.isnan(labels.iat[0]) and labels.iat[1] == 1.0
    assert counts.zero_baseline == 1 and counts.excluded == 1


@pytest.mark.parametrize(("good", "expected"), [(False, [1.0, 0.0, 1.0, 0.0]), (True, [0.0, 1.0, 0.0, 0.0])])
def test_binary_event_labels(good, expected):
    outcome = OutcomeSpec.model_validate(
        {"kind": "binary", "label": "Pancreatitis", "event": {"column": "pep", "good": good, "present": "1_yes", "absent": "0_no"}}
    )
    frame = pd.DataFrame({"pep": ["0_no", " 1_yes", "0_no ", None]})
    labels, counts = responder_labels(frame, outcome)
    assert labels.tolist() == expected  # the patient without a recorded outcome is a non-responder either way
    assert counts.missing_followup == 1 and counts.rule == ("pancreatitis" if good else "no pancreatitis")
    assert responder_labels(frame, outcome, missing_policy="exclude")[1].n == 3


def test_missing_followup_sensitivity_only_above_ten_percent():
    from helpers import fast_config

    from core.labels import missing_followup_sensitivity, sensitivity_effects
    from core.spec import parse_spec

    spec = parse_spec(
        """
name: sens
arm: {column: arm, treated: a, control: b}
outcomes:
  few: {label: Few missing, baseline: base, followup: few, scale: [0, 10], responder: {rule: absolute, threshold: 2}}
  many: {label: Many missing, baseline: base, followup: many, scale: [0, 10], responder: {rule: absolute, threshold: 2}}
"""
    )
    rng = np.random.default_rng(3)
    n = 200
    arm = np.where(np.arange(n) % 2 == 0, "a", "b")
    follow = np.where(arm == "a", 3.0, 5.0) + rng.normal(0, 1.5, n)
    frame = pd.DataFrame({"patient_id": range(n), "arm": arm, "base": 6.0, "few": follow, "many": follow})
    frame.loc[:9, "few"] = np.nan  # 5%
    frame.loc[(frame.index % 4 == 0) & (frame["arm"] == "a"), "many"] = np.nan  # 25%, all in the treated arm
    config = fast_config()
    assert missing_followup_sensitivity(frame, spec, "few", config) is None
    effect = missing_followup_sensitivity(frame, spec, "many", config)
    assert effect is not None and effect.missing_policy == "exclude"
    assert effect.n_treated + effect.n_control == n - frame["many"].isna().sum()
    primary = responder_labels(frame, spec.outcomes["many"])[0]
    # Counting the treated drop-outs as non-responders shrinks the difference; excluding them does not.
    treated = frame["arm"].eq("a").to_numpy()
    primary_rd = primary[treated].mean() - primary[~treated].mean()
    assert effect.risk_difference > primary_rd + 0.1
    family = sensitivity_effects(frame, spec, config)
    assert list(family) == ["many"] and family["many"].n_outcomes == 2 and family["many"].p_adjusted is not None


def test_bootstrap_orders_sort_each_resample_as_a_fresh_sort_would():
    """One sort of all patients gives every resample's order: the same rows a re-sort of the resample gives."""
    from training import metrics as M

    rng = np.random.default_rng(5)
    tau = rng.normal(size=500)
    again = np.random.default_rng(11)
    for rows in M.bootstrap_orders(tau, 20, 11):
        resample = again.integers(0, 500, 500)
        expected = resample[M._order(tau[resample])]
        assert np.array_equal(tau[rows], tau[expected])
        assert np.array_equal(np.sort(rows), np.sort(resample))


def _dr_trial(rng, n: int, tau: np.ndarray, base: float = 0.3) -> np.ndarray:
    """DR scores of a two-arm trial with known benefit ``tau`` (e = 1/2, outcome models at the truth)."""
    p0 = np.full(n, base)
    p1 = p0 + tau
    t = rng.integers(0, 2, n)
    y = (rng.random(n) < np.where(t == 1, p1, p0)).astype(float)
    return p1 - p0 + 2 * t * (y - p1) - 2 * (1 - t) * (y - p0)


def test_the_calibration_error_is_unbiased_for_a_calibrated_model_and_finds_a_shrunken_one():
    """A calibrated prediction: the moment estimate averages 0 (its positive part is small); predictions shrunk to
    half the true spread: it finds the grouped error (the truth's group means minus the prediction's), not more."""
    rng = np.random.default_rng(3)
    n, groups = 4_000, 10
    tau = rng.uniform(-0.1, 0.5, n)
    calibrated = [M.calibration_error(tau, _dr_trial(rng, n, tau), groups) for _ in range(200)]
    variances = np.array([c["variance"] for c in calibrated])
    assert abs(variances.mean()) < 3 * variances.std(ddof=1) / np.sqrt(len(variances))
    assert np.median([c["sd"] for c in calibrated]) < 0.03
    shrunk = 0.2 + 0.5 * (tau - 0.2)  # too cautious: the true benefit is twice as spread out as predicted
    order = np.argsort(shrunk, kind="stable")
    true_gap = np.array([np.mean(tau[rows] - shrunk[rows]) for rows in np.array_split(order, groups)])
    found = np.array([M.calibration_error(shrunk, _dr_trial(rng, n, tau), groups)["sd"] for _ in range(50)])
    assert abs(np.mean(found) - np.sqrt(np.mean(true_gap**2))) < 0.1 * np.sqrt(np.mean(true_gap**2))
    assert all(c["groups"] == groups and c["smallest_group"] == n // groups for c in calibrated[:3])
    with pytest.raises(ValueError, match="cannot make 10 groups"):
        M.calibration_error(tau[:15], tau[:15], 10)
    with pytest.raises(ValueError, match="not finite"):
        M.calibration_error(np.where(np.arange(n) == 7, np.nan, tau), tau, 10)


def test_candidate_disagreement_is_the_root_mean_square_difference_to_the_served_model():
    served = np.array([0.1, 0.2, 0.3, 0.4])
    out = M.candidate_disagreement(served, {"a": served + 0.03, "b": served - np.array([0.04, -0.04, 0.04, -0.04]), "same": served})
    assert out["candidates"] == pytest.approx({"a": 0.03, "b": 0.04, "same": 0.0})
    assert out["variance"] == pytest.approx((0.03**2 + 0.04**2) / 3) and out["sd"] == pytest.approx(np.sqrt(out["variance"]))
    assert M.candidate_disagreement(served, {}) == {"sd": 0.0, "variance": 0.0, "candidates": {}}
    with pytest.raises(ValueError, match="b's predicted benefit is not finite"):
        M.candidate_disagreement(served, {"b": np.array([0.1, np.nan, 0.3, 0.4])})
    with pytest.raises(ValueError, match="served model"):
        M.candidate_disagreement(np.array([np.inf, 0, 0, 0]), {})


def test_the_allowance_widens_each_side_in_quadrature_and_keeps_the_point_inside():
    from core.runtime.intervals import with_allowance

    benefit = np.array([0.10, 0.30, -0.95, 0.98])
    lower, upper = benefit - np.array([0.03, 0.00, 0.02, 0.05]), benefit + np.array([0.04, 0.05, 0.01, 0.01])
    same = with_allowance(benefit, lower, upper, 0.0, 0.95)
    assert same[0] is lower and same[1] is upper
    low, high = with_allowance(benefit, lower, upper, 0.02, 0.95)
    extra = (1.959963984540054 * 0.02) ** 2
    np.testing.assert_allclose(low[:2], benefit[:2] - np.sqrt((benefit[:2] - lower[:2]) ** 2 + extra))
    np.testing.assert_allclose(high[:2], benefit[:2] + np.sqrt((upper[:2] - benefit[:2]) ** 2 + extra))
    assert (low <= lower).all() and (high >= upper).all() and (low <= benefit).all() and (benefit <= high).all()
    assert low.min() >= -1 and high.max() <= 1  # clipped to the scale


def test_a_patient_label_reason_says_when_its_interval_carries_the_calibration_allowance():
    from core.config import LabelRule
    from core.labelling import LabelPolicy

    plain = LabelPolicy("conditional", LabelRule().model_dump(), "There is evidence.", "uncertain", "Population.", "Why.", 0.95, "confidence")
    widened = LabelPolicy(*[getattr(plain, f) for f in ("answer", "rule", "evidence_sentence", "population_label", "population_reason",
                                                        "answer_reason", "level", "interval_kind")],
                          interval_note="widened by the model-error allowance of 4.7 pp")
    lower, upper = np.array([0.05]), np.array([0.30])
    assert plain.label(lower, upper).patient_reason[0] == (
        "There is evidence. This patient's 95% confidence interval for the conditional average benefit (+5 pp to +30 pp) lies above 0 pp."
    )
    assert widened.label(lower, upper).patient_reason[0] == (
        "There is evidence. This patient's 95% confidence interval for the conditional average benefit (+5 pp to +30 pp; "
        "widened by the model-error allowance of 4.7 pp) lies above 0 pp."
    )
