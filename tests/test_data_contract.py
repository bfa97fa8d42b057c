"""The data contract: spec, loader and validation report (rows and columns named)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from helpers import OTHER_SPEC
from typer.testing import CliRunner

from training.cli import app
from training.data import DataContractError, load_trial, model_inputs, read_table, validate
from training.spec import load_spec, parse_spec

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
