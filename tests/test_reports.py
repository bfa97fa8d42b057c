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

from core.candidates import CANDIDATE_ORDER, BootstrapEnsemble, candidate_label, make_candidate
from core.config import LabelRule
from core.labelling import LabelPolicy
from core.runtime.artefact import Evidence, ResponderModel
from core.runtime.explain import explain_patients
from core.spec import load_spec
from features.pipeline import build_feature_pipeline
from responders.cli import app
from serving.reports import render_patient_report
from serving.reports.patient import driver_view
from serving.scoring import Scorer, patient_from_file
from training.answer import served_model_problems
from training.published import DEFAULT_SEED
from training.reports import latest_training_run
from training.simulate import simulate
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
    "responders": "Average effect: responder rates by arm",
    "candidates": "Candidate comparison",
    "calibration": "Calibration per arm",
    "uplift": "Qini / uplift curve, TOC, calibration for benefit, decision curve",
    "subgroups": "Prespecified subgroups",
    "evidence": "Heterogeneity evidence",
    "shap": "SHAP summary of the served models",
    "dependence": "Dependence plots",
    "model-card": "Model card",
}
METRIC = re.compile(r'<span class="metric" data-run="([^"]+)" data-metric="([^"]+)" data-value="([^"]+)">([^<]+)</span>')
VERDICTS = ("No reliable evidence of effect modification", "Evidence of effect modification")


JARGON = ("E[f(X)]", "f(x)", "LOD/sqrt", "sqrt 2", "likely_benefit", "unlikely_benefit", "extrapolates")


def _text(html: str) -> str:
    """What a reader sees: the page without tags, attributes, styles or image data."""
    html = re.sub(r"<style.*?</style>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def _png_width(uri: str) -> int:
    import base64
    import struct

    png = base64.b64decode(uri.split(",", 1)[1])
    return struct.unpack(">I", png[16:20])[0]


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
    data = tmp / f"final-n99-seed{DEFAULT_SEED}.csv"
    simulate("final", 99, DEFAULT_SEED).to_csv(data, index=False)
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    config = fast_config(evidence={"permutations": 9}, intervals={"bootstrap_models": 5})
    summary = run_training(data, load_spec(), config, tracking_uri=uri, report_dir=tmp / "reports")
    return SimpleNamespace(tmp=tmp, uri=uri, summary=summary, cohort=tmp / "reports" / "cohort.html")


@pytest.fixture(scope="module")
def champions(job):
    spec = load_spec()
    client = MlflowClient(job.uri)
    mlflow.set_tracking_uri(job.uri)
    mlflow.set_registry_uri(job.uri)  # models:/ URIs are read from the registry URI, which an earlier test may have set
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
    evidence = Evidence(True, False, 0.5, 0.5, 0.0, 0.05, 19, "no reliable evidence of effect modification")
    policy = LabelPolicy("average", LabelRule().model_dump(), "", "uncertain", "no evidence")
    for name in CANDIDATE_ORDER:
        candidate = make_candidate(name, config.candidates, 0.5, 7).fit(F, data.t, data.y)
        ensemble = None if not candidate.needs_refits else BootstrapEnsemble(candidate, 5, 0.95, 7).fit(F, data.t, data.y)
        model = ResponderModel(spec, "pain", pipeline, candidate, ensemble, policy, evidence)
        predicted = model.predict(patients)
        explained = explain_patients(model, patients)
        assert len(explained) == len(patients)
        for i, patient in enumerate(explained):
            outputs = ((patient.benefit, "benefit"), (patient.p_response_treated, "p_response_treated"), (patient.p_response_control, "p_response_control"))
            for output, column in outputs:
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


# The patient report's layout, without a training job -----------------------------------------------------
def _report_model(spec, final_99, name: str, answer: str) -> ResponderModel:
    from training.train import average_effect

    config = fast_config()
    data, _ = outcome_data(final_99, spec, "pain", config)
    pipeline = build_feature_pipeline(spec).fit(data.X)
    F = pipeline.transform(data.X)
    candidate = make_candidate(name, config.candidates, 0.5, 7).fit(F, data.t, data.y)
    ensemble = BootstrapEnsemble(candidate, 5, 0.95, 7).fit(F, data.t, data.y)
    conditional = answer == "conditional"
    verdict = "evidence of effect modification" if conditional else "no reliable evidence of effect modification"
    evidence = Evidence(True, conditional, 0.004, 0.008 if conditional else 0.8, 0.0, 0.05, 19, verdict)
    sentence = ("There is evidence" if conditional else "There is no reliable evidence") + " that the effect on pain differs between patients."
    reason = "Responders 43% vs 28%. This describes the trial population as a whole, not this patient in particular."
    policy = LabelPolicy(answer, LabelRule().model_dump(), sentence, "uncertain", reason, "Why this answer.", 0.95, "confidence")
    effect = average_effect(final_99, spec, "pain", config).to_dict()
    return ResponderModel(spec, "pain", pipeline, candidate, ensemble, policy, evidence, average_effect=effect,
                          metadata={"data_provenance": {"simulated": True, "source": "final-n99.csv"}})


@pytest.fixture(scope="module")
def personal_model(spec, final_99):
    """A pain model with established effect modification (penalised interaction logistic: a conditional answer)."""
    return _report_model(spec, final_99, "interaction_logistic", "conditional")


def test_without_effect_modification_the_report_names_prognostic_drivers_and_gives_no_patient_label(spec, final_99):
    model = _report_model(spec, final_99, "risk_model", "risk_based")
    html = render_patient_report({"pain": model}, example_patient(spec), {"pain": "pain v1"})
    answer = html.split('<section id="answer"')[1].split("</section>")[0]
    assert 'data-patient-label=""' in answer and 'data-answer="risk_based"' in answer
    assert "No patient label: effect modification is not established" in unescape(answer) and "in the trial population" in answer
    assert "risk-based benefit, from this patient" in unescape(answer)
    text = unescape(html)
    assert "who is likely to benefit" not in text and "Why: what moves this patient's predicted benefit" not in text
    assert "Prognostic drivers: what shapes this patient's chance of response on placebo" in text
    assert "These are not drivers of benefit" in text


def test_patient_report_gives_the_answer_first_in_plain_words(spec, personal_model):
    patient = example_patient(spec)
    patient["rf"] = "negative"  # a qualitative negative: not outside the training range
    html = render_patient_report({"pain": personal_model}, patient, {"pain": "pain v1"})
    _no_web_references(html)
    text = _text(html)
    prediction = personal_model.predict(patient).iloc[0]
    # Per outcome, before any detail: the population's label beside the trial average, then the patient's numbers
    # with the patient's own label beside the interval it is read from.
    answer = html.split('<section id="answer"')[1].split("</section>")[0]
    assert html.index('<section id="answer"') < html.index('id="warnings"') < html.index('<section id="outcome-pain"')
    for shown in (f"{100 * prediction['p_response_treated']:.0f}% on", f"{100 * prediction['p_response_control']:.0f}% on",
                  f"<strong>{100 * prediction['benefit']:+.0f} pp</strong>", f"{100 * prediction['benefit_lower']:+.0f} pp to",
                  "Uncertain benefit", "in the trial population", "conditional average benefit for patients with these measured values"):
        assert shown in answer, shown
    # Each label with a short reason in the answer box; the full reasons in the outcome's section.
    assert "This describes the trial population, not this patient." in unescape(answer)
    assert "Read from this patient's interval" in unescape(answer)
    why = unescape(html.split('id="why-pain"')[1].split("</div>")[0])
    assert prediction["population_label_reason"] in why
    assert prediction["patient_label_reason"] in why
    assert f'data-patient-label="{prediction["patient_label"]}"' in answer
    population = answer.split("patient-line")[0]
    assert f"{100 * personal_model.average_effect['risk_difference']:+.0f} pp" in population  # the label stands beside the average
    # The trial's average effect, with the Holm adjustment when there are several outcomes and the ANCOVA.
    effect = personal_model.average_effect
    average = _text(html.split('id="average-effect-pain"')[1].split("</p>")[0])
    assert f"difference {100 * effect['risk_difference']:+.1f} pp" in average and "ANCOVA adjusted for baseline" in average
    assert f"{effect['ancova']['estimate']:+.2f} points" in average
    # Plain words; the technical detail sits in the notes.
    assert not [j for j in JARGON if j in text], [j for j in JARGON if j in text]
    assert 'id="note-detection"' in html and "Hornung" in text and '"likely benefit"' not in text and "\u201clikely benefit\u201d" in text
    assert 'data-code="outside_training_range"' not in html
    # Pictures drawn for a 390 px phone at twice the pixels, shown at that width.
    images = re.findall(r'<img src="(data:image/png;base64,[^"]+)" width="(\d+)"', html)
    assert len(images) == 3  # probabilities, interval, drivers
    assert all(int(width) == 370 and _png_width(src) == 740 for src, width in images)


def test_drivers_chart_uses_the_benefit_scale_and_is_dropped_below_one_point():
    from core.reports import figures
    from core.runtime.explain import NO_DEPENDENCE, Driver, OutputExplanation

    def driver(amount, name="CRP of 1.2 mg/L"):
        return Driver("crp", "C-reactive protein", "inflammation", 1.2, name, "mg/L", amount, f"{name} moves it.")

    tiny = OutputExplanation("benefit", 0.17, 0.1716, [driver(0.004), driver(-0.0025), driver(0.0001)], 0.0)
    view = driver_view(tiny, arm_only=False)
    assert not view["chart"] and "less than 1 percentage point" in view["sentence"] and "+17.0 pp" in view["sentence"]
    floor = OutputExplanation("benefit", 0.15, 0.15, [], 0.0, note=NO_DEPENDENCE)
    assert driver_view(floor, arm_only=True)["sentence"] == NO_DEPENDENCE
    many = OutputExplanation("benefit", 0.10, 0.16, [driver(0.05), driver(-0.02)] + [driver(0.004, f"x{i}") for i in range(7)], 0.0)
    view = driver_view(many, arm_only=False)
    assert view["chart"] and len(view["bars"]) == 6 and view["remainder"] == (3, pytest.approx(0.012))
    # Bars start at 0 on a percentage-point axis at least +-5 pp wide: 1.2 pp in all looks small, as it is.
    fig = figures.drivers_figure([("IL-6 of 8.1 pg/mL", 0.009), ("CRP of 1.2 mg/L", -0.003)])
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    assert low <= -5 and high >= 5 and all(bar.get_x() == 0 for bar in ax.patches)
    figures.data_uri(fig)


def test_evaluation_figures_drawn_in_the_workers_are_the_ones_drawn_here():
    """The job draws every outcome's evaluation figures in its executor's workers: the same PNGs as in process."""
    import pandas as pd

    from training.executor import LocalExecutor
    from training.reports.evaluation import EvaluationInputs, draw_evaluation_figures

    rng = np.random.default_rng(5)
    inputs = []
    for outcome, tested in (("pain", True), ("memory", False)):
        t, y = rng.integers(0, 2, 80), rng.integers(0, 2, 80)
        p1, p0 = rng.uniform(0.2, 0.8, 80), rng.uniform(0.2, 0.8, 80)
        oof = pd.DataFrame({"t": t, "y": y, "p1": p1, "p0": p0, "benefit": p1 - p0, "psi": rng.normal(0.1, 1, 80)})
        evidence = {"tested": tested, "null": rng.normal(size=30) if tested else np.array([]), "statistic": 1.2, "p_value": 0.2, "statistic_label": "T"}
        inputs.append(EvaluationInputs(outcome, oof, evidence, ("LDN", "placebo"), 7, {"calibration_intercept_treated": 0.1, "calibration_slope_treated": 0.9}))
    here = draw_evaluation_figures(inputs)
    assert [sorted(d) for d in here] == [
        ["benefit_calibration", "calibration", "decision_curve", "permutation", "qini", "toc"],
        ["benefit_calibration", "calibration", "decision_curve", "qini", "toc"],  # untested: no null to draw
    ]
    assert all(uri.startswith("data:image/png;base64,") for d in here for uri in d.values())
    assert draw_evaluation_figures(inputs, LocalExecutor(workers=2)) == here


def test_a_worker_drawing_a_figure_does_not_import_mlflow():
    """training.reports loads its report names lazily: the figure module a worker imports stays light."""
    import subprocess
    import sys

    code = "import sys, training.reports.evaluation; print(sorted(m for m in ('mlflow', 'jinja2', 'shap') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_report_statistics(spec, final_99):
    from sklearn.metrics import roc_auc_score

    from training.reports import analysis
    from training.reports.numbers import _censored_median_iqr

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (20, 40)).astype(float)
    p = np.round(rng.random((20, 40)), 1)  # ties counted half, as scikit-learn does
    assert np.allclose(analysis._auc_rows(y, p), [roc_auc_score(a, b) for a, b in zip(y, p, strict=True)])

    # Bootstrap intervals of the metric as logged: the mean over repeats of each repeat's AUC lies inside.
    n = 120
    t = np.arange(n) % 2
    truth = rng.random(n)
    yy = (rng.random(n) < truth).astype(int)
    oof = np.stack([np.stack([np.clip(truth + rng.normal(0, 0.2, n), 0, 1)] * 2, axis=1) for _ in range(3)])
    cv = SimpleNamespace(oof={"m": oof})
    data = SimpleNamespace(t=t, y=yy)
    [interval] = analysis.metric_intervals(cv, data, ["m"], n_boot=400, seed=1).values()
    logged = np.mean([roc_auc_score(yy[t == 1], oof[r, t == 1, 0]) for r in range(3)])
    assert interval["auc_treated"][0] < logged < interval["auc_treated"][1] and interval["auc_treated"][0] > 0.5
    assert interval["brier_mean"][0] < interval["brier_mean"][1]
    # Above ANALYTIC_N patients the intervals are DeLong's (AUC) and normal (Brier): close to the bootstrap's at that size.
    n = analysis.ANALYTIC_N + 2_000
    t, truth = np.arange(n) % 2, rng.random(n)
    yy = (rng.random(n) < truth).astype(int)
    oof = np.stack([np.stack([np.clip(truth + rng.normal(0, 0.3, n), 0, 1)] * 2, axis=1) for _ in range(2)])
    cv, data = SimpleNamespace(oof={"m": oof}), SimpleNamespace(t=t, y=yy)
    [analytic] = analysis.metric_intervals(cv, data, ["m"], seed=1).values()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(analysis, "ANALYTIC_N", 10**9)
        [boot] = analysis.metric_intervals(cv, data, ["m"], n_boot=200, seed=1).values()
    logged = np.mean([roc_auc_score(yy[t == 0], oof[r, t == 0, 1]) for r in range(2)])
    assert analytic["auc_control"][0] < logged < analytic["auc_control"][1]
    assert set(analytic) == set(boot)
    for key, (low, high) in analytic.items():
        width = boot[key][1] - boot[key][0]
        assert abs(low - boot[key][0]) < 0.25 * width and abs(high - boot[key][1]) < 0.25 * width, (key, analytic[key], boot[key])

    # Decision curve: ranking by the true benefit is never worse than treating everyone or no one.
    psi = rng.normal(0.1, 0.3, 500)
    curves = analysis.decision_curve(psi, psi, np.linspace(0, 0.3, 31))
    assert np.allclose(curves["all"], psi.mean() - curves["threshold"])
    assert (curves["model"] >= np.maximum(curves["all"], 0) - 1e-12).all()

    # Prespecified subgroups of the default spec: every level counted once, interaction p-values.
    data, _ = outcome_data(final_99, spec, "pain", fast_config())
    subgroups = analysis.subgroup_effects(data.X, data.t, data.y, spec, "pain")
    assert [g["key"] for g in subgroups["groups"]] == ["inflammation", "autoantibody", "severity"]
    for group in subgroups["groups"]:
        assert sum(level["n"] for level in group["levels"]) + group["unknown"] == len(data.y)
        assert group["interaction_p"] is None or 0 <= group["interaction_p"] <= 1
    assert subgroups["overall"]["risk_difference"] == pytest.approx(data.y[data.t == 1].mean() - data.y[data.t == 0].mean())

    # Table 1: a median of censored values is not a number.
    below = np.r_[np.ones(8), np.zeros(4)]
    values = np.r_[np.full(8, 10 / np.sqrt(2)), [12.0, 15.0, 20.0, 31.0]]
    assert _censored_median_iqr(values, below, 10.0, 1) == "< 10 in 8/12 (67%)"
    below = np.r_[np.ones(4), np.zeros(8)]
    assert _censored_median_iqr(np.r_[np.full(4, 7.07), np.arange(8) + 11.0], below, 10.0, 1) == "12.5 [< 10 to 15.2]"


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
    # Calibration, Qini, TOC, calibration for benefit, decision curve and the subgroup forest plot per outcome;
    # beeswarm, bar and 2 dependence plots per champion that depends on values.
    assert html.count('<img src="data:image/png;base64,') >= 6 * len(job.summary.outcomes) + 4 * len(personal)
    assert html.count('data-arm-only="1"') == len(job.summary.outcomes) - len(personal)
    for key in ("toc", "benefit_calibration", "decision_curve"):  # also logged with the outcome run's plots
        for result in job.summary.outcomes.values():
            assert f"plots/{key}.png" in {a.path for a in client.list_artifacts(result.run_id, "plots")}, key


@pytest.mark.slow
def test_cohort_report_flags_intervals_average_effect_and_published_draw(job):
    """Issue 15's statistician findings: flags, one calibration definition, intervals, subgroups, the default draw, Table 1."""
    html = job.cohort.read_text(encoding="utf-8")
    text = _text(html)
    client = MlflowClient(job.uri)
    for name, result in job.summary.outcomes.items():
        summary = result.cv.summary
        rows = dict(re.findall(r'<tr class="[^"]*" data-candidate="([^"]+)"(?: data-flags="([^"]*)")?>', html.split(f"<h3>{result.model.spec.outcomes[name].label} <span")[1].split("</table>")[0]))
        assert set(rows) == set(summary.index), name
        for candidate, flags in rows.items():
            worse = candidate in result.cv.oof and bool(served_model_problems(result.cv, result.data.y, result.data.t, candidate))
            floor = candidate == "arm_only" or (candidate == "selected" and result.cv.selections.get("arm_only") == sum(result.cv.selections.values()))
            assert bool(flags) == (worse and not floor), (name, candidate, flags)
        flagged = [candidate_label(c).split(" (")[0] for c, f in rows.items() if f and c != "selected"]
        verdict = _text(html.split(f'id="verdict-{name}"')[1].split("</li>")[0])
        for label in flagged:  # named in the verdict too
            assert label in verdict, (name, label)
        assert ("worse than chance" in verdict) == bool(flagged or rows.get("selected")), name
        assert f"Served model: {candidate_label(result.champion)}." in verdict and ".;" not in verdict, verdict
        # The average effect, prominently: in the verdict and in its own table, as trained.
        effect = result.average_effect
        assert f"{100 * effect.risk_difference:+.1f} pp" in verdict and "ANCOVA" in verdict, name
        assert f'id="effect-{name}"' in html
        # The calibration figure's title and caption give the logged slope (one definition).
        slope = client.get_run(result.run_id).data.metrics["calibration_slope_treated"]
        assert f"slope {slope:.2f}" in text
    assert 'id="calibration-definition"' in html
    # AUC and Brier with bootstrap intervals in the candidate table.
    assert html.count('<small class="ci">') >= 3 * sum(len(r.cv.summary) for r in job.summary.outcomes.values())
    # Prespecified subgroups with interaction p-values.
    assert 'id="subgroups-pain"' in html and "Raised inflammation" in text and "Autoantibody positive" in text
    assert "Baseline severity" in text and "interaction p" in text
    # The default draw is the one closest to the published trial, and the report says how close.
    assert f"This is the default simulated trial (seed {DEFAULT_SEED})" in text
    assert 'id="published-distance"' in html and "seed 2024, scored 24.4" in text
    # Table 1: a lab whose values are mostly below the detection limit shows a count, not a median of LOD/sqrt 2.
    rf = _text(html.split("RF, IU/mL, median [IQR]")[1].split("</tr>")[0])
    assert "< 10 in" in rf and "7.1 [7.1 to 7.1]" not in rf
    for jargon in ("LOD/sqrt", "E[f(X)]"):
        assert jargon not in text


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
def test_runs_are_named_by_trial_outcome_and_date_and_metrics_read_at_a_glance(job):
    """Issue 22: one run name per job (trial, outcomes, date), parent runs with each outcome's headline, 4 digits."""
    client = MlflowClient(job.uri)
    parent = client.get_run(job.summary.parent_run_id)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert parent.info.run_name.startswith(f"fibromyalgia-ldn: pain, memory, {today} ") and "final-n99" in parent.info.run_name
    children = client.search_runs([job.summary.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == sorted(f"fibromyalgia-ldn/{o} {today}" for o in ("pain", "memory"))
    for outcome in ("pain", "memory"):
        assert {f"{outcome}.{k}" for k in ("auc_treated", "auc_control", "brier_mean", "average_effect.risk_difference", "n_patients")} <= set(parent.data.metrics)
    runs = [parent, *children, *[g for c in children for g in client.search_runs([job.summary.experiment_id], f"tags.mlflow.parentRunId = '{c.info.run_id}'")]]
    values = [v for run in runs for v in run.data.metrics.values()]
    assert len(values) > 100
    # No 17-digit metric: below 1, at most 4 significant digits; from 1 up, at most 3 decimals.
    assert all(float(f"{v:.4g}") == v if abs(v) < 1 else round(v, 3) == v for v in values), [v for v in values if len(repr(v)) > 10][:5]


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
    def shown(m):  # drivers of benefit only with established effect modification, else prognostic drivers
        e = explain_patients(m, patient)[0]
        return e.benefit if e.shows_benefit_drivers else e.p_response_control

    charted = [m for m in personal if driver_view(shown(m), False)["chart"]]
    # Probabilities and interval per outcome; a drivers chart only where the patient's values move the answer.
    assert html.count('<img src="data:image/png;base64,') == 2 * len(models) + len(charted)
    sentences = html.count("the predicted benefit by") + html.count("the chance of a meaningful response on placebo by")
    assert sentences >= len(charted)  # plain-language driver sentences
    text = unescape(html)
    sections = text.split('<section id="notes">')[0]  # the footnote may say it once more
    assert sections.count("does not depend on the patient's values") == len(models) - len(personal)
    for model in models.values():
        prediction = model.predict(patient).iloc[0]
        assert prediction["population_label_reason"] in text
        assert prediction["patient_label_reason"].replace("No patient label: ", "") in text


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
            shown = page.evaluate("() => Array.from(document.images).map(i => [i.getBoundingClientRect().width, i.naturalWidth])")
            assert all(w <= width for w, _ in shown), (name, width)
            if name == "patient":
                # The answer for every outcome is on the first screen, before any scrolling.
                answers = page.evaluate(
                    "() => Array.from(document.querySelectorAll('.answer')).map(a => [a.id, a.getBoundingClientRect().bottom])"
                )
                assert len(answers) == len(models) and all(bottom <= height for _, bottom in answers), (width, answers)
                # Pictures are drawn for a phone and shown at (nearly) their drawn size: no 0.35x shrinking.
                assert all(w >= 0.9 * natural / 2 for w, natural in shown), (width, shown)
            shot = tmp_path / f"{name}-{width}x{height}.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if width > 1000:  # on a desktop screen no table is cut off (issue 22: they were at 1280 px)
                cut = page.evaluate("() => Array.from(document.querySelectorAll('.table-wrap')).filter(t => t.scrollWidth > t.clientWidth + 1).length")
                assert cut == 0, (name, width, cut)
            if name == "cohort" and width > 1000:
                page.emulate_media(media="print")
                pdf = tmp_path / "cohort.pdf"
                page.pdf(path=str(pdf), format="A4")
                assert pdf.stat().st_size > 100_000
            context.close()


@pytest.mark.slow
def test_the_cohort_report_describes_the_test_the_job_ran(job):
    """Each heterogeneity test gets its own description; the held-out test does not call BCF the served model."""
    import copy

    from training.inference import STATISTIC_LABELS
    from training.reports import CohortPayload, render_cohort_report

    payload = CohortPayload.from_mlflow(job.summary.parent_run_id, job.uri)
    notes = {}
    for method, details in (("imputed_randomisation", {}), ("held_out", {"n_fit": 1000, "n_test": 9000}), ("split_rate", {"n_fit": 5000, "n_test": 5000})):
        meta = copy.deepcopy(payload.meta)
        for outcome in meta["outcomes"].values():
            outcome["evidence"].update({"method": method, **details})
        html = unescape(render_cohort_report(CohortPayload(meta, payload.parts)))
        notes[method] = re.search(r'<p class="note" id="test-null">(.*?)</p>', html, re.S).group(1)
    assert "null trials built from the fitted no-modification model" in notes["imputed_randomisation"]
    # The default spec names its prespecified modifiers: the note names them and gives each statistic's own p-value.
    parts = [o["evidence"]["components"] for o in payload.meta["outcomes"].values()]
    assert all(p and set(p) == {"bcf_spread", "prespecified_modifiers"} for p in parts)
    assert "(inflammation_index + autoantibody_index)" in notes["imputed_randomisation"] and "Fisher combination" in notes["imputed_randomisation"]
    assert "one-sided: large when the effect rises with it" in notes["imputed_randomisation"]
    for p in parts:
        assert f"(a) {p['bcf_spread']['p_value']:.3f}, (b) {p['prespecified_modifiers']['p_value']:.3f}" in notes["imputed_randomisation"]
    stopping = next(iter(payload.meta["outcomes"].values()))["evidence"]["stopping"]  # the job's own rule, in its words
    assert f"When the null trials stop: {stopping}." in notes["imputed_randomisation"] and "curtailment" in stopping
    meta = copy.deepcopy(payload.meta)
    for outcome in meta["outcomes"].values():
        # A spec naming no modifiers: BCF's spread alone (its own statistic label), Besag-Clifford's rule.
        outcome["evidence"].update(components=None, statistic_label=STATISTIC_LABELS["bcf_spread"])
    alone = re.search(r'<p class="note" id="test-null">(.*?)</p>', unescape(render_cohort_report(CohortPayload(meta, payload.parts))), re.S).group(1)
    assert "Besag" in alone and "Fisher" not in alone and "Besag" not in notes["imputed_randomisation"]
    # evidence.combination: bonferroni: each statistic with its own calibration, the smaller p-value doubled.
    meta = copy.deepcopy(payload.meta)
    for outcome in meta["outcomes"].values():
        named = outcome["evidence"]["components"]["prespecified_modifiers"]
        named["calibration"] = "a parametric bootstrap: every outcome drawn from the statistic's own fitted no-modification probit model"
        outcome["evidence"]["stopping"] = "each statistic's null values stop once 5 reach its observed value, at most 199"
    union = re.search(r'<p class="note" id="test-null">(.*?)</p>', unescape(render_cohort_report(CohortPayload(meta, payload.parts))), re.S).group(1)
    assert "each calibrated on its own" in union and "calibrated by a parametric bootstrap" in union and "doubled (Bonferroni)" in union
    assert "Fisher" not in union and "exact only when its probit model is the truth" in union
    for p in parts:
        assert f"(a) {p['bcf_spread']['p_value']:.3f}, (b) {p['prespecified_modifiers']['p_value']:.3f}" in union
    # evidence.combination: fisher_or_bootstrap: Fisher's test whole, or the modifiers by the bootstrap; the first outcome's
    # bootstrap failed (Fisher's test alone, said so).
    meta = copy.deepcopy(payload.meta)
    for index, outcome in enumerate(meta["outcomes"].values()):
        parts_here = outcome["evidence"]["components"]
        parts_here["fisher_combination"] = {"label": "Fisher's combination", "p_value": 0.0123, "calibration": "the null trials"}
        if index:
            parts_here["prespecified_modifiers_bootstrap"] = {
                **parts_here["prespecified_modifiers"], "p_value": 0.0046, "calibration": "a parametric bootstrap: every outcome drawn"
            }
    first, second = meta["outcomes"].values()  # the first outcome shown has no bootstrap: the note still describes the option
    either = re.search(r'<p class="note" id="test-null">(.*?)</p>', unescape(render_cohort_report(CohortPayload(meta, payload.parts))), re.S).group(1)
    assert "Two tests of it, each at half the level (Bonferroni)" in either and "calibrated by a parametric bootstrap" in either
    assert "Fisher combination" in either and "exact only when that probit model is the truth" in either
    assert f"when its null trials stop: {stopping}." in either
    assert f"{second['label']}: (a) {second['evidence']['components']['bcf_spread']['p_value']:.3f}" in either
    assert "test (1) 0.012, test (2) 0.005" in either
    assert f"{first['label']}: (a)" in either and "test (1) alone (the bootstrap could not be computed)" in either
    assert "tested on held-out patients" in notes["held_out"] and "the test's prespecified statistic" in notes["held_out"]
    assert "Forest that serves" not in notes["held_out"]  # from 2,000 patients the cross-validation chooses the served model
    assert notes["split_rate"].startswith("Sample-split RATE test") and "9,000" not in notes["split_rate"] and "5,000" in notes["split_rate"]
    assert len(set(notes.values())) == 3
