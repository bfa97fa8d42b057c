"""The data contract: spec, loader and validation report (rows and columns named)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import OTHER_SPEC
from typer.testing import CliRunner

from core.data import DataContractError, load_trial, model_inputs, read_table, validate
from core.spec import load_spec, parse_spec
from responders.cli import app

runner = CliRunner()


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def _errors(report, kind):
    return [f for f in report.errors if f.kind == kind]


def test_good_simulated_file_validates(tmp_path, final_99):
    path = _write(final_99, tmp_path / "trial.csv")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "Result: USABLE" in result.output
    # warnings are listed and counted, not dropped silently
    assert "[ground_truth_ignored]" in result.output
    assert "[missing_lab]" in result.output


def test_parquet_and_csv_load_the_same(tmp_path, final_99, spec):
    csv = _write(final_99, tmp_path / "trial.csv")
    runner.invoke(app, ["simulate", "--n", "99", "--seed", "2024", "--out", str(tmp_path / "trial.parquet")])
    a, _ = load_trial(csv, spec)
    b, _ = load_trial(tmp_path / "trial.parquet", spec)
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(model_inputs(a, spec).astype(str), model_inputs(b, spec).astype(str))


@pytest.mark.parametrize(
    ("kind", "column", "row", "plant"),
    [
        ("duplicate_id", "patient_id", 4, lambda df: df.__setitem__("patient_id", df["patient_id"].where(df.index != 3, df.at[0, "patient_id"]))),
        ("unknown_arm", "arm", 6, lambda df: df.__setitem__("arm", df["arm"].where(df.index != 5, "LDN"))),
        ("out_of_scale", "pain_baseline", 8, lambda df: df.__setitem__("pain_baseline", df["pain_baseline"].where(df.index != 7, 11.5))),
        ("unparseable_lab", "crp", 10, lambda df: df.__setitem__("crp", df["crp"].where(df.index != 9, "haemolysed"))),
        ("implausible_lab", "crp", 11, lambda df: df.__setitem__("crp", df["crp"].where(df.index != 10, "5000"))),
        ("unknown_unit", "crp", 12, lambda df: df.__setitem__("crp_unit", ["mg/L"] * 11 + ["furlongs"] + ["mg/L"] * (len(df) - 12))),
        ("not_a_number", "age", 13, lambda df: df.__setitem__("age", df["age"].astype(object).where(df.index != 12, "fifty"))),
        ("unknown_level", "sex", 14, lambda df: df.__setitem__("sex", df["sex"].where(df.index != 13, "F"))),
    ],
)
def test_each_violation_is_reported_with_row_and_column(tmp_path, final_99, kind, column, row, plant):
    frame = final_99.copy().astype(object)
    plant(frame)
    path = _write(frame, tmp_path / "bad.csv")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    report = validate(read_table(path), load_spec(), source=str(path))
    found = _errors(report, kind)
    assert found, report.render()
    assert found[0].column == column
    assert row in found[0].rows
    assert f"[{kind}] {column}" in result.output
    assert len(report.errors) == 1, report.render()  # nothing else was flagged


def test_missing_required_column(tmp_path, final_99):
    path = _write(final_99.drop(columns=["memory_week12"]), tmp_path / "bad.csv")
    report = validate(read_table(path), load_spec())
    [finding] = _errors(report, "missing_column")
    assert finding.column == "memory_week12"
    with pytest.raises(DataContractError, match="memory_week12"):
        load_trial(path, load_spec())


def test_missing_followup_is_a_counted_warning(tmp_path, final_99):
    frame = final_99.copy()
    frame.loc[[2, 5], "pain_week12"] = None
    report = validate(frame, load_spec())
    assert report.ok
    [finding] = [f for f in report.warnings if f.kind == "missing_followup"]
    assert finding.rows == [3, 6]
    assert "non-responders" in finding.message


def test_true_columns_are_flagged_and_never_model_inputs(final_99, spec):
    report = validate(final_99, spec)
    [finding] = [f for f in report.warnings if f.kind == "ground_truth_ignored"]
    assert "true_benefit_pain" in finding.message
    inputs = model_inputs(final_99, spec)
    assert not [c for c in inputs.columns if c.startswith("true_")]
    assert "arm" not in inputs.columns and "pain_week12" not in inputs.columns


def test_spec_refuses_ground_truth_as_feature():
    text = load_spec().to_yaml().replace("  bmi:\n", "  true_bmi:\n")
    with pytest.raises(ValueError, match="ground truth"):
        parse_spec(text)




def test_second_layout_validates_through_its_own_spec(tmp_path):
    spec_path = tmp_path / "other.yaml"
    spec_path.write_text(OTHER_SPEC)
    frame = pd.DataFrame(
        {
            "subject": ["a1", "a2", "a3", "a4"],
            "group": ["active", "sham", "active", "sham"],
            "years": [40, 51, 62, 33],
            "site": ["north", "south", "south", "north"],
            "wb_0": [40, 55, 61, 20],
            "wb_26": [52, 50, None, 35],
            "hs_crp": ["0.12", "<0.03", "1.1", None],
            "interleukin_6": [2.1, None, "<1.5", "3,4"],
            "ana_titre": ["1:80", "negative", "1:640", "NEG"],
        }
    )
    data = _write(frame, tmp_path / "other.csv")
    result = runner.invoke(app, ["validate", str(data), "--spec", str(spec_path)])
    assert result.exit_code == 0, result.output
    frame.loc[1, "wb_0"] = 140
    _write(frame, data)
    result = runner.invoke(app, ["validate", str(data), "--spec", str(spec_path)])
    assert result.exit_code == 1
    assert "[out_of_scale] wb_0" in result.output and "row 2" in result.output


# Trials of other shapes: several time points, binary events, integer codes, typos ----------------------------
MULTI = """
name: multi
id_column: pid
arm: {column: arm, treated: 1, control: 0}
outcomes:
  bdi_week8: {label: BDI week 8, baseline: bdi_baseline, followup: bdi_week8, scale: [0, 63], responder: {rule: relative, threshold: 0.5}}
  bdi_week26: {label: BDI week 26, baseline: bdi_baseline, followup: bdi_week26, scale: [0, 63], responder: {rule: relative, threshold: 0.5}}
  relapse: {kind: binary, label: Relapse, event: {column: relapse, good: false}}
covariates:
  age: {kind: numeric, range: [18, 90], required: true}
  drug: {kind: categorical, label: Drug, levels: {0: 'No', 1: 'Yes'}}
labs:
  crp: {column: crp}
"""


def _multi_frame(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    base = rng.integers(10, 40, n).astype(float)
    return pd.DataFrame(
        {
            "pid": [f"p{i}" for i in range(n)],
            "arm": np.arange(n) % 2,
            "bdi_baseline": base,
            "bdi_week8": (base * rng.uniform(0.2, 1.0, n)).round(),
            "bdi_week26": (base * rng.uniform(0.2, 1.0, n)).round(),
            "relapse": rng.integers(0, 2, n),
            "age": rng.integers(20, 70, n),
            "drug": rng.integers(0, 2, n),
            "crp": rng.uniform(0.5, 10, n).round(1),
        }
    )


def test_outcomes_share_a_baseline_and_codes_may_be_numbers(tmp_path):
    spec = parse_spec(MULTI)
    assert spec.baseline_score_columns() == ["bdi_baseline"]
    assert spec.followup_columns() == ["bdi_week8", "bdi_week26", "relapse"]
    assert spec.arm.labels == ("1", "0") and spec.covariates["drug"].level_names() == {"0": "No", "1": "Yes"}
    frame = _multi_frame()
    frame["drug"] = frame["drug"].astype(float)  # 0.0 / 1.0, as a float column is written
    path = _write(frame, tmp_path / "multi.csv")
    report = validate(read_table(path), spec)
    assert report.ok, report.render()
    frame.to_parquet(tmp_path / "multi.parquet")
    assert validate(read_table(tmp_path / "multi.parquet"), spec).ok
    frame.loc[3, "drug"] = 2
    frame.loc[4, "relapse"] = 7
    frame.loc[5, "arm"] = 3
    report = validate(frame, spec)
    assert [f.rows for f in _errors(report, "unknown_level")] == [[4], [5]]
    assert "event code" in report.render() and [f.rows for f in _errors(report, "unknown_arm")] == [[6]]


def test_roles_other_than_a_shared_baseline_are_refused():
    with pytest.raises(ValueError, match="'bdi_baseline' is baseline and covariate"):
        parse_spec(MULTI.replace("  age:", "  bdi_baseline: {kind: numeric}\n  age:"))
    with pytest.raises(ValueError, match="'bdi_week8' is outcome bdi_week8 and outcome bdi_week26"):
        parse_spec(MULTI.replace("followup: bdi_week26", "followup: bdi_week8"))
    with pytest.raises(ValueError, match="share its scale"):
        parse_spec(MULTI.replace("followup: bdi_week26, scale: [0, 63]", "followup: bdi_week26, scale: [0, 60]"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("relapse: {kind: binary, label: Relapse, event: {column: relapse, good: false}, responder: {rule: absolute}}", "event.good instead"),
        ("relapse: {kind: binary, label: Relapse}", "needs event"),
        ("relapse: {label: Relapse, followup: relapse, scale: [0, 1], responder: {rule: absolute, threshold: 1}}", "needs a baseline"),
        ("relapse: {kind: binary, label: Relapse, event: {column: relapse, good: false, present: 1, absent: 1.0}}", "different codes"),
        ("relapse: {kind: binary, label: Relapse, event: {column: relapse, good: false, present: yes, absent: no}}", "in quotes"),
    ],
)
def test_outcome_specs_are_checked(change, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(MULTI.replace("relapse: {kind: binary, label: Relapse, event: {column: relapse, good: false}}", change))


def test_yaml_booleans_as_levels_get_a_hint():
    with pytest.raises(ValueError, match="in quotes"):
        parse_spec(MULTI.replace("levels: {0: 'No', 1: 'Yes'}", "levels: [no, yes]"))


def test_relative_rule_with_zero_baselines_is_refused_naming_rows():
    spec = parse_spec(MULTI)
    frame = _multi_frame()
    frame.loc[[2, 9], "bdi_baseline"] = 0
    frame.loc[[2, 9], ["bdi_week8", "bdi_week26"]] = 0
    report = validate(frame, spec)
    assert not report.ok
    found = _errors(report, "zero_baseline")
    assert found and found[0].rows == [3, 10] and "zero_baseline: non_responder or exclude" in found[0].message
    declared = parse_spec(MULTI.replace("threshold: 0.5}}\n  relapse", "threshold: 0.5}, zero_baseline: exclude}\n  relapse").replace(
        "threshold: 0.5}}\n  bdi_week26", "threshold: 0.5}, zero_baseline: exclude}\n  bdi_week26"))
    report = validate(frame, declared)
    assert report.ok, report.render()
    assert [f.rows for f in report.warnings if f.kind == "zero_baseline"] == [[3, 10], [3, 10]]


def test_few_responders_in_an_arm_is_a_warning():
    spec = parse_spec(MULTI)
    frame = _multi_frame()
    frame["relapse"] = np.where(frame["arm"] == 1, 0, frame["relapse"])  # nobody relapses on treatment
    report = validate(frame, spec)
    assert report.ok
    [finding] = [f for f in report.warnings if f.kind == "few_responders" and f.column == "relapse"]
    assert "0 non-responder(s)" in finding.message


def test_absent_spec_columns_are_errors_or_warnings_with_a_suggestion():
    spec = parse_spec(MULTI)
    frame = _multi_frame()
    [missing] = _errors(validate(frame.rename(columns={"age": "Age"}), spec), "missing_column")
    assert missing.column == "age" and "did you mean 'Age'?" in missing.message
    # The spec says crp and the file has an unknown cpr column: a typo, never USABLE.
    [typo] = _errors(validate(frame.rename(columns={"crp": "cpr"}), spec), "missing_column")
    assert typo.column == "crp" and "did you mean 'cpr'?" in typo.message
    # Nothing like it in the file: an optional lab may be absent (warned, imputed for everyone).
    absent = validate(frame.drop(columns=["crp"]), spec)
    assert absent.ok and [f.column for f in absent.warnings if f.kind == "missing_column"] == ["crp"]


@pytest.mark.parametrize("dtype", ["str", "string", "string[pyarrow]", object, "category"])
def test_per_distinct_value_codes_and_missing_flags_equal_the_per_cell_ones(dtype):
    """Validation maps each distinct value once; the answers are the per-cell ones, missing marker included."""
    from features.codes import level_key, level_keys
    from features.labs import is_missing, missing_mask

    columns = [
        pd.Series(["na", " NA ", None, "1", "1.0", "", "x", None, "female", " female"], dtype=dtype),
        pd.Series([1.0, np.nan, 2.0, -0.0, 0.0, 3.5, np.inf, 1.0, 2.0, 7.0]),
        pd.Series([1, 2, None, 4, 5, 6, 7, 8, 1, 1], dtype="Int64"),
        pd.Series([True, 1, "1", 1.0, None, "True", 0, False, np.nan, "n/a"], dtype=object),
    ]
    for values in columns:
        assert np.array_equal(missing_mask(values), values.map(is_missing).astype(bool).to_numpy())
        old, new = values.map(level_key).astype(object).tolist(), level_keys(values).tolist()
        assert [type(v) for v in old] == [type(v) for v in new]
        assert all(a is b or a == b or (a != a and b != b) for a, b in zip(old, new, strict=True))
