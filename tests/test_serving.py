"""The clinic API: contract, bad input, auth, batches, no skew, a real server, a Bento."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
import schemathesis
from helpers import free_port, rounded, running, serving_store
from hypothesis import HealthCheck, settings
from starlette.testclient import TestClient

from core.spec import load_spec
from serving.scoring import read_patients
from training.simulate import simulate

TOKEN = "test-token-not-a-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Champions trained on a simulated trial, in a fresh store the service is pointed at."""
    shared = serving_store(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("serving")
    uri, frame, summary = shared["uri"], shared["frame"], shared["summary"]
    settings_env = {
        "MLFLOW_TRACKING_URI": uri,
        "RESPONDERS_API_TOKEN": TOKEN,
        "RESPONDERS_MAX_BATCH": "50",
        # `bentoml serve` sets this up for /metrics; in-process tests must do it themselves
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus"),
    }
    (tmp / "prometheus").mkdir()
    saved = {k: os.environ.get(k) for k in settings_env}
    os.environ.update(settings_env)
    yield {"uri": uri, "tmp": tmp, "frame": frame, "summary": summary}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def app(store):
    from serving.service import ResponderService

    return ResponderService.to_asgi()  # one app per process: BentoML registers Prometheus metrics globally


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as test_client:  # runs the lifespan: the service instance loads the champions
        yield test_client


@pytest.fixture(scope="module")
def patients(store):
    path = store["tmp"] / "patients.csv"
    simulate("final", 6, 99).to_csv(path, index=False)
    return read_patients(path, load_spec())


def test_predict_contract(client, patients, store):
    response = client.post("/predict", json={"patients": patients[:3]}, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["n_scored"] == 3 and body["n_failed"] == 0
    assert body["simulated_training_data"] is True  # the store is trained on a simulated trial
    first = body["results"][0]
    assert first["patient_id"] == patients[0]["patient_id"]
    for outcome in ("pain", "memory"):
        p = first["predictions"][outcome]
        assert 0 <= p["p_response_control"] <= 1 and 0 <= p["p_response_treated"] <= 1
        assert p["benefit"] == pytest.approx(p["p_response_treated"] - p["p_response_control"])
        assert p["benefit_interval"]["lower"] <= p["benefit"] <= p["benefit_interval"]["upper"]
        assert p["answer"] in {"conditional", "risk_based", "average"} and p["estimand"]
        assert p["benefit_interval"]["kind"] in {"credible", "confidence"}
        # The patient label only with established effect modification, read from the interval beside it.
        if p["answer"] == "conditional":
            low, high = p["benefit_interval"]["lower"], p["benefit_interval"]["upper"]
            expected = "likely_benefit" if low > 0 else "unlikely_benefit" if high < 0.05 else "uncertain"  # 0.05: the default minimal benefit
            assert p["patient_label"] == expected and "interval for the conditional average benefit" in p["patient_label_reason"]
        else:
            assert p["patient_label"] is None and p["patient_label_reason"].startswith("No patient label")
        population = p["population"]
        assert population["label"] in {"likely_benefit", "uncertain", "unlikely_benefit"}
        assert population["label_reason"].endswith(".") and "pp" in population["label_reason"]
        assert population["interval"]["lower"] <= population["risk_difference"] <= population["interval"]["upper"]
        if p["answer"] == "average":  # the trial average answer: the population line's numbers, not a second estimate
            assert p["benefit"] == pytest.approx(population["risk_difference"], abs=1e-12)
            assert p["benefit_interval"]["kind"] == "confidence"
        assert p["model"]["version"] == store["summary"].outcomes[outcome].version
        assert p["evidence"]["verdict"]
        assert "30%" in p["responder_rule"]


def test_warnings_for_missing_and_below_detection_labs(client, patients):
    patient = dict(patients[0], crp=None, il6="<1.5")
    [result] = client.post("/predict", json={"patients": [patient]}, headers=AUTH).json()["results"]
    codes = {(w["code"], w["field"]) for w in result["warnings"]}
    assert ("imputed", "crp") in codes and ("below_detection_limit", "il6") in codes


def test_explain_is_ranked_additive_and_worded(client, patients, store):
    response = client.post("/explain", json={"patients": patients[:1], "top": 100}, headers=AUTH)
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    personal = [o for o, r in store["summary"].outcomes.items() if r.champion != "arm_only"]
    assert personal, "the fixture trial should give at least one champion that depends on the patient's values"
    for outcome in personal:
        explanation = result["explanations"][outcome]
        conditional = store["summary"].outcomes[outcome].answer == "conditional"
        assert explanation["drivers_of"] == ("benefit" if conditional else "prognosis")
        assert (explanation["benefit"] is None) == (not conditional)  # no drivers of benefit without evidence
        for target in ("benefit", "p_response_treated", "p_response_control") if conditional else ("p_response_treated", "p_response_control"):
            part = explanation[target]
            total = part["base_value"] + sum(d["contribution"] for d in part["drivers"])
            assert total == pytest.approx(part["prediction"], abs=1e-9)
            sizes = [abs(d["contribution"]) for d in part["drivers"]]
            assert sizes == sorted(sizes, reverse=True)
            assert all(d["sentence"].endswith(".") and d["patient_value"] for d in part["drivers"])
    short = client.post("/explain", json={"patients": patients[:1], "top": 3}, headers=AUTH).json()
    assert len(short["results"][0]["explanations"][personal[0]]["p_response_control"]["drivers"]) == 3


def test_report_is_self_contained_html_with_warnings(client, patients):
    patient = dict(patients[0], crp=None, il6=None)
    response = client.post("/report", json={"patient": patient}, headers=AUTH)
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "<img" in html and "http://" not in html and "https://" not in html
    assert "imputed" in html.lower()
    bad = client.post("/report", json={"patient": dict(patients[0], crp="5000")}, headers=AUTH)
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "crp"
    assert client.post("/report", json={"patient": patients[0]}).status_code == 401


def test_metadata(client, store):
    body = client.post("/metadata", json={}, headers=AUTH).json()
    assert set(body["outcomes"]) == {"pain", "memory"}
    pain = body["outcomes"]["pain"]
    assert pain["model"]["training_run_id"] == store["summary"].outcomes["pain"].run_id
    assert any(f["name"] == "crp_log" and f["unit"] == "log mg/L" for f in pain["features"])
    assert body["max_batch"] == 50
    effect = pain["average_effect"]
    trained = store["summary"].outcomes["pain"].average_effect
    assert effect["risk_difference"] == pytest.approx(trained.risk_difference)
    assert effect["ci_low"] <= effect["risk_difference"] <= effect["ci_high"] and 0 <= effect["p_value"] <= 1
    assert effect["established"] == trained.established
    # What each outcome answers, why, and which models were refused (as the summary JSON says).
    assert body["simulated_training_data"] is True
    for outcome, result in store["summary"].outcomes.items():
        meta = body["outcomes"][outcome]
        assert meta["answer"] == result.answer and meta["answer_reason"] and meta["estimand"]
        assert meta["refused"] == result.refused
        # The calibration allowance the intervals carry (none below 2,000 patients), and why, as the summary JSON says.
        allowance = result.summary()["calibration_allowance"]
        assert meta["calibration_allowance"] == 0.0
        assert meta["calibration_allowance_reason"] == (None if allowance is None else allowance["reason"])
    assert effect["risk_ratio"] > 0 and effect["rr_low"] <= effect["risk_ratio"] <= effect["rr_high"]


@pytest.mark.parametrize(
    ("change", "status", "field", "text"),
    [
        (lambda p: p.pop("pain_baseline"), 422, "patients[0].pain_baseline", "Field required"),
        (lambda p: p.update(age="fifty"), 422, "patients[0].age", "valid number"),
        (lambda p: p.update(sex="F"), 422, "patients[0].sex", "'female' or 'male'"),
        (lambda p: p.update(pain_baseline=11), 422, "patients[0].pain_baseline", "less than or equal to 10"),
        (lambda p: p.update(unexpected_field=1), 422, "patients[0].unexpected_field", "Extra inputs"),
        (lambda p: p.update(crp="5000"), 200, "crp", "implausible"),
        (lambda p: p.update(crp="1.2", crp_unit="furlongs"), 200, "crp", "unknown unit 'furlongs'"),
        (lambda p: p.update(ana="lots"), 200, "ana", "not a titre"),
    ],
)
def test_bad_input_table(client, patients, change, status, field, text):
    patient = dict(patients[0])
    change(patient)
    response = client.post("/predict", json={"patients": [patient]}, headers=AUTH)
    assert response.status_code == status, response.text
    body = response.json()
    if status == 422:
        [problem] = [d for d in body["detail"] if d["field"] == field]
        assert text in problem["message"]
    else:  # the patient gets its own errors and no prediction
        [result] = body["results"]
        assert result["predictions"] is None
        assert any(e["field"] == field and text in e["message"] for e in result["errors"])


def test_empty_oversized_and_malformed_bodies(client, patients):
    empty = client.post("/predict", json={"patients": []}, headers=AUTH)
    assert empty.status_code == 422 and empty.json()["detail"][0]["field"] == "patients"
    big = client.post("/predict", json={"patients": [patients[0]] * 51}, headers=AUTH)
    assert big.status_code == 413 and "limit is 50" in big.json()["detail"]
    broken = client.post("/predict", content=b"{not json", headers={**AUTH, "content-type": "application/json"})
    assert broken.status_code == 422
    missing = client.post("/predict", json={}, headers=AUTH)
    assert missing.status_code == 422 and missing.json()["detail"][0]["field"] == "patients"


def test_body_size_limit_is_enforced_before_parsing(client, patients):
    """A body over RESPONDERS_MAX_BODY_BYTES gets 413 naming the limit, whether its size is declared or not."""
    from serving.settings import DEFAULT_MAX_BODY_BYTES

    huge = b'{"patients":[' + b",".join([b"1"] * (DEFAULT_MAX_BODY_BYTES // 2 + 10)) + b"]}"
    declared = client.post("/predict", content=huge, headers={**AUTH, "content-type": "application/json"})
    assert declared.status_code == 413, declared.text[:300]
    assert f"the limit is {DEFAULT_MAX_BODY_BYTES} bytes" in declared.json()["detail"]

    def chunks():  # no content-length: the limit is enforced while reading
        for start in range(0, len(huge), 64 * 1024):
            yield huge[start : start + 64 * 1024]

    streamed = client.post("/explain", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert streamed.status_code == 413 and "RESPONDERS_MAX_BODY_BYTES" in streamed.json()["detail"]
    assert client.post("/predict", json={"patients": patients[:1]}, headers=AUTH).status_code == 200


def test_batch_limit_comes_before_item_validation_and_422_lists_a_bounded_number_of_errors(client, patients):
    # 51 malformed items: one 413 naming the limit, not 51 validation errors.
    over = client.post("/predict", json={"patients": [1] * 51}, headers=AUTH)
    assert over.status_code == 413 and "51 patients sent; the limit is 50" in over.json()["detail"]
    # 50 patients with 3 bad fields each: 150 errors, 50 listed, the rest counted.
    bad = [dict(p, age="x", bmi="y", pain_baseline=99) for p in (patients * 9)[:50]]
    response = client.post("/predict", json={"patients": bad}, headers=AUTH)
    assert response.status_code == 422
    body = response.json()
    assert len(body["detail"]) == 50 and body["omitted"] == 100
    assert "50 of 150 errors are listed, 100 omitted" in body["error"]
    assert {d["field"] for d in body["detail"][:3]} == {"patients[0].age", "patients[0].bmi", "patients[0].pain_baseline"}


@pytest.mark.parametrize("value", ["<0", "<0.0", "<=0", "<-1"])
def test_censored_lab_at_or_below_zero_is_refused_per_patient(client, patients, value):
    response = client.post("/predict", json={"patients": [dict(patients[0], rf=value), patients[1]]}, headers=AUTH)
    assert response.status_code == 200, response.text
    refused, scored = response.json()["results"]
    assert refused["predictions"] is None and [e["field"] for e in refused["errors"]] == ["rf"]
    assert scored["predictions"] is not None


def test_censored_lab_far_below_the_detection_limit_is_scored_as_below_the_limit(client, patients):
    """``<0.0001``, ``<0.3`` (the catalogue LOD) and a plain 0 are the same fact: below the detection limit."""
    forms = ["<0.0001", "<0.3", "0", 0.01, "<0.00001", "<0.001 mg/dL"]
    results = []
    for form in forms:
        patient = dict(patients[0], crp=form) if form != "<0.001 mg/dL" else dict(patients[0], crp="<0.001", crp_unit="mg/dL")
        [result] = client.post("/predict", json={"patients": [patient]}, headers=AUTH).json()["results"]
        assert result["errors"] == [], (form, result["errors"])
        assert ("below_detection_limit", "crp") in {(w["code"], w["field"]) for w in result["warnings"]}
        results.append(result["predictions"])
    assert all(rounded(r) == rounded(results[0]) for r in results[1:])


@pytest.mark.parametrize("field", ["crp", "age", "pain_baseline", "ana"])
def test_json_booleans_are_not_numbers(client, patients, field):
    response = client.post("/predict", json={"patients": [dict(patients[0], **{field: True})]}, headers=AUTH)
    assert response.status_code == 422, response.text
    fields = {d["field"] for d in response.json()["detail"]}
    assert fields == {f"patients[0].{field}"}


def test_numeric_strings_are_not_numbers_and_top_is_an_integer(client, patients):
    assert client.post("/predict", json={"patients": [dict(patients[0], age="52")]}, headers=AUTH).status_code == 422
    for top in ("3", 3.5, True):
        response = client.post("/explain", json={"patients": patients[:1], "top": top}, headers=AUTH)
        assert response.status_code == 422 and response.json()["detail"][0]["field"] == "top"


def test_unknown_paths_are_404_and_create_no_metric_series(client):
    for i in range(30):
        assert client.get(f"/x-{i}").status_code == 404
        assert client.post(f"/predict/x-{i}", headers=AUTH).status_code == 404
    metrics = client.get("/metrics").text
    assert "/x-" not in metrics and "endpoint=" in metrics  # the known endpoints are still measured


@pytest.mark.parametrize("path", ["/predict", "/explain", "/report", "/metadata"])
@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; charset=utf-8", "text/plain", "application/x-www-form-urlencoded"])
def test_anything_but_json_is_415(client, path, content_type):
    response = client.post(path, content=b'{"patients": []}', headers={**AUTH, "content-type": content_type})
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["detail"]


def test_patient_ids_blank_control_duplicates(client, patients):
    for bad in ["", " ", " A-17", "A-17 ", "A\x0017", "A\n17", "A\u200b17", "\u2028"]:
        response = client.post("/predict", json={"patients": [patients[1], dict(patients[0], patient_id=bad)]}, headers=AUTH)
        assert response.status_code == 422, repr(bad)
        [problem] = response.json()["detail"]
        assert problem["field"] == "patients[1].patient_id", problem
    same = [dict(patients[0], patient_id="A-17"), dict(patients[1], patient_id="B-2"), dict(patients[2], patient_id="A-17")]
    for route in ("/predict", "/explain"):
        results = client.post(route, json={"patients": same}, headers=AUTH).json()["results"]
        flagged = [[w for w in r["warnings"] if w["code"] == "duplicate_id"] for r in results]
        assert [len(f) for f in flagged] == [1, 0, 1]
        assert "2 times" in flagged[0][0]["message"] and "positions 1, 3" in flagged[0][0]["message"]
    assert client.post("/predict", json={"patients": [dict(patients[0], patient_id="Ærø 12")]}, headers=AUTH).status_code == 200


def test_index_page_is_ours_and_loads_nothing(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert 'href="/docs.json"' in html and 'href="/readyz"' in html
    for external in ("<script", "http://", "https://", "<link", "<img", "src="):
        assert external not in html
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_openapi_declares_security_errors_and_html(client):
    doc = client.get("/docs.json").json()
    assert doc["components"]["securitySchemes"]["bearer"] == {**doc["components"]["securitySchemes"]["bearer"], "type": "http", "scheme": "bearer"}
    for path in ("/predict", "/explain", "/report", "/metadata"):
        operation = doc["paths"][path]["post"]
        assert operation["security"] == [{"bearer": []}]
        assert {"200", "401", "413", "415", "422"} <= set(operation["responses"])
        assert operation["requestBody"]["required"] is (path != "/metadata")
    assert list(doc["paths"]["/report"]["post"]["responses"]["200"]["content"]) == ["text/html"]
    patients = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["patients"]
    assert patients["maxItems"] == 50
    assert doc["components"]["schemas"]["Patient"]["properties"]["patient_id"]["pattern"]


# One story (issue 22): GET /metadata, readable docs, a real OpenAPI title and version, the flag everywhere ----
def test_metadata_answers_get_as_post_and_every_answer_says_simulated(client, patients):
    posted = client.post("/metadata", json={}, headers=AUTH).json()
    got = client.get("/metadata", headers=AUTH)
    assert got.status_code == 200 and got.json() == posted
    assert client.get("/metadata").status_code == 401
    assert posted["simulated_training_data"] is True
    for path, body in (("/predict", {"patients": patients[:1]}), ("/explain", {"patients": patients[:1], "top": 2})):
        assert client.post(path, json=body, headers=AUTH).json()["simulated_training_data"] is True, path
    doc = client.get("/docs.json").json()
    assert "get" in doc["paths"]["/metadata"] and doc["paths"]["/metadata"]["get"]["security"] == [{"bearer": []}]


def test_openapi_has_a_real_title_version_and_description_and_docs_are_served(client):
    from importlib.metadata import version

    info = client.get("/docs.json").json()["info"]
    assert info["title"].startswith("Responder-subgroup API: Low-dose naltrexone vs placebo")
    assert info["version"] == version("ldn-responders") and info["version"] != "None"
    assert "BentoML" not in str(info) and "fraction" in info["description"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    html = docs.text
    assert info["title"] in html and "POST /predict" in html and "GET /metadata" in html and "p_response_treated" in html
    assert "Unit: fraction" in html  # benefit and the probabilities say their unit
    for external in ("<script", "http://", "https://", "<link", "<img", "src="):
        assert external not in html, external
    index = client.get("/").text
    assert 'href="/docs"' in index and "ldn-responders" not in index


def test_auth(client, patients):
    body = {"patients": patients[:1]}
    assert client.post("/predict", json=body).status_code == 401
    assert client.post("/predict", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/predict", json=body, headers={"Authorization": TOKEN}).status_code == 401
    assert client.post("/explain", json=body).status_code == 401
    assert client.post("/metadata", json={}).status_code == 401
    assert client.post("/predict", json=body, headers=AUTH).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    assert client.get("/docs.json").status_code == 200


def test_mixed_batch_scores_others_identically(client, patients):
    alone = [client.post("/predict", json={"patients": [p]}, headers=AUTH).json()["results"][0] for p in patients[:3]]
    bad = dict(patients[1], crp="5000")
    mixed = client.post("/predict", json={"patients": [patients[0], bad, patients[2]]}, headers=AUTH).json()
    assert mixed["n_scored"] == 2 and mixed["n_failed"] == 1
    assert mixed["results"][1]["errors"] and mixed["results"][1]["predictions"] is None
    for k in (0, 2):  # equal up to float rounding (vectorised maths may differ in the last bit with batch size)
        assert rounded(mixed["results"][k]) == rounded(alone[k])


def test_no_training_serving_skew(client, patients, store):
    """The same patient through /predict and through the registered MLflow model directly."""
    mlflow.set_tracking_uri(store["uri"])
    mlflow.set_registry_uri(store["uri"])  # models:/ URIs are read from the registry URI, which an earlier test may have set
    served = client.post("/predict", json={"patients": patients}, headers=AUTH).json()["results"]
    for outcome in ("pain", "memory"):
        direct = mlflow.pyfunc.load_model(f"models:/fibromyalgia-ldn-{outcome}@champion").predict(pd.DataFrame(patients))
        for i, result in enumerate(served):
            p = result["predictions"][outcome]
            assert p["p_response_treated"] == pytest.approx(direct["p_response_treated"][i], abs=1e-12)
            assert p["benefit"] == pytest.approx(direct["benefit"][i], abs=1e-12)
            assert p["benefit_interval"]["lower"] == pytest.approx(direct["benefit_lower"][i], abs=1e-12)
            assert p["patient_label"] == (None if pd.isna(direct["patient_label"][i]) else direct["patient_label"][i])
            assert p["population"]["label"] == direct["population_label"][i] and p["answer"] == direct["answer"][i]


def test_cli_predict_prints_the_same_json(store, patients, tmp_path):
    from typer.testing import CliRunner

    from responders.cli import app

    path = tmp_path / "patients.json"
    path.write_text(json.dumps({"patients": patients[:2] + [dict(patients[2], age="unknown")]}))
    result = CliRunner().invoke(app, ["predict", str(path), "--tracking-uri", store["uri"]])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["n_scored"] == 2 and body["n_failed"] == 1
    assert body["results"][2]["errors"][0]["field"] == "age"


def _post_text(client, path: str, text: str):
    return client.post(path, content=text.encode(), headers={**AUTH, "Content-Type": "application/json"})


@pytest.mark.parametrize("shape", ["arrays", "objects", "inside patients"])
def test_deeply_nested_json_is_a_422_saying_so(client, shape):
    """200 kB of nesting made json.loads raise RecursionError: a 500 after a long hang, uncounted (issue 23)."""
    depth = 100_000
    text = {
        "arrays": "[" * depth + "]" * depth,
        "objects": '{"a":' * depth + "1" + "}" * depth,
        "inside patients": '{"patients": [{"crp": ' + "[" * depth + "]" * depth + "}]}",
    }[shape]
    response = _post_text(client, "/predict", text)
    assert response.status_code == 422, response.text[:300]
    [entry] = response.json()["detail"]
    assert entry["field"] == "body" and entry["type"] == "json_too_deep" and "nested deeper than" in entry["message"]


def test_brackets_inside_strings_are_not_nesting(client, patients):
    patient = dict(patients[0], patient_id="[[[[{{{{" * 3)  # 24 brackets, past the depth limit were they counted
    response = client.post("/predict", json={"patients": [patient]}, headers=AUTH)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("literal", "field"), [("NaN", "crp"), ("Infinity", "age"), ("-Infinity", "bmi"), ("1e999", "pain_baseline")])
def test_nan_and_infinity_are_refused_naming_the_field(client, patients, literal, field):
    """Not JSON, and not missing either: NaN was imputed with the training median (issue 23)."""
    body = json.dumps({"patients": [dict(patients[0], **{field: 0})]}).replace(f'"{field}": 0', f'"{field}": {literal}')
    response = _post_text(client, "/predict", body)
    assert response.status_code == 422, response.text
    [entry] = response.json()["detail"]
    assert entry["field"] == f"patients[0].{field}" and entry["type"] == "non_finite_number"
    assert "not a finite number" in entry["message"]


@pytest.mark.parametrize(
    ("path", "extra", "field"),
    [("/predict", {"patient": {}}, "patient"), ("/explain", {"tops": 3}, "tops"), ("/report", {"format": "pdf"}, "format"), ("/metadata", {"verbose": True}, "verbose")],
)
def test_unknown_top_level_fields_are_422_naming_them(client, patients, path, extra, field):
    body = {"/predict": {"patients": patients[:1]}, "/explain": {"patients": patients[:1]}, "/report": {"patient": patients[0]}, "/metadata": {}}[path]
    response = client.post(path, json={**body, **extra}, headers=AUTH)
    assert response.status_code == 422, response.text
    assert {(e["field"], e["type"]) for e in response.json()["detail"]} == {(field, "extra_forbidden")}


def test_the_published_contract_forbids_unknown_top_level_fields(client):
    schemas = client.get("/docs.json").json()["components"]["schemas"]
    inputs = {name: schema for name, schema in schemas.items() if name.endswith("__Input")}
    assert inputs and all(schema.get("additionalProperties") is False for schema in inputs.values()), list(inputs)


def test_the_service_is_warm_once_its_lifespan_has_started(client):
    """The warm-up ran (synthetic patients, before serving) and is on /metrics; the real server: test_deployment.py.

    It covered a full batch of /predict (RESPONDERS_MAX_BATCH is 50 here) and a few patients of /explain.
    """
    metrics = client.get("/metrics").text
    for endpoint in ("/predict", "/explain"):
        assert re.search(rf'responders_warm_up_seconds{{endpoint="{endpoint}"[^}}]*}} [0-9.e+-]+', metrics), metrics[-2000:]
    patients = dict(re.findall(r'responders_warm_up_patients\{endpoint="(/\w+)"[^}]*\} ([0-9.e+-]+)', metrics))
    assert float(patients["/predict"]) == 50 and 1 <= float(patients["/explain"]) <= 50, patients


def test_the_warm_up_sends_every_form_of_a_lab_value_and_each_is_scored(store):
    """Synthetic patients from the spec: as example_input gives them, labs as numbers with units, below the detection
    limit and positive titres, labs missing; all scorable, none a trial patient, a body as a client sends it."""
    from serving.readiness import synthetic_forms, warm_up_body
    from serving.scoring import Scorer, resolve_champions

    spec = load_spec()
    scorer = Scorer(spec, resolve_champions(spec, store["uri"]))
    forms = synthetic_forms(scorer)
    assert len(forms) == 4
    typical, numbers, below, missing = forms
    labs = [lab.column for lab in spec.labs.values()]
    assert any(isinstance(numbers[c], float) and numbers.get(f"{c}_unit") for c in labs)
    assert any(str(below[c]).startswith("<") for c in labs) and any(str(below[c]).startswith("1:") for c in labs)
    assert all(missing[c] is None for c in labs)
    body = warm_up_body(scorer, 7)
    sent = json.loads(body)["patients"]
    assert [p["patient_id"] for p in sent] == [f"warm-up-{i + 1}" for i in range(7)]
    assert not set(store["frame"]["patient_id"].astype(str)) & {p["patient_id"] for p in sent}
    answer = scorer.predict([scorer.patient_model.model_validate(p).model_dump() for p in sent])
    assert answer.n_scored == 7 and answer.n_failed == 0


def _fuzz(operation, statuses: dict[str, set[int]]) -> None:
    from hypothesis import given

    examples = 5 if operation.path == "/report" else 25  # a rendered report takes seconds

    @given(case=operation.as_strategy())
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def call(case):
        response = case.call(headers=AUTH)
        statuses.setdefault(operation.path, set()).add(response.status_code)
        assert response.status_code < 500, (case.path, response.status_code, response.text[:300])

    call()


def test_fuzzed_requests_never_get_a_server_error(app, client):
    """schemathesis generates bodies from the service's own OpenAPI document; no answer may be a 5xx."""
    schema = schemathesis.openapi.from_asgi("/docs.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/explain", "/report", "/metadata"}
    statuses: dict[str, set[int]] = {}
    for operation in operations:
        _fuzz(operation, statuses)
    assert statuses["/predict"] & {200, 422}  # the fuzzer reached the handlers, not only the guard


@pytest.mark.integration
def test_real_bentoml_serve_process(store, patients, tmp_path):
    port = free_port()
    env = {"RESPONDERS_API_TOKEN": TOKEN, "MLFLOW_TRACKING_URI": store["uri"]}
    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:ResponderService", "--host", "127.0.0.1", "--port", str(port)]
    with running(command, f"http://127.0.0.1:{port}/readyz", env=env, cwd=tmp_path, timeout=120):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            response = http.post("/predict", json={"patients": patients[:2]}, headers=AUTH)
            assert response.status_code == 200, response.text
            assert response.json()["n_scored"] == 2
            assert http.post("/predict", json={"patients": patients[:1]}).status_code == 401
            assert http.get("/metrics").status_code == 200
            # Values that must never reach the server log: a malformed field and an unusable lab.
            canary = dict(patients[0], patient_id="canary-id-5521", age="canary-age-4711")
            assert http.post("/predict", json={"patients": [canary]}, headers=AUTH).status_code == 422
            lab = dict(patients[0], patient_id="canary-id-7731", crp="canary-crp-9812")
            assert http.post("/predict", json={"patients": [lab]}, headers=AUTH).json()["n_failed"] == 1
    log_text = "".join(p.read_text() for p in tmp_path.glob("server-*.log"))
    assert "/predict" in log_text  # the log was captured
    for secret in ("canary-age-4711", "canary-crp-9812", "canary-id-5521", "canary-id-7731", TOKEN):
        assert secret not in log_text


@pytest.mark.integration
def test_service_refuses_to_start_without_token(store, tmp_path):
    from serving.service import ConfigurationError, ResponderService

    saved = os.environ.pop("RESPONDERS_API_TOKEN")
    try:
        with pytest.raises(ConfigurationError, match="RESPONDERS_API_TOKEN"):
            ResponderService.inner()  # the worker's constructor, as `bentoml serve` calls it
    finally:
        os.environ["RESPONDERS_API_TOKEN"] = saved


@pytest.mark.integration
def test_bento_build_includes_the_champions(store, tmp_path):
    import bentoml

    from serving.bento import build_bento

    bento = build_bento(tracking_uri=store["uri"], version="test")
    models = {str(m.tag) for m in bento.info.models}
    expected = {f"fibromyalgia-ldn-{o}:mlflow-v{store['summary'].outcomes[o].version}" for o in ("pain", "memory")}
    assert models == expected
    assert bentoml.bentos.get("ldn-responders:test").path
    # The Bento serves its own models: the registry is pointed somewhere empty.
    port = free_port()
    env = {"RESPONDERS_API_TOKEN": TOKEN, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'empty.db'}"}
    command = [sys.executable, "-m", "bentoml", "serve", "ldn-responders:test", "--host", "127.0.0.1", "--port", str(port)]
    with running(command, f"http://127.0.0.1:{port}/readyz", env=env, cwd=tmp_path, timeout=120):
        response = httpx.post(f"http://127.0.0.1:{port}/metadata", json={}, headers=AUTH, timeout=30)
        assert response.status_code == 200, response.text
        versions = {o: m["model"]["version"] for o, m in response.json()["outcomes"].items()}
        assert versions == {o: store["summary"].outcomes[o].version for o in ("pain", "memory")}


def test_worker_count_comes_from_the_environment_and_a_bad_value_is_named(monkeypatch):
    from serving.service import ConfigurationError, ServiceSettings, _workers

    monkeypatch.setenv("RESPONDERS_WORKERS", "2")
    assert _workers() == 2 and ServiceSettings.from_env().workers == 2
    for bad in ("0", "two"):
        monkeypatch.setenv("RESPONDERS_WORKERS", bad)
        assert _workers() == 1  # the decorator's value; the start-up check below stops the server first
        with pytest.raises(ConfigurationError, match="RESPONDERS_WORKERS"):
            ServiceSettings.from_env()



def test_outcomes_sharing_a_feature_pipeline_compute_it_once_with_the_same_answers(store, patients):
    """Both champions were fitted on the same rows: one imputation, feature matrix and warning pass per request
    serves both, and every answer (predict and explain, labs in every form, a patient with an unusable lab) is
    the same to the last digit as with each outcome computing its own."""
    from serving.readiness import synthetic_forms
    from serving.scoring import Scorer, resolve_champions

    spec = load_spec()
    shared = Scorer(spec, resolve_champions(spec, store["uri"]))
    alone = Scorer(spec, resolve_champions(spec, store["uri"]))
    keys = {plan.pipeline_key for plan in shared.plan.plans.values()}
    assert len(keys) == 1 < len(shared.plan.plans), keys
    for outcome, plan in alone.plan.plans.items():
        plan.pipeline_key = f"alone-{outcome}"
    example = json.loads((Path(__file__).resolve().parent.parent / "examples" / "patient.json").read_text())
    rows = [*patients, example, *synthetic_forms(shared), dict(patients[0], patient_id="bad", esr="500")]
    clean = [c for c, _ in shared.validate_rows(rows)]
    for call in ("predict", "explain"):
        answers = [getattr(scorer, call)(clean).model_dump_json() for scorer in (shared, alone)]
        assert answers[0] == answers[1], call
        assert json.loads(answers[0])["results"][-1]["errors"], "the unusable lab must be named"
    batch = shared.plan.parse(clean)[0]
    first, second = (batch[o] for o in shared.plan.plans)
    assert first is second
    shared.plan.warnings(batch)
    assert {what for _, what in first.shared} == {"warnings"}
