"""Reports: the one explanation function adds up for every candidate; cohort and patient reports agree with
MLflow, are self-contained, and render in a real headless Chromium at phone and desktop sizes."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
from helpers import fast_config
from mlflow import MlflowClient
from typer.testing import CliRunner

from features.pipeline import build_feature_pipeline
from serving.runtime.artefact import Evidence, ResponderModel
from serving.runtime.explain import explain_patients
from serving.scoring import Scorer, patient_from_file
from training.candidates import CANDIDATE_ORDER, BootstrapEnsemble, make_candidate
from training.cli import app
from training.config import LabelRule
from training.labelling import LabelPolicy
from training.reports import latest_training_run, render_patient_report
from training.simulate import simulate
from training.spec import load_spec
from training.tracking import CHAMPION, current_champion, load_registered
from training.train import outcome_data, run_training

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_PATIENT = ROOT / "examples" / "patient.json"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORTS = [(390, 844), (1280, 900)]
COHORT_SECTIONS = {
    "table1": "Table 1",
    "changes": "Outcome changes by arm",
    "responders": "Responder rates by arm",
    "candidates": "Candidate comparison",
    "calibration": "Calibration per arm",
    "uplift": "Qini / uplift curve",
    "evidence": "Heterogeneity evidence",
    "shap": "SHAP summary of benefit drivers",
    "dependence": "Dependence plots",
    "model-card": "Model card",
}
METRIC = re.compile(r'<span class="metric" data-run="([^"]+)" data-metric="([^"]+)" data-value="([^"]+)">([^<]+)</span>')
VERDICTS = ("No reliable evidence of a responder subgroup", "Evidence of a responder subgroup")


def _no_web_references(html: str) -> None:
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower()
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', html)
    assert sources, "expected images"
    assert all(s.startswith(("data:", "#")) for s in sources), [s[:40] for s in sources if not s.startswith(("data:", "#"))]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The default simulated trial (n = 99), trained once with tiny settings; the cohort report goes to reports/."""
    tmp = tmp_path_factory.mktemp("reports-job")
    data = tmp / "final-n99-seed2024.csv"
    simulate("final", 99, 2024).to_csv(data, index=False)
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    config = fast_config(evidence={"permutations": 9}, intervals={"bootstrap_models": 5})
    summary = run_training(data, load_spec(), config, tracking_uri=uri, report_dir=tmp / "reports")
    return SimpleNamespace(tmp=tmp, uri=uri, summary=summary, cohort=tmp / "reports" / "cohort.html")


@pytest.fixture(scope="module")
def champions(job):
    spec = load_spec()
    client = MlflowClient(job.uri)
    mlflow.set_tracking_uri(job.uri)
    models, versions = {}, {}
    for outcome in spec.outcomes:
        name = spec.registered_model_name(outcome)
        version = current_champion(client, name)
        models[outcome] = load_registered(f"models:/{name}@{CHAMPION}")
        versions[outcome] = f"{name} v{version.version}"
    return models, versions


# The explanation function ----------------------------------------------------------------------
def test_explanations_add_up_for_every_candidate_type(spec, final_99):
    config = fast_config()
    data, _ = outcome_data(final_99, spec, "pain", config)
    pipeline = build_feature_pipeline(spec).fit(data.X)
    F = pipeline.transform(data.X)
    patients = data.X.head(30)
    evidence = Evidence(True, False, 0.5, 0.5, 0.0, 0.05, 19, "no reliable evidence of a responder subgroup")
    policy = LabelPolicy("population", LabelRule().model_dump(), "", "uncertain", "no evidence")
    for name in CANDIDATE_ORDER:
        candidate = make_candidate(name, config.candidates, 0.5, 7).fit(F, data.t, data.y)
        ensemble = None if candidate.has_draws else BootstrapEnsemble(candidate, 5, 0.95, 7).fit(F, data.t, data.y)
        model = ResponderModel(spec, "pain", pipeline, candidate, ensemble, policy, evidence)
        predicted = model.predict(patients)
        explained = explain_patients(model, patients)
        assert len(explained) == len(patients)
        for i, patient in enumerate(explained):
            for output, column in ((patient.benefit, "benefit"), (patient.p_response_treated, "p_response_treated")):
                total = output.base_value + sum(d.contribution for d in output.drivers)
                assert total == pytest.approx(output.prediction, abs=1e-9), (name, column, i)
                assert output.prediction == pytest.approx(predicted[column].iat[i], abs=1e-9), (name, column, i)
                if name == "arm_only":  # the floor does not depend on the patient's values, and says so
                    assert not output.drivers and output.note, (name, column, i)
                    continue
                assert output.drivers, (name, column, i)
                assert all(d.sentence and d.display_value for d in output.drivers)
        # Every candidate but the floor personalises the benefit (the risk model through baseline risk only).
        assert (np.ptp(predicted["benefit"]) > 0) == (name != "arm_only"), name


# The cohort report -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_cohort_report_is_written_logged_and_self_contained(job):
    html = job.cohort.read_text(encoding="utf-8")
    client = MlflowClient(job.uri)
    logged = mlflow.artifacts.download_artifacts(
        run_id=job.summary.parent_run_id, artifact_path="reports/cohort.html", dst_path=str(job.tmp / "download"), tracking_uri=job.uri
    )
    assert Path(logged).read_text(encoding="utf-8") == html
    artifacts = {a.path for a in client.list_artifacts(job.summary.parent_run_id, "reports")}
    assert {"reports/cohort.html", "reports/payload.json", "reports/payload"} <= artifacts
    assert "report_seconds" in client.get_run(job.summary.parent_run_id).data.metrics
    for result in job.summary.outcomes.values():  # the SHAP figures also as artifacts of each outcome run
        if result.champion != "arm_only":
            assert "plots/shap_beeswarm.png" in {a.path for a in client.list_artifacts(result.run_id, "plots")}

    assert len(html.encode()) < 3_000_000
    _no_web_references(html)
    for anchor, heading in COHORT_SECTIONS.items():
        assert f'id="{anchor}"' in html and heading in html, anchor
    assert 'id="simulated-banner"' in html and "SIMULATED DATA" in html
    # Set beside the published FINAL figures (default simulated trial).
    assert "P = 0.27" in html and "P = 0.004" in html and "45% vs 28%" in html and "50.6 (8.8)" in html
    assert "ANCOVA" in html and "Holm-adjusted" in html and "TRIPOD+AI" in html
    assert "Not a substitute for clinical judgement" in html
    personal = [r for r in job.summary.outcomes.values() if r.champion != "arm_only"]
    # Calibration and Qini per outcome; beeswarm, bar and 2 dependence plots per champion that depends on values.
    assert html.count('<img src="data:image/png;base64,') >= 2 * len(job.summary.outcomes) + 4 * len(personal)
    assert html.count('data-arm-only="1"') == len(job.summary.outcomes) - len(personal)


@pytest.mark.slow
def test_cohort_numbers_equal_logged_mlflow_metrics(job):
    html = job.cohort.read_text(encoding="utf-8")
    client = MlflowClient(job.uri)
    parent = job.summary.parent_run_id
    runs = {}
    for child in client.search_runs([job.summary.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"):
        outcome = child.data.tags["outcome"]
        runs[f"outcome:{outcome}"] = child
        for grandchild in client.search_runs([job.summary.experiment_id], f"tags.mlflow.parentRunId = '{child.info.run_id}'"):
            runs[f"candidate:{outcome}/{grandchild.data.tags['candidate']}"] = grandchild
    found = METRIC.findall(html)
    assert len(found) > 80
    seen = set()
    for run_key, key, value, text in found:
        logged = runs[run_key].data.metrics[key]
        assert float(value) == logged, (run_key, key)
        decimals = len(text.split(".")[1]) if "." in text else 0
        assert text == f"{logged:.{decimals}f}", (run_key, key, text)
        seen.add((run_key, key))
    for outcome in ("pain", "memory"):
        assert {(f"outcome:{outcome}", k) for k in ("p_value", "p_adjusted", "auc_treated", "brier_mean", "n_patients")} <= seen
        assert {(f"candidate:{outcome}/{c}", "autoc_averaged") for c in CANDIDATE_ORDER} <= seen
    parent_metrics = client.get_run(parent).data.metrics
    evidence = [parent_metrics[f"{o}.subgroup_evidence"] for o in ("pain", "memory")]
    assert (VERDICTS[1] if any(evidence) else VERDICTS[0]) + "</strong>" in html


@pytest.mark.slow
def test_cohort_report_rerenders_from_mlflow_alone(job, tmp_path):
    original = METRIC.findall(job.cohort.read_text(encoding="utf-8"))
    assert latest_training_run(MlflowClient(job.uri), "fibromyalgia-ldn") == job.summary.parent_run_id  # the default --run
    out = tmp_path / "cohort.html"
    result = CliRunner().invoke(app, ["report", "cohort", "--tracking-uri", job.uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text(encoding="utf-8")
    _no_web_references(html)
    assert METRIC.findall(html) == original
    assert job.summary.parent_run_id in html and 'id="model-card"' in html
    missing = CliRunner().invoke(app, ["report", "cohort", "--tracking-uri", job.uri, "--run", "0" * 32, "--out", str(tmp_path / "x.html")])
    assert missing.exit_code != 0


def example_patient(spec):
    """The shipped example patient, read and validated as `responders report patient` and POST /report do."""
    frame, problems = patient_from_file(EXAMPLE_PATIENT, Scorer(spec, {}))
    assert frame is not None, problems
    return frame


# The patient report -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_patient_report_warns_about_imputed_labs(job, champions):
    models, versions = champions
    spec = load_spec()
    patient = example_patient(spec)
    complete = render_patient_report(models, patient, versions, now=datetime(2025, 3, 4, 10, 30, tzinfo=UTC))
    assert "not given: imputed" not in complete

    patient[["il6", "crp", "anti_sgc"]] = None
    html = render_patient_report(models, patient, versions, now=datetime(2025, 3, 4, 10, 30, tzinfo=UTC))
    _no_web_references(html)
    for label in ("IL-6", "CRP", "anti-SGC index"):
        assert f"{label} not given: imputed with the training median" in html, label
    assert 'data-code="imputed"' in html
    assert "2025-03-04 10:30 UTC" in html and "EXAMPLE-001" in html
    assert all(v in html for v in versions.values())
    assert 'id="simulated-banner"' in html and "Not a substitute for clinical judgement" in html
    for outcome, model in models.items():
        assert f'id="outcome-{outcome}"' in html
        assert model.evidence.verdict in html
        benefit = model.predict(patient)["benefit"].iat[0]
        assert f"<strong>{100 * benefit:+.0f} pp</strong>" in html
    personal = [m for m in models.values() if m.candidate_name != "arm_only"]
    # Probabilities and interval per outcome; a waterfall only where the prediction depends on the patient's values.
    assert html.count('<img src="data:image/png;base64,') == 2 * len(models) + len(personal)
    assert html.count("the predicted benefit by") >= len(personal)  # plain-language driver sentences
    text = unescape(html)
    assert text.count("does not depend on the patient's values") == len(models) - len(personal)
    for model in models.values():
        assert model.predict(patient)["label_reason"].iat[0] in text


@pytest.mark.slow
def test_patient_report_command_uses_the_champions(job, tmp_path):
    out = tmp_path / "patient.html"
    result = CliRunner().invoke(app, ["report", "patient", str(EXAMPLE_PATIENT), "--tracking-uri", job.uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text(encoding="utf-8")
    assert "fibromyalgia-ldn-pain v" in html and "EXAMPLE-001" in html
    bad = tmp_path / "bad.json"
    bad.write_text('{"patients": [{"patient_id": "X", "age": 50, "sex": "female", "pain_baseline": 6, "memory_baseline": 5, "crp": "lots"}]}')
    refused = CliRunner().invoke(app, ["report", "patient", str(bad), "--tracking-uri", job.uri, "--out", str(tmp_path / "bad.html")])
    assert refused.exit_code == 2 and "crp" in refused.output
    # The same request-model validation as POST /report: an out-of-range age is refused, not imputed.
    bad.write_text('{"patient_id": "X", "age": 500, "sex": "female", "pain_baseline": 6, "memory_baseline": 5}')
    refused = CliRunner().invoke(app, ["report", "patient", str(bad), "--tracking-uri", job.uri, "--out", str(tmp_path / "bad.html")])
    assert refused.exit_code == 2 and "age" in refused.output and not (tmp_path / "bad.html").exists()


# A real browser ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: install Debian's chromium (`make browser` as root, or apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.mark.slow
@pytest.mark.browser
def test_reports_open_in_headless_chromium(chromium, job, champions, tmp_path):
    models, versions = champions
    patient = example_patient(load_spec())
    patient[["il6"]] = None
    patient_html = tmp_path / "patient.html"
    patient_html.write_text(render_patient_report(models, patient, versions), encoding="utf-8")
    for name, path in (("cohort", job.cohort), ("patient", patient_html)):
        for width, height in VIEWPORTS:
            context = chromium.new_context(viewport={"width": width, "height": height})
            page = context.new_page()
            errors: list[str] = []
            requests: list[str] = []
            page.on("console", lambda message, errors=errors: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error, errors=errors: errors.append(str(error)))
            page.on("request", lambda request, requests=requests: requests.append(request.url))
            page.goto(path.resolve().as_uri(), wait_until="load")
            images = page.evaluate(
                "() => Array.from(document.images).map(i => ({ok: i.complete && i.naturalWidth > 0, alt: i.alt}))"
            )
            assert images and all(i["ok"] for i in images), (name, width, [i["alt"] for i in images if not i["ok"]])
            assert errors == [], (name, width, errors)
            assert all(u.startswith(("file:", "data:")) for u in requests), (name, [u[:60] for u in requests])
            # Readable on a phone: the page itself never scrolls sideways (wide tables scroll in their own box).
            assert page.evaluate("() => document.documentElement.scrollWidth") <= width, (name, width)
            shot = tmp_path / f"{name}-{width}x{height}.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if name == "cohort" and width > 1000:
                page.emulate_media(media="print")
                pdf = tmp_path / "cohort.pdf"
                page.pdf(path=str(pdf), format="A4")
                assert pdf.stat().st_size > 100_000
            context.close()
