"""Wider trials by spec (issue 24): labs the catalog does not know, declared in the spec or a catalog file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from features.labs import LabValueError, parse_lab_value
from features.pipeline import build_feature_pipeline, feature_info, input_warnings
from training.data import validate
from training.errors import ConfigError
from training.spec import load_spec, parse_spec

SPECS = Path(__file__).resolve().parents[1] / "training" / "specs"

BASE = {
    "name": "declared",
    "id_column": "id",
    "arm": {"column": "arm", "treated": "a", "control": "b"},
    "outcomes": {"cured": {"kind": "binary", "label": "Cured", "event": {"column": "cured", "good": True}}},
}
BILIRUBIN = {
    "name": "Serum bilirubin (total)",
    "label": "Bilirubin",
    "loinc": "1975-2",
    "unit": "mg/dL",
    "units": {"mg/dL": 1.0, "umol/L": 0.05848},
    "lod": 0.1,
    "upper_reference": 1.2,
    "plausible": [0.0, 60.0],
}
ANTI_X = {  # an autoantibody the catalog does not know, with a positivity cut-off
    "name": "Anti-X antibody",
    "label": "Anti-X",
    "group": "autoantibody",
    "unit": "U/mL",
    "units": {"U/mL": 1.0},
    "lod": 1.0,
    "plausible": [0.0, 1000.0],
    "positive_at": 20.0,
}


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _spec(tmp_path, **extra):
    return load_spec(_write(tmp_path / "spec.yaml", {**BASE, **extra}))


# Declared labs --------------------------------------------------------------------------------------------
def test_an_unknown_lab_error_says_how_to_declare_it(tmp_path):
    with pytest.raises(ConfigError) as err:
        _spec(tmp_path, labs={"bilirubin": {"column": "bili"}})
    message = str(err.value)
    assert "labs.bilirubin: not in the lab catalog" in message
    assert "analytes.bilirubin" in message and "lab_catalog_files" in message and "docs/wider-trials.md" in message


def test_a_lab_declared_inline_or_in_a_catalog_file_gets_the_same_facts(tmp_path):
    inline = _spec(tmp_path, labs={"bilirubin": {"column": "bili"}}, analytes={"bilirubin": BILIRUBIN})
    _write(tmp_path / "extra.yaml", {"version": 1, "analytes": {"bilirubin": BILIRUBIN}})
    (tmp_path / "sub").mkdir()
    # A catalog file is found relative to the spec file's folder, wherever the job runs.
    filed = load_spec(_write(tmp_path / "sub" / "spec.yaml", {**BASE, "labs": {"bilirubin": {"column": "bili"}}, "lab_catalog_files": ["../extra.yaml"]}))
    assert inline.lab_catalog()["bilirubin"] == filed.lab_catalog()["bilirubin"]
    assert filed.analytes["bilirubin"].loinc == "1975-2" and "crp" in filed.lab_catalog()
    # The validated spec carries the declared facts (the copy logged with the model needs no file).
    assert parse_spec(filed.to_yaml()).lab_catalog()["bilirubin"] == filed.lab_catalog()["bilirubin"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"analytes": {"crp": {**BILIRUBIN, "label": "CRP"}}}, "analytes.crp: already in the lab catalog"),
        ({"lab_catalog_files": ["nowhere.yaml"]}, "lab_catalog_files[0]"),
        ({"analytes": {"bilirubin": {**BILIRUBIN, "plausible": [5, 1]}}}, "plausible range is reversed"),
        ({"analytes": {"bilirubin": {**BILIRUBIN, "unit": "mmol/L"}}}, "canonical unit"),
        ({"analytes": {"bilirubin": {**BILIRUBIN, "colour": "red"}}}, "analytes.bilirubin.colour"),
    ],
)
def test_declarations_are_checked(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _spec(tmp_path, labs={"bilirubin": {"column": "bili"}}, **extra)


def test_an_analyte_declared_twice_is_refused(tmp_path):
    _write(tmp_path / "extra.yaml", {"version": 1, "analytes": {"bilirubin": BILIRUBIN}})
    with pytest.raises(ConfigError, match="also declared in analytes"):
        _spec(tmp_path, labs={"bilirubin": {"column": "bili"}}, analytes={"bilirubin": BILIRUBIN}, lab_catalog_files=["extra.yaml"])


def test_a_declared_lab_gets_the_catalog_rules(tmp_path):
    spec = _spec(tmp_path, labs={"bilirubin": {"column": "bili"}, "anti_x": {"column": "antix"}},
                 analytes={"bilirubin": BILIRUBIN, "anti_x": ANTI_X})
    lab = spec.lab_catalog()["bilirubin"]
    assert parse_lab_value("<0.1", lab).below_lod
    assert parse_lab_value("17.1", lab, "umol/L").value == pytest.approx(17.1 * 0.05848)
    assert parse_lab_value(">20", lab).censored == "above"
    with pytest.raises(LabValueError, match="implausible"):
        parse_lab_value("75", lab)
    with pytest.raises(LabValueError, match="unknown unit"):
        parse_lab_value("1.0", lab, "mmol/L")
    assert parse_lab_value("NEG", spec.lab_catalog()["anti_x"]).value == 10.0  # half the positivity cut-off

    # Validation reads declared labs with the same rules, naming rows (1-based) and columns.
    frame = pd.DataFrame({
        "id": list(range(1, 7)), "arm": ["a", "b"] * 3, "cured": [1, 0, 1, 0, 1, 0],
        "bili": ["0.8", "<0.1", "abc", "75", "2.4", "1.1"], "antix": ["NEG", "35", "5", "", "22", "pos"],
    })
    report = validate(frame, spec)
    kinds = {(f.kind, f.column): f.rows for f in report.findings}
    assert kinds[("unparseable_lab", "bili")] == [3] and kinds[("implausible_lab", "bili")] == [4]
    assert kinds[("below_detection_limit", "bili")] == [2] and kinds[("missing_lab", "antix")] == [4]


def test_features_of_declared_labs_by_group(tmp_path):
    """No group: value and reference flags; group autoantibody: positivity and burden; group inflammation: log."""
    esr_like = {**BILIRUBIN, "name": "Marker Y", "label": "Y", "group": "inflammation", "lower_reference": None}
    albumin = {"name": "Serum albumin", "label": "Albumin", "unit": "g/dL", "units": {"g/dL": 1.0, "g/L": 0.1},
               "lower_reference": 3.5, "upper_reference": 5.0, "plausible": [0.5, 7.0]}
    spec = _spec(
        tmp_path,
        labs={"bilirubin": {"column": "bili"}, "albumin": {"column": "alb", "unit": "g/L"}, "anti_x": {"column": "antix"},
              "marker_y": {"column": "y"}},
        analytes={"bilirubin": BILIRUBIN, "albumin": albumin, "anti_x": ANTI_X, "marker_y": esr_like},
    )
    X = pd.DataFrame({"bili": ["0.5", "3.0", "<0.1", None], "alb": ["40", "30", "52", "38"], "antix": ["NEG", "35", "5", "25"],
                      "y": ["1", "2", "3", "4"]})
    pipeline = build_feature_pipeline(spec).fit(X)
    F = pipeline.transform(X)
    info = feature_info(pipeline, spec)
    assert F["bilirubin_above_reference"].tolist() == [0, 1, 0, 0]
    assert F["albumin"].tolist() == pytest.approx([4.0, 3.0, 5.2, 3.8])  # g/L converted to the canonical g/dL
    assert F["albumin_below_reference"].tolist() == [0, 1, 0, 0] and F["albumin_above_reference"].tolist() == [0, 0, 1, 0]
    assert F["anti_x_positive"].tolist() == [0, 1, 0, 1] and F["autoantibody_burden"].tolist() == [0, 1, 0, 1]
    assert "marker_y_log" in F.columns and info["marker_y_log"].group == "inflammation"
    assert F["bilirubin_missing"].tolist() == [0, 0, 0, 1] and F["bilirubin_below_lod"].tolist() == [0, 0, 1, 0]
    assert info["bilirubin"].group == "lab" and info["bilirubin"].description == "Bilirubin (mg/dL)"
    assert "reference limit (3.5 g/dL" in info["albumin_below_reference"].description
    # The "outside the training range" warning, in the lab's own words and unit.
    [[warning]] = [w for w in input_warnings(pipeline, spec, pd.DataFrame({"bili": ["9"], "alb": ["40"], "antix": ["5"], "y": ["2"]})) if w]
    assert warning.code == "outside_training_range" and warning.field == "bili" and "Bilirubin 9 mg/dL" in warning.message
