"""Feature engineering: lab rules, train-only scaling, imputation flags, estimator checks, signal."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from core.data import model_inputs
from features.catalog import load_catalog
from features.cores import LabParseError
from features.labs import LabValueError, parse_lab_cells, parse_lab_value
from features.pipeline import (
    build_feature_pipeline,
    feature_info,
    feature_sources,
    fitted_parts,
    input_warnings,
    lab_issues,
)
from features.transformers import InflammationFeatures, MedianImputer
from training.simulate import simulate

EXPECTED_NAMES = [
    "crp_log", "esr_log", "il6_log", "il8_log", "tnfa_log", "il1b_log", "il10_log", "neutrophils_log",
    "lymphocytes_log", "crp_band", "esr_uln_ratio", "esr_elevated", "il6_il10_ratio_log", "nlr",
    "inflammation_index", "markers_above_reference", "anti_sgc_index", "ana_log2_titre", "anti_tpo_log",
    "rf_log", "anti_sgc_positive", "ana_positive", "anti_tpo_positive", "rf_positive", "autoantibody_burden", "autoantibody_index",
    "pain_baseline", "memory_baseline", "cognitive_dominance", "age", "bmi", "symptom_years",
    "fatigue_baseline", "sleep_baseline", "stiffness_baseline", "tenderness_baseline", "anxiety_baseline",
    "depression_baseline", "fiqr_baseline", "sex_female",
]


@pytest.fixture(scope="module")
def fitted(spec, final_99):
    pipeline = build_feature_pipeline(spec)
    pipeline.fit(model_inputs(final_99, spec))
    return pipeline


def _patient(final_99, spec, **changes) -> pd.DataFrame:
    row = model_inputs(final_99, spec).iloc[[0]].copy().astype(object)
    for key, value in changes.items():
        row[key] = value
    return row


def test_feature_names_are_readable_stable_and_described(fitted, spec):
    names = list(fitted.get_feature_names_out())
    assert names[: len(EXPECTED_NAMES)] == EXPECTED_NAMES
    assert all(n.endswith(("_below_lod", "_missing")) for n in names[len(EXPECTED_NAMES):])
    info = feature_info(fitted, spec)
    assert list(info) == names
    assert info["crp_log"].unit == "log mg/L" and info["crp_log"].source == "crp"
    assert "age/sex" in info["esr_uln_ratio"].description
    assert all(i.description for i in info.values())


def test_crp_in_mg_dl_equals_mg_l(fitted, final_99, spec):
    in_mg_l = fitted.transform(_patient(final_99, spec, crp=12))
    in_mg_dl = fitted.transform(_patient(final_99, spec, crp="1.2", crp_unit="mg/dL"))
    pd.testing.assert_frame_equal(in_mg_l, in_mg_dl)
    assert in_mg_l.at[in_mg_l.index[0], "crp_log"] == pytest.approx(math.log(12))
    assert in_mg_l.at[in_mg_l.index[0], "crp_band"] == 3  # > 10 mg/L: acute


def test_below_detection_limit_substitution(fitted, final_99, spec):
    out = fitted.transform(_patient(final_99, spec, crp="<0.3"))
    assert out["crp_log"].iat[0] == pytest.approx(math.log(0.3 / math.sqrt(2)))
    assert out["crp_below_lod"].iat[0] == 1
    assert out["crp_missing"].iat[0] == 0


def test_ana_titre(fitted, final_99, spec):
    out = fitted.transform(_patient(final_99, spec, ana="1:320"))
    assert out["ana_log2_titre"].iat[0] == pytest.approx(3.0)
    assert out["ana_positive"].iat[0] == 1
    neg = fitted.transform(_patient(final_99, spec, ana="NEG"))
    assert neg["ana_positive"].iat[0] == 0 and neg["ana_log2_titre"].iat[0] == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("text", "value", "below"),
    [("2,5", 2.5, False), (">200", 200.0, False), ("<0.3", 0.3 / math.sqrt(2), True), ("0.1", 0.3 / math.sqrt(2), True), (7, 7.0, False)],
)
def test_lab_text_forms(text, value, below):
    result = parse_lab_value(text, load_catalog()["crp"])
    assert result.value == pytest.approx(value) and result.below_lod == below


def test_qualitative_results_use_cutoffs():
    tpo = load_catalog()["anti_tpo"]
    assert parse_lab_value("pos", tpo).value == 34.0
    assert parse_lab_value("negative", tpo).value < 34.0
    with pytest.raises(LabValueError, match="crp"):
        parse_lab_value("positive", load_catalog()["crp"])


def test_implausible_value_names_analyte_and_value(fitted, final_99, spec):
    with pytest.raises(LabValueError, match=r"crp: '5000'.*implausible"):
        parse_lab_value("5000", load_catalog()["crp"])
    with pytest.raises(LabParseError, match=r"crp: 5000.*implausible"):
        fitted.transform(_patient(final_99, spec, crp=5000))
    issues = lab_issues(fitted, _patient(final_99, spec, crp=5000, il6="lots"))
    [row] = issues.values()
    assert {i.analyte for i in row} == {"crp", "il6"}


def test_inflammation_index_uses_training_scaling_only():
    train = pd.DataFrame({"crp": [1.0, 2.0, 4.0, 8.0], "il6": [1.0, 1.0, 4.0, 4.0]})
    other = pd.DataFrame({"crp": [100.0, 200.0, 400.0], "il6": [50.0, 60.0, 70.0]})
    step = InflammationFeatures(analytes=("crp", "il6")).fit(train)
    out = step.transform(other)
    logs = np.log(train)
    expected = ((np.log(other) - logs.mean()) / logs.std(ddof=0)).mean(axis=1)
    np.testing.assert_allclose(out["inflammation_index"], expected)
    refit = clone(step).fit(other).transform(other)
    assert not np.allclose(refit["inflammation_index"], out["inflammation_index"])
    assert out["inflammation_index"].min() > 3  # far above the training cohort


def test_unseen_category_and_no_labs_transform_and_flag_imputation(fitted, final_99, spec):
    row = _patient(final_99, spec, sex="intersex")
    for column in spec.lab_columns():
        row[column] = None
    out = fitted.transform(row)
    assert np.isfinite(out.to_numpy(dtype=float)).all()
    assert out[[f"{a}_missing" for a in spec.labs]].to_numpy().all()
    assert out["sex_female"].iat[0] == 0
    [warnings] = input_warnings(fitted, spec, row)
    codes = {(w.code, w.field) for w in warnings}
    assert ("imputed", "crp") in codes and ("imputed", "ana") in codes
    assert ("unseen_category", "sex") in codes


def test_values_outside_training_range_are_flagged(fitted, final_99, spec):
    [warnings] = input_warnings(fitted, spec, _patient(final_99, spec, crp=400))
    assert any(w.code == "outside_training_range" and w.field == "crp" for w in warnings)


def test_censored_and_qualitative_results_are_not_out_of_range_unless_their_interval_is(fitted, final_99, spec):
    """'negative' says "below the cut-off" and '<x' says "below x": not an extrapolation when training saw such values.

    RF 'negative' stands for half the cut-off (7 IU/mL), just under the smallest training value (10/sqrt 2):
    that is a convention, not a measurement outside the range. A number or a lower bound beyond the range is.
    """
    imputer, _ = fitted_parts(fitted.named_steps["impute"])["labs"]
    rf_low = imputer.min_[list(spec.labs).index("rf")]
    assert 7.0 < rf_low  # the situation of issue 15: the substituted number is below the training minimum

    def codes(**changes):
        [warnings] = input_warnings(fitted, spec, _patient(final_99, spec, **changes))
        return {(w.code, w.field) for w in warnings}

    for quiet in ({"rf": "negative"}, {"rf": "NEG"}, {"rf": "<10"}, {"crp": "<0.3"}, {"ana": "negative"}, {"rf": "positive"}):
        field = next(iter(quiet))
        assert ("outside_training_range", field) not in codes(**quiet), quiet
    for loud in ({"rf": 3000}, {"crp": 400}, {"crp": ">450"}, {"rf": ">4000"}):
        field = next(iter(loud))
        assert ("outside_training_range", field) in codes(**loud), loud
    [warnings] = input_warnings(fitted, spec, _patient(final_99, spec, il6="<1.5"))
    [below] = [w for w in warnings if w.code == "below_detection_limit" and w.field == "il6"]
    assert "sqrt" not in below.message and "LOD" not in below.message and "1.5 pg/mL" in below.message


def test_fitted_pipeline_pickles(fitted, final_99, spec):
    X = model_inputs(final_99, spec)
    again = pickle.loads(pickle.dumps(fitted))
    pd.testing.assert_frame_equal(again.transform(X), fitted.transform(X))


@parametrize_with_checks([MedianImputer(), MedianImputer(add_indicator=False)])
def test_generic_transformers_pass_sklearn_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("name", ["InflammationFeatures", "AutoantibodyFeatures", "SymptomFeatures", "LabParser"])
def test_domain_transformers_follow_conventions(fitted, name):
    step = next(
        est for est in [fitted.named_steps["parse"], *fitted.named_steps["features"].named_transformers_.values()]
        if type(est).__name__ == name
    )
    fresh = clone(step)
    assert fresh.get_params() == step.get_params()
    assert not [k for k in vars(fresh) if k.endswith("_")]  # no fitted state before fit


@pytest.fixture(scope="module", params=["final", "null"])
def big(request, spec):
    frame = simulate(request.param, 20_000, 5)
    features = build_feature_pipeline(spec).fit_transform(model_inputs(frame, spec))
    return request.param, frame, features


def test_features_carry_the_simulated_signal(big):
    scenario, frame, features = big
    benefit = frame["true_benefit_pain"].to_numpy()
    # Change in true benefit (probability points) per SD of the feature: scale-aware, so the
    # tiny baseline-driven spread of benefit under ``null`` does not count as signal.
    slope = {
        c: np.polyfit((features[c] - features[c].mean()) / features[c].std(), benefit, 1)[0]
        for c in ["inflammation_index", "crp_log", "il6_log", "anti_sgc_index", "ana_log2_titre", "autoantibody_burden"]
    }
    if scenario == "final":
        # the simulator documents: benefit rises with inflammation and autoantibody burden
        assert slope["inflammation_index"] > 0.04, slope
        assert min(slope.values()) > 0.01, slope
    else:
        assert max(abs(v) for v in slope.values()) < 0.005, slope


# Specs without labs, with integer-coded categories ------------------------------------------------------------
COVARIATES_ONLY = """
name: covariates-only
id_column: pid
arm: {column: arm, treated: 1, control: 0}
outcomes:
  event: {kind: binary, label: Event, event: {column: event, good: false}}
covariates:
  age: {kind: numeric, range: [18, 90], required: true}
  drug: {kind: categorical, label: Drug, levels: {0: 'No', 1: 'Yes'}}
  site: {kind: categorical, label: Site, levels: [north, south, east]}
"""


def test_a_spec_without_labs_or_baselines_builds_fits_and_describes(tmp_path):
    from mlflow.models.utils import _enforce_schema

    from core.config import LabelRule
    from core.runtime.artefact import ResponderModel, input_schema
    from core.spec import parse_spec

    spec = parse_spec(COVARIATES_ONLY)
    rng = np.random.default_rng(0)
    n = 30
    frame = pd.DataFrame(
        {
            "pid": range(n),
            "arm": np.arange(n) % 2,
            "event": rng.integers(0, 2, n),
            "age": rng.integers(20, 80, n),  # int64, as pd.read_csv gives whole numbers
            "drug": rng.integers(0, 2, n),
            "site": rng.choice(["north", "south", "east"], n),
        }
    )
    frame.loc[3, "age"] = None
    pipeline = build_feature_pipeline(spec).fit(model_inputs(frame, spec))
    names = list(pipeline.get_feature_names_out())
    # One indicator for the binary covariate (reference: the first level), one per level otherwise; no lab parts.
    assert names == ["age", "drug_1", "site_north", "site_south", "site_east"]
    info = feature_info(pipeline, spec)
    assert info["drug_1"].label == "Drug: Yes" and "(vs No)" in info["drug_1"].description
    row = pd.DataFrame({"pid": ["x"], "age": [None], "drug": [1.0], "site": ["west"]})
    [warnings] = input_warnings(pipeline, spec, row)
    assert {(w.code, w.field) for w in warnings} == {("imputed", "age"), ("unseen_category", "site")}
    assert pipeline.transform(row)[["drug_1", "site_north", "site_south", "site_east"]].to_numpy().tolist() == [[1, 0, 0, 0]]

    # The registered model's example and signature need no lab imputer, and take what pd.read_csv returns.
    model = ResponderModel(spec, "event", pipeline, None, None, LabelRule(), None)  # type: ignore[arg-type]
    example = model.example_input()
    assert list(example.columns) == ["pid", "age", "drug", "site"]
    schema = input_schema(model)
    frame.to_csv(tmp_path / "trial.csv", index=False)
    plain = pd.read_csv(tmp_path / "trial.csv")
    assert plain["age"].dtype.kind == "f" and plain["drug"].dtype.kind == "i"
    for candidate in (example, plain, plain.astype({"age": "Int64"}).fillna({"age": 50}).astype({"age": "int64"})):
        enforced = _enforce_schema(candidate, schema)
        assert set(enforced.columns) <= {"pid", "age", "drug", "site"}
        assert np.isfinite(pipeline.transform(enforced).to_numpy(dtype=float)).all()


def test_text_in_a_numeric_column_is_an_issue_not_a_silent_imputation(fitted, final_99, spec):
    row = _patient(final_99, spec, age="fifty", bmi="27,5")
    issues = lab_issues(fitted, row)
    [[issue]] = issues.values()
    assert (issue.column, issue.raw, issue.reason) == ("age", "fifty", "not a number")
    with pytest.raises(LabParseError, match="age"):
        fitted.transform(row)


CELLS = [
    "3.2", " 3,2 ", "<0.3", "0.1", "0", "-1", "+3", "3.", "inf", "nan", "", "NA", None, math.nan, 2.5, 10**9, "1e5", "1E-2", True,
    "\u0661\u0662", "pos", "negative", "1:160", 160, "abc", np.float64(4.0), np.int64(3), 0.0, 1e-9, ["3.2"],
]  # fmt: skip


@pytest.mark.parametrize("analyte", ["crp", "il6", "ana", "rf", "anti_tpo"])
@pytest.mark.parametrize("units", ["none", "all missing", "some mg/dL"])
def test_parsing_a_column_gives_each_cells_own_result(analyte, units):
    """The column parser (array path for plain numbers, one parse per distinct text) agrees with parse_lab_value cell by cell."""
    lab = load_catalog()[analyte]
    row_units = {"none": None, "all missing": [None] * len(CELLS), "some mg/dL": ["mg/dL" if i % 3 == 0 else None for i in range(len(CELLS))]}[units]
    values, below, issues = parse_lab_cells(CELLS, lab, "cell", None, row_units)
    for i, cell in enumerate(CELLS):
        found = [issue for issue in issues if issue.row == i]
        try:
            result = parse_lab_value(cell, lab, row_units[i] if row_units else None)
        except (LabValueError, TypeError) as err:
            assert len(found) == 1 and found[0].reason == getattr(err, "reason", None) and found[0].raw is cell, (cell, found)
            assert math.isnan(values[i]) and below[i] == 0
            continue
        assert not found, (cell, found)
        assert (math.isnan(result.value) and math.isnan(values[i])) or result.value == values[i], (cell, result, values[i])
        assert below[i] == float(result.below_lod)
    for i, cell in enumerate(CELLS):  # one cell alone (a one-patient request: every cell through parse_lab_value), the same
        alone, below_alone, found_alone = parse_lab_cells([cell], lab, "cell", None, [row_units[i]] if row_units else None)
        assert np.array_equal(alone, values[i : i + 1], equal_nan=True) and below_alone[0] == below[i], cell
        assert [x.reason for x in found_alone] == [x.reason for x in issues if x.row == i], cell
    numbers = np.array([0.05, 3.0, 250.0, np.nan, 1e6])  # a float column: the array path only (1e6 is implausible)
    values, below, issues = parse_lab_cells(numbers, lab, "cell")
    for i, number in enumerate(numbers):
        try:
            expected = parse_lab_value(number, lab)
        except LabValueError as err:
            assert [issue.reason for issue in issues if issue.row == i] == [err.reason]
            continue
        assert (math.isnan(expected.value) and math.isnan(values[i])) or expected.value == values[i]


@pytest.mark.parametrize("analyte", ["crp", "ana", "rf"])
def test_a_long_column_of_report_text_gives_each_cells_own_result(analyte):
    """A file's column of text (at least ARROW_CELLS cells): each distinct text parsed once, the same values, flags and
    issues (in row order, with the cell as given) as parse_lab_value cell by cell."""
    from features.labs import ARROW_CELLS

    lab = load_catalog()[analyte]
    texts = [c for c in CELLS if c is None or isinstance(c, str) or (isinstance(c, float) and math.isnan(c))]
    cells = np.asarray([texts[i] for i in np.random.default_rng(3).integers(0, len(texts), 3 * ARROW_CELLS)], dtype=object)
    values, below, issues = parse_lab_cells(cells, lab, "cell")
    expected_issues = []
    for i, cell in enumerate(cells):
        try:
            result = parse_lab_value(cell, lab)
        except LabValueError as err:
            expected_issues.append((i, err.reason))
            assert math.isnan(values[i]) and below[i] == 0
            continue
        assert (math.isnan(result.value) and math.isnan(values[i])) or result.value == values[i], (cell, result, values[i])
        assert below[i] == float(result.below_lod)
    assert [(x.row, x.reason) for x in issues] == expected_issues and len(expected_issues) > 10
    assert all(x.raw is cells[x.row] for x in issues)


def test_the_autoantibody_index_is_the_mean_z_of_the_antibody_levels_scaled_on_training_data(spec, final_99):
    """The continuous composite beside the count positive: every level counts, not only which side of a cut-off."""
    train, other = model_inputs(final_99, spec), model_inputs(simulate("final", 60, 8), spec)
    pipeline = build_feature_pipeline(spec).fit(train)
    levels = ["anti_sgc_index", "ana_log2_titre", "anti_tpo_log", "rf_log"]
    fitted_levels = pipeline.transform(train)  # labs are imputed before the features, so these are what the index was scaled on
    scale = {name: (fitted_levels[name].mean(), fitted_levels[name].std(ddof=0)) for name in levels}
    F = pipeline.transform(other)
    expected = np.mean([(F[name] - scale[name][0]) / scale[name][1] for name in levels], axis=0)
    assert np.allclose(F["autoantibody_index"].to_numpy(), expected)
    assert abs(pipeline.transform(train)["autoantibody_index"].mean()) < 1e-9  # centred on the training data, not on these
    info = feature_info(pipeline, spec)["autoantibody_index"]
    assert info.group == "autoantibody" and "anti-SGC index, ANA, anti-TPO, RF" in info.description and info.unit == "z"
    # Its SHAP credit splits over the four antibodies (feature_sources), as the inflammation index's does.
    shares = feature_sources(pipeline, spec, other.iloc[:5])["autoantibody_index"]
    assert set(shares) == {"anti_sgc", "ana", "anti_tpo", "rf"}
    # A pipeline fitted before the index existed (no index state) keeps its own feature list.
    step = next(part for part, _ in fitted_parts(pipeline.named_steps["features"]).values() if hasattr(part, "index_analytes_"))
    del step.index_analytes_
    parsed = pipeline[:-1].transform(other)
    assert "autoantibody_index" not in step.get_feature_names_out() and "autoantibody_index" not in step.compute(parsed)

