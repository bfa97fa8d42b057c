"""``responders predict`` to a table: the array paths it takes give exactly what the per-cell and per-tree paths give.

- the compiled forest walk (per-feature step tables for one-feature trees,
  leaf-only trees summed once, the rest walked) against the vectorised level
  walk, on forests with stumps, leaves, deep trees, ties and NaN;
- the compiled row quantiles against ``np.quantile``, bit for bit;
- Arrow's reading of number text against Python's ``float``;
- the command itself on a real MLflow store: CSV and Parquet in, Parquet and
  JSON lines out, the same numbers as ``POST /predict``'s scorer.

The whole-table comparison with the API (every number, label, warning and
error) is tests/test_scoring_plan.py::test_a_file_scored_column_by_column_gets_the_apis_answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.runtime.forests import TreeArrays, _compile_walk, row_quantiles

REPO = Path(__file__).resolve().parents[1]


def _forest(rng: np.random.Generator, slots: int, per_slot: int, d: int, cuts: np.ndarray) -> TreeArrays:
    """Random trees as stochtree lays them out: a third single leaves, a third stumps, a third up to depth 3 on several features."""
    feature, threshold, left, right, value, roots = [], [], [], [], [], []

    def grow(depth: int, features: list[int]) -> int:
        index = len(feature)
        feature.append(-1), threshold.append(0.0), left.append(-1), right.append(-1), value.append(0.0)
        if depth == 0:
            value[index] = float(rng.normal())
            return index
        feature[index] = int(rng.choice(features))
        threshold[index] = float(rng.choice(cuts))  # shared cut points: thresholds repeat across trees, as in BCF
        left[index] = grow(depth - 1 if rng.random() < 0.8 else 0, features)
        right[index] = grow(depth - 1 if rng.random() < 0.8 else 0, features)
        return index

    for _ in range(slots * per_slot):
        roots.append(len(feature))
        kind = rng.integers(3)
        if kind == 0:
            grow(0, [0])
        elif kind == 1:
            grow(int(rng.integers(1, 3)), [int(rng.integers(d))])  # one feature, one or two levels
        else:
            grow(3, list(rng.choice(d, size=2, replace=False)))
    arrays = TreeArrays(
        feature=np.asarray(feature, dtype=np.intp),
        threshold=np.asarray(threshold),
        left=np.asarray(left, dtype=np.intp),
        right=np.asarray(right, dtype=np.intp),
        value=np.asarray(value),
        roots=np.asarray(roots, dtype=np.intp),
        slot_starts=np.arange(slots, dtype=np.intp) * per_slot,
        max_depth=3,
        n_draws=slots,
        trees_per_draw=per_slot,
    )
    return arrays


@pytest.mark.parametrize("share", [0.0, 0.25, 1e9])  # every one-feature tree as a table, the default, none
def test_the_compiled_walk_with_step_tables_gives_the_trees_sums(share):
    rng = np.random.default_rng(7)
    d = 6
    cuts = np.round(rng.normal(size=12), 2)
    forest = _forest(rng, slots=40, per_slot=30, d=d, cuts=cuts)
    forest._compiled = _compile_walk(forest, share)
    X = rng.normal(size=(700, d))
    X[::7, 1] = np.nan  # NaN goes right at every node, and past every threshold in a table
    X[3::11, 2] = rng.choice(cuts, size=len(X[3::11]))  # values on a threshold go left
    X[5, :] = np.inf
    want = forest.predict(X)  # the vectorised level walk, tree by tree
    got = forest.predict_compiled(X)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # A patient gets the same floats alone, in any batch and over threads.
    alone = np.vstack([forest.predict_compiled(X[[i]]) for i in range(0, 700, 37)])
    assert np.array_equal(alone, got[::37])
    assert np.array_equal(forest.predict_compiled(X, threads=2), got)
    if share == 0.0:
        assert len(forest._compiled.roots) < len(forest.roots) / 2 and len(forest._compiled.table_features) == d


def test_a_bcf_champions_walk_splits_its_trees_into_constants_tables_and_walks(layout_bcf):
    """On a fitted BCF: the compiled walk equals the level walk, with most mu trees looked up rather than walked."""
    arms, F = layout_bcf
    for forest in (arms.mu, arms.tau):
        np.testing.assert_allclose(forest.predict_compiled(F), forest.predict(F), rtol=0, atol=1e-12)
    assert len(_compile_walk(arms.mu).roots) < len(arms.mu.roots)


@pytest.fixture(scope="module")
def layout_bcf():
    from helpers import fast_config

    from core.candidates import make_candidate
    from core.runtime.arms import PosteriorForestArms
    from core.spec import load_spec
    from features.pipeline import build_feature_pipeline
    from training.simulate import simulate
    from training.train import outcome_data

    spec, config = load_spec(), fast_config()
    data, _ = outcome_data(simulate("strong", 160, 8), spec, "pain", config)
    F = build_feature_pipeline(spec).fit(data.X).transform(data.X)
    candidate = make_candidate("bcf", config.candidates, data.treated_fraction, 7, final=True).fit(F, data.t, data.y)
    return PosteriorForestArms(candidate, 0.95), np.asarray(F, dtype=float)


@pytest.mark.parametrize("draws", [1, 2, 3, 7, 50, 200, 1000])
def test_row_quantiles_are_np_quantile_bit_for_bit(draws):
    rng = np.random.default_rng(draws)
    values = rng.normal(size=(400, draws)) * rng.random((400, 1))
    values[5, draws // 2] = np.nan
    values[7] = 0.125  # ties
    values[9, : (draws + 1) // 2] = -0.0
    for level in (0.95, 0.9, 0.8, 0.5, 0.99, 0.6827):
        tail = (1 - level) / 2
        want = np.quantile(values, [tail, 1 - tail], axis=1)
        got = row_quantiles(values, [tail, 1 - tail])
        assert np.array_equal(want, got, equal_nan=True), (draws, level)
        assert np.array_equal(np.signbit(want), np.signbit(got))


def test_a_few_thousand_rows_do_not_load_the_compiled_quantiles():
    """Loading numba cost 0.3-0.5 s of `responders predict`'s start for the floor's one-row interval, and 0.7 s of the
    default training job's checks of its 99 patients: NumPy does those; a large block, or a service's warm-up, loads it."""
    code = (
        "import sys, numpy as np\n"
        "from core.runtime.forests import COMPILED_QUANTILE_CELLS, row_quantiles\n"
        "x = np.random.default_rng(1).normal(size=(COMPILED_QUANTILE_CELLS // 1000 - 1, 1000))\n"
        "assert np.array_equal(row_quantiles(x, [0.025, 0.975]), np.quantile(x, [0.025, 0.975], axis=1))\n"
        "assert 'numba' not in sys.modules\n"
        "assert np.array_equal(row_quantiles(np.vstack([x, x]), [0.025, 0.975]), np.quantile(np.vstack([x, x]), [0.025, 0.975], axis=1))\n"
        "assert 'numba' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_arrow_reads_number_text_as_python_does():
    from features.labs import _plain_number, plain_text_numbers

    rng = np.random.default_rng(3)
    numbers = [f"{x:.{k}f}" for x, k in zip(rng.lognormal(0, 3, 3000), rng.integers(0, 12, 3000), strict=True)]
    numbers += [f"{x:.6e}" for x in rng.lognormal(0, 20, 500)] + ["1e400", "1e-400", ".5", "0,25", "007", "2.675", "1E5"]
    odd = [" 3.5", "3.5 ", "3.5\n", "-1", "+2", "<10", "1:40", "negative", "", "  ", "NA", "3,5,1", "1e", "١٢", "inf", "nan"]
    cells = np.asarray(numbers + odd + [None, float("nan")] * 5, dtype=object)
    mask, got = plain_text_numbers(cells)
    for cell, taken, number in zip(cells, mask, got, strict=True):
        if cell is None or isinstance(cell, float):
            assert taken and np.isnan(number)  # missing
        elif taken:
            assert number == _plain_number(cell) or (np.isinf(number) and np.isinf(_plain_number(cell))), cell
        else:
            assert cell in odd, cell  # left to the per-cell parser, which has the message
    assert mask[: len(numbers)].all()
    assert plain_text_numbers(np.asarray(["1.5", 2.0] * 200, dtype=object)) is None  # not all text: per cell
    assert plain_text_numbers(np.asarray([b"1.5"] * 300, dtype=object)) is None  # bytes are not text


def test_read_columns_keeps_number_fields_as_floats_and_odd_cells_as_given(tmp_path):
    from core.spec import load_spec
    from serving.batch import read_columns
    from training.simulate import simulate

    spec = load_spec()
    frame = simulate("final", 400, 2).astype({"bmi": object, "age": object})
    frame.loc[3, "bmi"] = "22,5"
    frame.loc[4, "bmi"] = None
    frame.loc[5, "age"] = "forty"  # text a number field cannot take: the column is read cell by cell
    path = tmp_path / "patients.csv"
    frame.to_csv(path, index=False)
    columns, n = read_columns(path, spec)
    assert n == 400 and "arm" not in columns and not any(c.startswith("true_") for c in columns)
    assert columns["bmi"].dtype == np.float64 and columns["bmi"][3] == 22.5 and np.isnan(columns["bmi"][4])
    assert columns["age"].dtype == object and columns["age"][5] == "forty" and columns["age"][6] == float(frame.loc[6, "age"])


def test_json_lines_write_floats_and_text_as_python_does():
    """Arrow's float and string texts in the JSON-lines writer equal ``repr`` and ``json.dumps`` cell for cell."""
    import pyarrow as pa

    from serving.batch import float_texts, json_texts

    rng = np.random.default_rng(5)
    values = np.concatenate([rng.random(2000) * 10.0 ** rng.integers(-9, 20, 2000), -rng.random(500), rng.random(500) - 0.5])
    values = np.concatenate([values, [0.0, -0.0, 1.0, -1.0, 2.0, np.nan, np.inf, 1e-4, 9.9e-5, 1e9, 1e16, 5e-324, 0.1]])
    assert float_texts(values).to_pylist() == ["null" if v != v else repr(v) for v in values.tolist()]
    plain = ["likely benefit", "é ü", "P-001", None, ""]
    odd = plain + ['a "quoted" one', "back\\slash", "new\nline", "\x01"]
    for cells in (plain, odd):  # without and with cells that need escapes
        assert json_texts(pa.array(cells, type=pa.string())).to_pylist() == ["null" if v is None else json.dumps(v, ensure_ascii=False) for v in cells]


def test_json_lines_are_each_rows_json_object():
    """Each line is the row's JSON object, byte for byte as json.dumps writes it: text columns with and without
    missing cells and cells that need escapes, floats with NaN, and the errors and warnings lists (JSON text already)."""
    import pandas as pd

    from serving.batch import _jsonl, _text_column

    rows = [
        {"patient_id": "P1", "errors": None, "warnings": [], "pain_benefit": 0.1, "pain_answer": "average", "reason": 'says "why"', "same": "risk_based", "accents": "é ü"},
        {"patient_id": "P2", "errors": [{"field": "crp", "code": "implausible_lab"}], "warnings": None, "pain_benefit": None, "pain_answer": None, "reason": "x\ny", "same": "risk_based", "accents": "é ü"},
        {"patient_id": "P3", "errors": None, "warnings": [{"code": "imputed", "field": "esr"}], "pain_benefit": -0.25, "pain_answer": "average", "reason": "z", "same": "risk_based", "accents": "é ü"},
    ]  # fmt: skip
    compact = {"ensure_ascii": False, "separators": (",", ":")}
    table = pd.DataFrame({
        column: np.array([np.nan if r[column] is None else r[column] for r in rows]) if column == "pain_benefit"
        else _text_column([None if r[column] is None else json.dumps(r[column], **compact) for r in rows]) if column in ("errors", "warnings")
        else _text_column([r[column] for r in rows])
        for column in rows[0]
    })  # fmt: skip
    assert _jsonl(table).splitlines() == [json.dumps(r, **compact) for r in rows]


def _row_codes_reference(codes: np.ndarray) -> np.ndarray:
    first: dict[bytes, int] = {}
    return np.asarray([first.setdefault(row.tobytes(), len(first)) for row in codes], dtype=np.int64)


def test_rows_with_equal_warnings_share_one_code():
    """The hashed row codes equal a dictionary's of each row's bytes (first appearance order), as does the column-by-column fallback."""
    from serving.batch import _row_codes, _row_codes_by_column

    rng = np.random.default_rng(7)
    for n, k, levels in ((0, 3, 2), (1, 0, 1), (500, 1, 3), (5000, 40, 2), (2000, 7, 50)):
        codes = np.asfortranarray(rng.integers(0, levels, (n, k)).astype(np.int32) * (rng.random((n, k)) < 0.3))
        expected = _row_codes_reference(codes)
        assert np.array_equal(_row_codes(codes), expected) and np.array_equal(_row_codes_by_column(codes), expected)


def _pandas_columns(path, spec, monkeypatch):
    from serving import batch

    monkeypatch.setattr(batch, "csv_texts", lambda path, fields: None)  # the pandas reader, as before Arrow read CSV
    try:
        return batch.read_columns(path, spec)
    finally:
        monkeypatch.undo()


def _same_columns(a: dict, b: dict) -> bool:
    if list(a) != list(b):
        return False
    for column in a:
        x, y = a[column], b[column]
        if x.dtype != y.dtype or len(x) != len(y):
            return False
        if x.dtype.kind == "f":
            if not np.array_equal(x, y, equal_nan=True):
                return False
        elif [v if v == v else "nan" for v in x.tolist()] != [v if v == v else "nan" for v in y.tolist()]:
            return False
    return True


def test_arrow_reads_a_csv_as_pandas_reads_it_or_leaves_it_to_pandas(tmp_path, monkeypatch):
    """Every cell as text, pandas' missing-value words missing, quotes, CRLF, a BOM, blank lines; pandas for the rest."""
    from core.spec import load_spec
    from serving.batch import csv_texts, read_columns
    from serving.schemas import patient_model
    from training.simulate import simulate

    spec = load_spec()
    fields = patient_model(spec, spec.lab_catalog()).model_fields
    frame = simulate("final", 600, 4).astype({"bmi": object, "age": object, "patient_id": object})
    frame.loc[1, "bmi"], frame.loc[2, "bmi"], frame.loc[3, "bmi"], frame.loc[4, "bmi"] = "NA", "None", "<NA>", "n/a"
    frame.loc[5, "patient_id"], frame.loc[6, "patient_id"] = 'quote "q", comma', "line\nbreak é"
    frame.loc[7, "age"] = " 41"  # a blank before a number: not plain number text, so the column is read cell by cell
    plain = tmp_path / "plain.csv"
    frame.to_csv(plain, index=False)
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes().replace(b"\n", b"\r\n").replace(b"\r\n", b"\r\n\r\n", 1))
    for path in (plain, crlf):
        assert csv_texts(path, fields) is not None, path.name
        columns, n = read_columns(path, spec)
        expected, m = _pandas_columns(path, spec, monkeypatch)
        assert n == m == 600 and _same_columns(columns, expected), path.name
        assert columns["bmi"].dtype == np.float64 and np.isnan(columns["bmi"][1:5]).all()
        assert columns["age"].dtype == object and columns["age"][7] == 41.0  # as the API reads the cell
    ragged = tmp_path / "ragged.csv"  # a short row: pandas fills it with missing cells, Arrow refuses; pandas reads it
    ragged.write_text(plain.read_text().replace("\n", "\nP-short,1\n", 1))
    repeated = tmp_path / "repeated.csv"  # a repeated name: pandas renames it
    repeated.write_text(plain.read_text().replace("bmi", "age", 1))
    for path in (ragged, repeated):
        assert csv_texts(path, fields) is None, path.name
        assert _same_columns(read_columns(path, spec)[0], _pandas_columns(path, spec, monkeypatch)[0])


@pytest.mark.slow
@pytest.mark.parametrize(("source", "suffix"), [(".csv", ".parquet"), (".parquet", ".jsonl"), (".csv", ".json"), (".json", ".json")])
def test_responders_predict_writes_the_apis_numbers(tmp_path_factory, source, suffix):
    """The command on a real MLflow store: the table's numbers are the API scorer's for the same patients;
    ``--out FILE.json`` is the response's JSON as the per-row path writes it, byte for byte."""
    from helpers import score_rows, serving_store
    from typer.testing import CliRunner

    from core.spec import load_spec
    from responders.cli import app
    from serving.scoring import Scorer, read_patients, resolve_champions
    from training.simulate import simulate

    store = serving_store(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("batch")
    frame = simulate("final", 3000, 11).astype({"crp": object})
    frame.loc[::50, "crp"] = "<0.3"
    frame.loc[7, "crp"] = "5000"  # implausible: an error for that patient
    frame.loc[2500, "patient_id"] = None  # named by its row of the file
    path = tmp / f"patients{source}"
    if source == ".json":
        fields = patient_fields()
        given = [{k: v for k, v in r.items() if v is not None and k in fields} for r in json.loads(frame.to_json(orient="records"))]
        path.write_text(json.dumps({"patients": given}))  # numbers as JSON numbers, lab text as text, no key for a missing value
    else:
        frame.to_csv(path, index=False) if source == ".csv" else frame.to_parquet(path, index=False)
    out = tmp / f"scores{suffix}"
    result = CliRunner().invoke(app, ["predict", str(path), "--out", str(out), "--tracking-uri", store["uri"]])
    assert result.exit_code == 0, result.output
    spec = load_spec()
    # The API's per-patient path on the same batch as the command's one block: a risk model's point estimate (scikit-learn's
    # product through BLAS) can differ in its last bit with a patient's position in a batch (rows 1998 and 2000 of 3,000 with
    # batches of 2,000), in the API too.
    rows = read_patients(path, spec)
    response = score_rows(Scorer(spec, resolve_champions(spec, store["uri"])), rows, chunk=len(rows))
    api = response.results
    if suffix == ".json":
        assert out.read_text(encoding="utf-8") == response.model_dump_json(indent=2)  # byte for byte
        assert api[2500].patient_id == "row-2501" and 1 <= response.n_failed <= 10 and response.n_scored + response.n_failed == 3000
        return
    table = pd.read_parquet(out) if suffix == ".parquet" else pd.DataFrame([json.loads(line) for line in out.read_text().splitlines()])
    assert len(table) == len(api) == 3000
    assert table["errors"].notna().sum() == sum(r.predictions is None for r in api) >= 1
    for i in range(0, 3000, 7):
        row, want = table.iloc[i], api[i]
        assert row["patient_id"] == want.patient_id
        if want.predictions is None:
            continue
        for outcome, p in want.predictions.items():
            assert [row[f"{outcome}_p_response_treated"], row[f"{outcome}_benefit"], row[f"{outcome}_benefit_lower"], row[f"{outcome}_benefit_upper"]] == [
                p.p_response_treated, p.benefit, p.benefit_interval.lower, p.benefit_interval.upper
            ], (i, outcome)  # the same floats, not merely close
            assert row[f"{outcome}_patient_label"] == p.patient_label or (p.patient_label is None and pd.isna(row[f"{outcome}_patient_label"]))


@pytest.mark.slow
def test_responders_predict_reads_the_registry_without_importing_mlflow(tmp_path_factory):
    """The champions read straight from the sqlite store are MLflow's (versions, run ids, the same models' answers),
    and scoring a file imports neither MLflow nor its database layer (about 1.4 s of every start-up)."""
    import subprocess
    import sys

    from helpers import score_rows, serving_store

    from core.spec import load_spec
    from serving.scoring import Scorer, _resolve_with_mlflow, read_patients, resolve_champions

    store = serving_store(tmp_path_factory)
    spec = load_spec()
    local, through_mlflow = resolve_champions(spec, store["uri"]), _resolve_with_mlflow(spec.model_keys(), store["uri"])
    assert {k: c.ref for k, c in local.items()} == {k: c.ref for k, c in through_mlflow.items()} and len(local) == 2
    path = tmp_path_factory.mktemp("no-mlflow") / "patients.csv"
    store["frame"].head(200).to_csv(path, index=False)
    rows = read_patients(path, spec)
    assert score_rows(Scorer(spec, local), rows).model_dump_json() == score_rows(Scorer(spec, through_mlflow), rows).model_dump_json()
    code = (
        "import sys; from serving.batch import score_file_to_table; score_file_to_table(sys.argv[1], sys.argv[2], tracking_uri=sys.argv[3]); "
        "print(sorted(m for m in ('mlflow', 'sqlalchemy', 'alembic', 'bentoml', 'shap') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path), str(path.with_suffix(".parquet")), store["uri"]], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]" and len(pd.read_parquet(path.with_suffix(".parquet"))) == 200
    # The console script streams JSON lines and ends its process without the interpreter's teardown
    # (core.cli.end_process): every line and its log lines are out, exit status 0.
    out = path.with_suffix(".jsonl")
    command = [str(Path(sys.executable).with_name("responders")), "predict", str(path), "--out", str(out), "--tracking-uri", store["uri"]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == f"wrote {out}", done.stderr[-2000:]
    assert "predict: 200 patients" in done.stderr and "predict CPU seconds" in done.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["patient_id"] for line in lines] == pd.read_parquet(path.with_suffix(".parquet"))["patient_id"].tolist()


def patient_fields() -> set[str]:
    from core.spec import load_spec
    from serving.schemas import patient_model

    spec = load_spec()
    return set(patient_model(spec, spec.lab_catalog()).model_fields)


@pytest.mark.slow
def test_responders_predict_loads_the_stored_plans_and_falls_back_to_the_artefact(tmp_path_factory, monkeypatch, caplog):
    """From a local store, `scoring_only` loads each version's stored scoring plan; a plan file that cannot be read
    is logged by name and the version's artefact is loaded instead, with the same answers."""
    import logging

    from helpers import score_rows, serving_store

    from core.runtime.artefact import ResponderModel
    from core.runtime.compiled import ScoringModel
    from core.spec import load_spec
    from serving import scoring
    from serving.scoring import Scorer, read_patients, resolve_champions

    store = serving_store(tmp_path_factory)
    spec = load_spec()
    stored = resolve_champions(spec, store["uri"], scoring_only=True)
    assert all(type(c.model) is ScoringModel for c in stored.values()) and len(stored) == 2
    full = resolve_champions(spec, store["uri"])
    assert all(type(c.model) is ResponderModel for c in full.values())

    def damaged(path):
        raise ValueError("unexpected end of file")

    monkeypatch.setattr(scoring, "load_scoring_model", damaged)
    with caplog.at_level(logging.WARNING, logger="responders.serving"):
        fallback = resolve_champions(spec, store["uri"], scoring_only=True)
    assert all(type(c.model) is ResponderModel for c in fallback.values())
    assert sum("cannot read its stored scoring plan scoring.joblib (ValueError: unexpected end of file)" in r.getMessage() for r in caplog.records) == 2
    path = tmp_path_factory.mktemp("fallback") / "patients.csv"
    store["frame"].head(50).to_csv(path, index=False)
    rows = read_patients(path, spec)
    answers = {k: score_rows(Scorer(spec, c), rows).model_dump_json() for k, c in (("stored", stored), ("full", full), ("fallback", fallback))}
    assert answers["stored"] == answers["full"] == answers["fallback"]
