"""The compiled scoring plan gives the pyfunc model's answers: every candidate type, three data layouts, 10,000 patients.

The reference is the MLflow pyfunc path (``ResponderPyfunc.predict``: the
scikit-learn pipeline, the candidate's own ``predict_arms``, the ensemble's
refits or the posterior draws, the answer and label rule). The plan parses
patient dicts as the API receives them and must match it to 1e-9: both
probabilities, the benefit, its interval, both labels and their reasons, the input
warnings and the unusable cells; its explanations must be the candidate's own
contributions. Tree ensembles are checked both ways (flattened arrays for a few
patients, the libraries' own predict for batches) against each other.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import OTHER_SPEC, fast_config

from core.candidates import CANDIDATE_ORDER, FLOOR, BootstrapEnsemble, make_candidate
from core.config import LabelRule
from core.labelling import LabelPolicy
from core.runtime import arms as A
from core.runtime.artefact import TEXT_COLUMNS, Evidence, ResponderModel, ResponderPyfunc
from core.runtime.forests import concat_forests, flatten_lightgbm
from core.runtime.plan import ScoringPlan
from core.spec import load_spec, parse_spec
from features.pipeline import build_feature_pipeline, compile_pipeline, input_warnings, lab_issues
from training.simulate import simulate
from training.train import outcome_data

N_PATIENTS = 10_000
NUMBERS = ["p_response_treated", "p_response_control", "benefit", "benefit_lower", "benefit_upper"]


def _fibromyalgia():
    spec = load_spec()
    train = simulate("strong", 160, 8)
    patients = simulate("final", N_PATIENTS, 31)
    rng = np.random.default_rng(5)
    patients = patients.astype({c: object for c in ("crp", "il6", "ana", "rf", "esr")})
    n = len(patients)
    # What clinics send: missing values, report text, other units, values outside the training range, unusable labs.
    for column in ("crp", "il6", "bmi", "anti_sgc", "ana", "symptom_years", "fatigue_baseline"):
        patients.loc[rng.random(n) < 0.08, column] = None
    crp = pd.to_numeric(patients["crp"], errors="coerce")
    in_mg_dl = (rng.random(n) < 0.1) & crp.notna().to_numpy()
    patients["crp_unit"] = np.where(in_mg_dl, "mg/dL", None)
    patients.loc[in_mg_dl, "crp"] = (crp[in_mg_dl] / 10).round(4).astype(str)
    patients.loc[rng.random(n) < 0.05, "il6"] = "<1.5"
    patients.loc[rng.random(n) < 0.02, "rf"] = "NEG"
    patients.loc[rng.random(n) < 0.03, "ana"] = "1:1280"
    patients.loc[rng.random(n) < 0.02, "age"] = 89.0
    patients.loc[rng.random(n) < 0.005, "esr"] = "500"  # implausible: the patient's own error
    patients.loc[rng.random(n) < 0.003, "rf"] = "<0"  # a censored value that says nothing
    return spec, train, patients, "pain"


def _other(n: int, seed: int, *, labs: bool = True) -> pd.DataFrame:
    source = simulate("strong", n, seed)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "subject": [f"S-{i}" for i in range(n)],
            "group": np.where(source["arm"] == "naltrexone", "active", "sham"),
            "years": source["age"],
            "site": rng.choice(["north", "south"], n),
            "wb_0": (100 - 10 * source["pain_baseline"]).round(),
            "wb_26": (100 - 10 * source["pain_week12"]).round(),
        }
    )
    if labs:
        crp = pd.to_numeric(source["crp"].astype(str).str.lstrip("<"), errors="coerce") / 10
        frame["hs_crp"] = crp.round(3).astype(str).where(crp.notna(), None)
        frame["interleukin_6"] = source["il6"]
        frame["ana_titre"] = source["ana"]
    return frame


def _other_layout():
    spec = parse_spec(OTHER_SPEC)
    patients = _other(N_PATIENTS, 3)
    patients.loc[np.random.default_rng(1).random(N_PATIENTS) < 0.1, "site"] = None
    return spec, _other(160, 41), patients, "wellbeing"


STREP = {"gender": ["F", "M"], "baseline_condition": ["1_Good", "2_Fair", "3_Poor"], "baseline_temp": ["1_98-98.9F", "2_99-99.9F", "3_100-100.9F", "4_100F+"],
         "baseline_esr": ["1_0-10", "2_11-20", "3_21-50", "4_51+"], "baseline_cavitation": ["no", "yes"]}  # fmt: skip


def _strep(n: int, seed: int, train: bool) -> pd.DataFrame:
    """Patients in the strep-tb layout (no labs, categorical covariates only); the outcome depends on condition and arm."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)]})
    for column, levels in STREP.items():
        frame[column] = rng.choice(levels, n)
    if train:
        frame["arm"] = rng.choice(["Streptomycin", "Control"], n)
        good = (frame["baseline_condition"] == "1_Good").to_numpy()
        p = 0.25 + 0.3 * (frame["arm"] == "Streptomycin").to_numpy() * (0.5 + good)
        frame["rad_num"] = np.where(rng.random(n) < p, rng.choice([5, 6], n), rng.choice([1, 2, 3, 4], n))
    else:
        frame.loc[rng.random(n) < 0.1, "baseline_temp"] = None  # imputed with the training mode
    return frame


def _strep_layout():
    spec = load_spec("strep-tb")
    train = _strep(200, 2, True)
    train.loc[train["baseline_esr"] == "4_51+", "baseline_esr"] = "3_21-50"  # a level training never saw
    return spec, train, _strep(N_PATIENTS, 9, False), "radiologic"


LAYOUTS = {"fibromyalgia": _fibromyalgia, "other-trial": _other_layout, "strep-tb (no labs)": _strep_layout}


def _models(spec, train, outcome) -> dict[str, ResponderModel]:
    """One served model per candidate type, with refits or draws and a per-patient (conditional) label rule."""
    config = fast_config()
    data, _ = outcome_data(train, spec, outcome, config)
    pipeline = build_feature_pipeline(spec).fit(data.X)
    F = pipeline.transform(data.X)
    evidence = Evidence(True, True, 0.01, 0.02, 0.1, 0.05, 19, "evidence of effect modification")
    models = {}
    for name in CANDIDATE_ORDER:
        candidate = make_candidate(name, config.candidates, data.treated_fraction, 7, final=True).fit(F, data.t, data.y)
        ensemble = None if not candidate.needs_refits else BootstrapEnsemble(candidate, 8, 0.95, 7).fit(F, data.t, data.y)
        benefit = candidate.predict_benefit(F)
        rule = LabelRule(unlikely_upper_below=float(np.quantile(benefit, 0.6))).model_dump()  # so that unlikely occurs
        kind = candidate.interval_kind
        policy = LabelPolicy("conditional", rule, "There is evidence.", "uncertain", "The trial population.", "Why.", 0.95, kind)
        # A calibration allowance (a conditional answer on a large trial) on every model but the floor's.
        allowance = 0.0 if name == FLOOR else 0.03
        models[name] = ResponderModel(spec, outcome, pipeline, candidate, ensemble, policy, evidence, calibration_allowance=allowance)
    return models


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout(request):
    spec, train, patients, outcome = LAYOUTS[request.param]()
    return {"name": request.param, "spec": spec, "patients": patients, "models": _models(spec, train, outcome)}


def _requests(spec, patients: pd.DataFrame) -> list[dict]:
    """The patients as the API receives them (validated dicts: every field present, None when not sent)."""
    from features.catalog import load_catalog
    from serving.schemas import patient_model

    fields = list(patient_model(spec, load_catalog()).model_fields)
    frame = patients.reindex(columns=fields).astype(object)
    return frame.where(frame.notna(), None).to_dict(orient="records")


def test_plan_equals_the_pyfunc_model_for_every_candidate_type(layout):
    spec, patients = layout["spec"], layout["patients"]
    records = _requests(spec, patients)
    first = next(iter(layout["models"].values()))
    raw = pd.DataFrame(records)
    expected_issues = {(int(r), i.column) for r, found in lab_issues(first.pipeline, raw).items() for i in found}
    good = [i for i in range(len(raw)) if i not in {r for r, _ in expected_issues}]
    reference_rows = raw.iloc[good].reset_index(drop=True)
    expected_warnings = input_warnings(first.pipeline, spec, reference_rows)
    assert len(good) > 0.95 * len(raw)
    for name, model in layout["models"].items():
        plan = ScoringPlan({"o": model})
        parsed, issues = plan.parse(records)
        assert {(r, i.column) for r, found in issues.items() for i in found} == expected_issues, name
        batch = parsed["o"].rows(good)
        got = plan.plans["o"].predict(batch).frame()
        pyfunc = ResponderPyfunc()
        pyfunc.model = model
        expected = pyfunc.predict(None, reference_rows)
        np.testing.assert_allclose(got[NUMBERS].to_numpy(), expected[NUMBERS].to_numpy(), rtol=0, atol=1e-9, err_msg=f"{layout['name']}: {name}")
        for column in TEXT_COLUMNS:
            assert got[column].tolist() == expected[column].tolist(), (name, column)
        assert plan.warnings({"o": batch}) == expected_warnings, name
        # The features themselves: the pipeline's transform, cell by cell.
        _, F = plan.plans["o"].matrix(batch)
        np.testing.assert_allclose(F, model.pipeline.transform(reference_rows)[model.candidate.features_].to_numpy(float), rtol=0, atol=1e-12)
        # One patient at a time (the flattened trees, not the libraries' batch predict).
        for k in range(0, 400, 20):
            one = plan.plans["o"].predict(parsed["o"].rows([good[k]])).frame()
            np.testing.assert_allclose(one[NUMBERS].to_numpy()[0], expected[NUMBERS].to_numpy()[k], rtol=0, atol=1e-9, err_msg=name)
            assert all(one[c].iat[0] == expected[c].iat[k] for c in TEXT_COLUMNS), name
        # Each patient label is read from that patient's own interval.
        assert ((expected["patient_label"] == "likely_benefit") == (expected["benefit_lower"] > 0)).all(), name
    assert any(w for w in expected_warnings), "the patients should exercise the input warnings"


def test_explanations_are_the_candidates_own_contributions(layout):
    spec, patients = layout["spec"], layout["patients"]
    records = _requests(spec, patients.head(120))
    for model in layout["models"].values():
        plan = ScoringPlan({"o": model})
        parsed, issues = plan.parse(records)
        good = [i for i in range(len(records)) if i not in issues]
        explained = plan.plans["o"].explain(parsed["o"].rows(good))
        rows = pd.DataFrame(records).iloc[good].reset_index(drop=True)
        reference = model.candidate.explain(model.pipeline.transform(rows))  # the pandas path, with its own checks
        predicted = model.predict(rows)
        for k, patient in enumerate(explained):
            for output, contributions, column in (
                (patient.benefit, reference.benefit, "benefit"),
                (patient.p_response_treated, reference.p_treated, "p_response_treated"),
            ):
                assert output.prediction == pytest.approx(predicted[column].iat[k], abs=1e-9)
                assert output.base_value == pytest.approx(contributions.base[k], abs=1e-9)
                np.testing.assert_allclose(list(output.features.values()), contributions.values[k], rtol=0, atol=1e-9)
                assert output.base_value + sum(d.contribution for d in output.drivers) == pytest.approx(output.prediction, abs=1e-9)
        # The API's ``top``: the same largest drivers, word for word, and only those.
        shown = plan.plans["o"].explain(parsed["o"].rows(good), top=3)
        for full, short in zip(explained, shown, strict=True):
            for target in ("benefit", "p_response_treated", "p_response_control"):
                every, top = getattr(full, target), getattr(short, target)
                assert [d.to_dict() for d in top.drivers] == [d.to_dict() for d in every.drivers[:3]]
                assert (top.prediction, top.base_value, top.features) == (every.prediction, every.base_value, every.features)


def test_feature_plan_equals_the_pipeline_for_unknown_and_missing_values(spec, final_99):
    pipeline = build_feature_pipeline(spec).fit(final_99)
    plan = compile_pipeline(pipeline, spec)
    rows = final_99.head(40).astype(object).copy()
    rows.loc[:5, "sex"] = None
    rows.loc[6:9, ["crp", "il6", "ana"]] = None
    rows.loc[10:12, "crp"] = ["<0.3", "1,5", ">300"]
    rows["crp_unit"] = None
    rows.loc[13, ["crp", "crp_unit"]] = ["1.2", "mg/dL"]
    columns = {c: rows[c].to_numpy(dtype=object) for c in plan.parser.input_columns() if c in rows.columns}
    parsed, issues = plan.parse(columns, len(rows))
    assert not issues
    F = plan.features(plan.impute(parsed, len(rows)), len(rows))
    expected = pipeline.transform(rows)
    assert plan.names == list(expected.columns)
    np.testing.assert_allclose(F, expected.to_numpy(float), rtol=0, atol=1e-12)
    imputed = plan.impute(parsed, len(rows))
    assert all(isinstance(v, np.ndarray) for v in imputed.values())


def test_flattened_lightgbm_follows_its_missing_value_rules():
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    X[rng.random(X.shape) < 0.15] = np.nan  # missing_type NaN on these splits
    y = (np.nan_to_num(X[:, 0]) + 0.5 * np.nan_to_num(X[:, 1]) + rng.normal(size=400) > 0).astype(int)
    for params in ({}, {"zero_as_missing": True}, {"use_missing": False}):
        booster = lgb.train({"objective": "binary", "num_leaves": 6, "verbose": -1, "min_data_in_leaf": 5, **params}, lgb.Dataset(X, y), 25)
        arrays, kind, sigmoid = flatten_lightgbm(booster)
        test = rng.normal(size=(300, 4))
        test[rng.random(test.shape) < 0.2] = np.nan
        test[rng.random(test.shape) < 0.1] = 0.0
        raw = arrays.predict(test)[:, 0]
        np.testing.assert_allclose(raw, booster.predict(test, raw_score=True), rtol=0, atol=1e-12, err_msg=str(params))
        np.testing.assert_allclose(1 / (1 + np.exp(-sigmoid * raw)), booster.predict(test), rtol=0, atol=1e-12)
        assert kind == "binary"


def test_tree_paths_agree_with_each_other(spec, final_99, monkeypatch):
    """Flattened arrays (a few patients) and the libraries' own predict (batches) give the same numbers."""
    config = fast_config()
    data, _ = outcome_data(simulate("strong", 160, 8), spec, "pain", config)
    pipeline = build_feature_pipeline(spec).fit(data.X)
    F = pipeline.transform(data.X)
    X = pipeline.transform(final_99)[list(F.columns)].to_numpy(float)
    for name in ("t_learner", "dr_learner", "bcf"):
        candidate = make_candidate(name, config.candidates, 0.5, 3, final=True).fit(F, data.t, data.y)
        ensemble = None if not candidate.needs_refits else BootstrapEnsemble(candidate, 6, 0.95, 3).fit(F, data.t, data.y)
        plan = A.compile_arms(candidate, ensemble, 0.95)
        if name == "bcf":
            mu, tau = plan.mu.predict(X) + plan.mu_offset, plan.tau.predict(X) + plan.tau_offset
            library_mu, library_tau = candidate.midpoint_draws(X)  # the forests themselves (mu at the coding midpoint)
            np.testing.assert_allclose(mu, library_mu, rtol=0, atol=1e-12)
            np.testing.assert_allclose(tau, library_tau, rtol=0, atol=1e-12)
            # The compiled walk (what the plan serves): the library's numbers, a row's alone or in any batch, any threads.
            compiled = plan.mu.predict_compiled(X) + plan.mu_offset
            np.testing.assert_allclose(compiled, library_mu, rtol=0, atol=1e-12)
            np.testing.assert_allclose(plan.tau.predict_compiled(X) + plan.tau_offset, library_tau, rtol=0, atol=1e-12)
            many = np.vstack([X] * 40)  # enough rows to split over two threads
            assert np.array_equal(plan.mu.predict_compiled(many, threads=2)[: len(X)], plan.mu.predict_compiled(X))
            assert np.array_equal(np.vstack([plan.mu.predict_compiled(X[[i]]) for i in range(5)]), plan.mu.predict_compiled(X)[:5])
        elif name == "t_learner":
            with pytest.raises(ValueError, match="without missing-value rules"):
                plan.forest.predict_compiled(X)  # LightGBM's NaN and zero rules are not in the compiled walk
        if name != "bcf":
            arrays = plan.forest.predict(X)
            library = np.column_stack([b.predict(X, raw_score=True) for b in plan.boosters])
            np.testing.assert_allclose(arrays, library, rtol=0, atol=1e-12)
        monkeypatch.setattr(A, "ARRAY_CELLS", 10**12)
        arrays_path = np.column_stack(plan.predict(X))
        one = np.vstack([np.column_stack(plan.predict(X[[i]])) for i in range(len(X))])
        monkeypatch.setattr(A, "ARRAY_CELLS", 0)
        batch = np.column_stack(plan.predict(X))  # the libraries' own predict
        np.testing.assert_allclose(arrays_path, batch, rtol=0, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(one, batch, rtol=0, atol=1e-12, err_msg=name)
        p1, p0 = candidate.predict_arms(X)
        np.testing.assert_allclose(batch[:, 0], p1, rtol=0, atol=1e-12)
        np.testing.assert_allclose(batch[:, 1], p0, rtol=0, atol=1e-12)


def test_bcf_explanation_trees_cover_each_training_row_once(spec, final_99):
    """Path-dependent TreeSHAP weighs a node's children by their covers: each must count the training rows through it."""
    config = fast_config()
    data, _ = outcome_data(final_99, spec, "pain", config)
    F = build_feature_pipeline(spec).fit_transform(data.X)
    candidate = make_candidate("bcf", config.candidates, 0.5, 2, final=True).fit(F, data.t, data.y)
    X = F.to_numpy(float)
    mu = candidate.flat_forests()["mu"]
    trees = mu.shap_trees(X, np.array([0, mu.n_draws - 1]), 1.0)
    deep = 0
    for tree in trees:
        left, right = tree["children_left"], tree["children_right"]
        through = np.zeros(len(left))
        for row in X:  # each row's path, root to leaf
            node = 0
            through[node] += 1
            while left[node] >= 0:
                node = left[node] if row[tree["features"][node]] <= tree["thresholds"][node] else right[node]
                through[node] += 1
        reached = through > 0
        np.testing.assert_allclose(tree["node_sample_weight"][reached], through[reached], rtol=0, atol=1e-4)
        deep += int((left >= 0).sum() > 1)
    assert deep > 0  # some trees have leaves at different depths (where counting rows at every level went wrong)


def test_served_bcf_explanation_covers_read_as_many_patients_as_the_forests_were_fitted_on(spec, final_99):
    """Above BCF's max_patients the covers come from a seeded sample of that size, not from every trial patient."""
    config = fast_config(candidates={"bcf": {"max_patients": 60}})
    data, _ = outcome_data(final_99, spec, "pain", config)
    F = build_feature_pipeline(spec).fit_transform(data.X)
    covers = []
    for _ in range(2):
        candidate = make_candidate("bcf", config.candidates, 0.5, 2, final=True).fit(F, data.t, data.y)
        assert candidate.n_fitted_ == 60
        candidate.thin_for_serving(10, F)
        trees = candidate._trees()["mu"]
        covers.append(np.array([tree["node_sample_weight"][0] for tree in trees]))
    np.testing.assert_allclose(covers[0], 60, atol=1e-3)  # every root: 60 rows (plus the leaves' tiny weights)
    assert np.array_equal(covers[0], covers[1])


def test_concatenated_forests_keep_each_booster_apart(spec, final_99):
    config = fast_config()
    data, _ = outcome_data(final_99, spec, "pain", config)
    pipeline = build_feature_pipeline(spec).fit(data.X)
    F = pipeline.transform(data.X)
    candidate = make_candidate("t_learner", config.candidates, 0.5, 1).fit(F, data.t, data.y)
    boosters = [candidate.treated_.booster_, candidate.control_.booster_]
    forest = concat_forests([flatten_lightgbm(b)[0] for b in boosters])
    X = F.to_numpy(float)
    np.testing.assert_allclose(forest.predict(X), np.column_stack([b.predict(X, raw_score=True) for b in boosters]), rtol=0, atol=1e-12)


# `responders predict` to a table: column by column, the API's answers ------------------------------------------------
def _scorer(spec, models: dict[str, ResponderModel]):
    from serving import schemas as S
    from serving.scoring import Champion, Scorer

    refs = {name: S.ModelRef(registered_model=f"m-{name}", version="1", training_run_id="r", candidate=name) for name in models}
    return Scorer(spec, {name: Champion(name, model, refs[name]) for name, model in models.items()})


def _awkward(spec, patients: pd.DataFrame) -> pd.DataFrame:
    """The patients with rows the request model or the lab parser refuses, and rows it accepts in another form."""
    frame = patients.head(300).astype(object).copy()
    numeric = [c for c, s in spec.covariates.items() if s.kind == "numeric"] + spec.baseline_score_columns()
    categorical = [c for c, s in spec.covariates.items() if s.kind == "categorical"]
    frame.loc[0, spec.id_column] = " padded"
    frame.loc[1, spec.id_column] = None  # no id: named by its row
    frame.loc[250, spec.id_column] = None  # of the file, not of a batch
    if numeric:
        frame.loc[2, numeric[0]] = "abc"
        frame.loc[3, numeric[0]] = 1e9
        frame.loc[6, numeric[-1]] = "  "  # blank: missing
    required = [c for c in spec.required_columns() if c in frame.columns and c != spec.id_column and c in patient_fields(spec)]
    frame.loc[5, required[0]] = None
    frame.loc[4, categorical[0]] = "zz"
    frame.loc[12, categorical[-1]] = None
    if spec.labs:
        lab = next(iter(spec.labs.values())).column
        frame.loc[7, lab] = "x" * 40
        frame.loc[8, lab] = "<0"
        frame.loc[9, lab] = " 3,5 "
        if f"{lab}_unit" in patient_fields(spec):
            frame.loc[10, f"{lab}_unit"] = "furlongs"
            frame.loc[11, f"{lab}_unit"] = "y" * 20
    return frame


def patient_fields(spec) -> list[str]:
    from features.catalog import load_catalog
    from serving.schemas import patient_model

    return list(patient_model(spec, load_catalog()).model_fields)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_file_scored_column_by_column_gets_the_apis_answers(layout, tmp_path, suffix, monkeypatch):
    import json

    from helpers import score_rows

    from serving import batch
    from serving.batch import read_columns, score_table, score_table_in_blocks, write_table
    from serving.scoring import read_patients

    spec = layout["spec"]
    models = {name: layout["models"][name] for name in ("arm_only", "risk_model", "bcf")}
    scorer = _scorer(spec, models)
    frame = _awkward(spec, layout["patients"])
    path = tmp_path / f"patients{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.astype(str).where(frame.notna(), None).to_parquet(path, index=False)
    columns, n = read_columns(path, spec)
    table = score_table(scorer, columns, n)
    blocks = score_table_in_blocks(scorer, columns, n, block=97)  # what `responders predict` runs: the same rows in blocks
    pd.testing.assert_frame_equal(blocks, table)
    scorer.batch_threads(2)  # and on two cores: two blocks at a time, a BCF batch's rows split over two threads
    monkeypatch.setattr(A, "PARALLEL_ROWS", 16)
    pd.testing.assert_frame_equal(score_table_in_blocks(scorer, columns, n, block=97, workers=2), table)
    scorer.batch_threads(1)
    response = score_rows(scorer, read_patients(path, spec), chunk=97)  # what POST /predict answers for the same rows
    api = response.results
    assert len(table) == len(api) == len(frame)
    failed = 0
    for i, result in enumerate(api):
        row = table.iloc[i]
        assert row["patient_id"] == result.patient_id
        errors = [e.model_dump(mode="json") for e in result.errors]
        assert (json.loads(row["errors"]) if isinstance(row["errors"], str) else []) == errors, (i, row["errors"], errors)
        if result.predictions is None:
            failed += 1
            assert all(np.isnan(row[f"{o}_{f}"]) for o in models for f in NUMBERS) and pd.isna(row["warnings"])
            continue
        assert json.loads(row["warnings"]) == [w.model_dump(mode="json") for w in result.warnings], i
        for outcome, prediction in result.predictions.items():
            got = [row[f"{outcome}_{f}"] for f in NUMBERS]
            want = [prediction.p_response_treated, prediction.p_response_control, prediction.benefit,
                    prediction.benefit_interval.lower, prediction.benefit_interval.upper]  # fmt: skip
            assert got == want, (i, outcome)  # the same floats, not merely close
            assert row[f"{outcome}_patient_label"] == prediction.patient_label
            assert row[f"{outcome}_patient_label_reason"] == prediction.patient_label_reason
            assert row[f"{outcome}_answer"] == prediction.answer
    assert failed >= (8 if spec.labs else 3)  # every awkward row the model or the parser refuses
    for out in (tmp_path / "scores.parquet", tmp_path / "scores.jsonl"):
        write_table(table, out, scorer)
    # `--out FILE.json` (and standard output): the response's JSON as the per-row path wrote it, byte for byte; in pieces
    # of 37 patients here (20,000 in the command), so that patients with errors fall at a piece's ends too.
    monkeypatch.setattr(batch, "JSONL_CHUNK", 37)
    write_table(table, tmp_path / "scores.json", scorer)
    assert (tmp_path / "scores.json").read_text(encoding="utf-8") == response.model_dump_json(indent=2)
    empty = b"".join(batch.predict_json_chunks(table.iloc[:0], scorer)).decode()
    assert empty == type(response)(results=[], n_scored=0, n_failed=0, models=scorer.refs, simulated_training_data=scorer.simulated).model_dump_json(indent=2)
    back = pd.read_parquet(tmp_path / "scores.parquet")
    assert list(back.columns) == list(table.columns)
    for column in table.columns:
        assert [None if pd.isna(v) else v for v in back[column]] == [None if pd.isna(v) else v for v in table[column]], column
    lines = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert len(lines) == len(table)
    for line, (_, row) in zip(lines, table.iterrows(), strict=True):
        for key, value in line.items():
            expected = row[key]
            if key in ("errors", "warnings") and isinstance(expected, str):
                assert value == json.loads(expected), key  # nested lists in a line, JSON text in the Parquet file
            elif expected is pd.NA or (isinstance(expected, float) and np.isnan(expected)):  # a missing text or number
                assert value is None
            else:
                assert value == expected, key  # floats read back bit for bit


def test_a_stored_scoring_plan_answers_as_the_artefact_and_needs_no_scikit_learn(layout, tmp_path):
    """The compiled model training stores beside each artefact (what `responders predict` loads): the same table,
    bit for bit, for every candidate type after a round trip through its file; in a fresh process an arm-only or
    BCF champion's file is loaded and scores a file without importing scikit-learn or LightGBM."""
    import subprocess
    import sys

    import joblib

    from core.runtime.compiled import compile_model, load_scoring_model
    from serving.batch import read_columns, score_table

    spec = layout["spec"]
    frame = _awkward(spec, layout["patients"])
    path = tmp_path / "patients.csv"
    frame.to_csv(path, index=False)
    columns, n = read_columns(path, spec)
    files = {}
    for name, model in layout["models"].items():
        files[name] = tmp_path / f"{name}.joblib"
        joblib.dump(compile_model(model), files[name], compress=3)
        expected = score_table(_scorer(spec, {name: model}), columns, n)
        stored = load_scoring_model(files[name])
        assert stored.candidate_name == name and stored.feature_info() == model.feature_info()
        pd.testing.assert_frame_equal(score_table(_scorer(spec, {name: stored}), columns, n), expected)
        # /metadata reports the allowance the stored plan adds (the artefact's).
        as_outcome = _scorer(spec, {stored.outcome: stored}).metadata().outcomes[stored.outcome]
        assert as_outcome.calibration_allowance == model.calibration_allowance
        if name == "bcf":
            with pytest.raises(AttributeError, match="no candidate to explain with"):
                stored.plan().explain(stored.plan().parse_frame(layout["patients"].head(2)))
    with pytest.raises(TypeError, match="not a stored scoring plan"):
        load_scoring_model(_dumped(layout["models"]["arm_only"], tmp_path / "artefact.joblib"))
    code = (
        "import sys; from core.runtime.compiled import load_scoring_model; from serving import schemas as S; "
        "from serving.scoring import Champion, Scorer; from serving.batch import read_columns, score_table; "
        "models = {f.split('=')[0]: load_scoring_model(f.split('=')[1]) for f in sys.argv[3:]}; spec = next(iter(models.values())).spec; "
        "scorer = Scorer(spec, {k: Champion(k, m, S.ModelRef(registered_model=f'm-{k}', version='1', training_run_id='r', candidate=k)) "
        "for k, m in models.items()}); score_table(scorer, *read_columns(sys.argv[1], spec)).to_parquet(sys.argv[2]); "
        "print(sorted(m for m in ('sklearn', 'lightgbm', 'mlflow', 'shap') if m in sys.modules))"
    )
    out = tmp_path / "stored.parquet"
    names = ["arm_only", "bcf"]
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), str(out), *(f"{k}={files[k]}" for k in names)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"
    expected = score_table(_scorer(spec, {k: layout["models"][k] for k in names}), columns, n)
    expected.to_parquet(tmp_path / "expected.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(tmp_path / "expected.parquet"))


def _dumped(model, path):
    import joblib

    joblib.dump(model, path)
    return path


def test_a_json_file_scored_to_a_table_names_the_same_problems_as_the_api(layout, tmp_path):
    """JSON rows keep what was sent: an unknown key, a missing required field or a number too large for a float
    are the request model's errors, as over HTTP; the other rows get the API's numbers."""
    import json

    from helpers import score_rows

    from serving.batch import predict_json_chunks, score_table, score_table_in_blocks
    from serving.scoring import read_patients

    spec = layout["spec"]
    scorer = _scorer(spec, {name: layout["models"][name] for name in ("arm_only", "bcf")})
    frame = layout["patients"].head(40).astype(object)
    rows = [{k: v for k, v in row.items() if k in patient_fields(spec) and not pd.isna(v)} for row in frame.to_dict(orient="records")]
    rows[0]["favourite_colour"] = "blue"
    required = [c for c in spec.required_columns() if c in rows[1] and c != spec.id_column]
    del rows[1][required[0]]
    if spec.labs:
        rows[2][next(iter(spec.labs.values())).column] = 10**400
    path = tmp_path / "patients.json"
    path.write_text(json.dumps({"patients": rows}))
    given = read_patients(path, spec)
    columns = {c: [r.get(c) for r in given] for c in dict.fromkeys(k for r in given for k in r)}
    table = score_table(scorer, columns, len(given), given.__getitem__)
    pd.testing.assert_frame_equal(score_table_in_blocks(scorer, columns, len(given), block=7, row=given.__getitem__), table)
    response = score_rows(scorer, given)
    api = response.results
    assert b"".join(predict_json_chunks(table, scorer)).decode() == response.model_dump_json(indent=2)  # byte for byte
    from core.labelling import Wording

    scorer._fixed["bcf"]["wording"] = Wording(event="Relapse")  # told as an event to prevent: risks and the NNT per patient
    text = b"".join(predict_json_chunks(table, scorer)).decode()
    assert text == score_rows(scorer, given).model_dump_json(indent=2) and text.count('"number_needed"') == response.n_scored
    for i, result in enumerate(api):
        row = table.iloc[i]
        errors = [e.model_dump(mode="json") for e in result.errors]
        assert (json.loads(row["errors"]) if isinstance(row["errors"], str) else []) == errors, i
        if result.predictions is not None:
            assert [row[f"bcf_{f}"] for f in NUMBERS[:3]] == [getattr(result.predictions["bcf"], f) for f in NUMBERS[:3]]
    assert table["errors"].notna().sum() >= (3 if spec.labs else 2)
