"""Loading trial files and checking them against the data contract.

``validate`` returns a :class:`ValidationReport` listing every violation with
its row numbers (1-based data rows, the header not counted) and column, and
every warning (missing labs, missing follow-up, ignored columns), each counted.
Nothing is dropped silently. Declarative column checks (presence, uniqueness,
allowed labels, ranges) are a pandera schema built from the spec; lab cells go
through the feature code's lab parser, the one place that knows lab rules.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from core.spec import GROUND_TRUTH_PREFIX, DatasetSpec, level_key
from features.catalog import LabCatalog, load_catalog
from features.codes import level_keys
from features.labs import missing_mask, parse_lab_series

MAX_ROWS_LISTED = 12
MIN_PER_ARM = 10  # fewer responders (or non-responders) than this in an arm: too few to model, warn


@dataclass
class Finding:
    severity: str  # "error" or "warning"
    kind: str
    column: str | None
    rows: list[int]
    message: str

    def render(self) -> str:
        where = f"{self.column}: " if self.column else ""
        rows = ""
        if self.rows:
            shown = ", ".join(str(r) for r in self.rows[:MAX_ROWS_LISTED])
            more = f" and {len(self.rows) - MAX_ROWS_LISTED} more" if len(self.rows) > MAX_ROWS_LISTED else ""
            rows = f" (row{'s' if len(self.rows) > 1 else ''} {shown}{more})"
        return f"[{self.kind}] {where}{self.message}{rows}"


@dataclass
class ValidationReport:
    source: str
    spec: str
    n_rows: int
    n_columns: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, severity: str, kind: str, column: str | None, rows: list[int], message: str) -> None:
        self.findings.append(Finding(severity, kind, column, sorted(int(r) for r in rows), message))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.findings:
            key = f"{f.severity}:{f.kind}"
            out[key] = out.get(key, 0) + max(1, len(f.rows))
        return out

    def render(self) -> str:
        lines = [
            f"Data contract check of {self.source} against spec '{self.spec}': "
            f"{self.n_rows} rows, {self.n_columns} columns (row numbers count data rows from 1).",
        ]
        for title, items in (("Errors", self.errors), ("Warnings", self.warnings)):
            lines.append(f"{title}: {len(items)}")
            lines.extend(f"  - {f.render()}" for f in items)
        verdict = "USABLE" if self.ok else f"NOT USABLE ({len(self.errors)} error{'s' * (len(self.errors) != 1)})"
        lines.append(f"Result: {verdict}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "spec": self.spec,
            "n_rows": self.n_rows,
            "n_columns": self.n_columns,
            "ok": self.ok,
            "n_errors": len(self.errors),
            "n_warnings": len(self.warnings),
            "counts": self.counts(),
            "findings": [asdict(f) for f in self.findings],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


class DataContractError(ValueError):
    """Raised when a file breaks the data contract; carries the full report."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.render())


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet trial file, keeping every cell as the file gives it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        return pd.read_parquet(path)
    if suffix in {".csv", ".txt"}:
        return pd.read_csv(path, dtype=str, keep_default_na=True)
    if suffix == ".tsv":
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=True)
    if suffix == ".json":
        return pd.read_json(path, dtype=False)
    raise ValueError(f"{path}: unsupported file type {suffix!r} (use .csv or .parquet)")


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def frame_digest(frame: pd.DataFrame) -> str:
    """A content hash of a frame (order-sensitive), for MLflow dataset inputs."""
    hashed = pd.util.hash_pandas_object(frame.astype(str), index=False).to_numpy()
    digest = hashlib.sha256(hashed.tobytes())
    digest.update(",".join(map(str, frame.columns)).encode())
    return digest.hexdigest()


def ground_truth_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if str(c).startswith(GROUND_TRUTH_PREFIX)]


def model_inputs(frame: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """The only columns a model may see: the spec's baseline inputs (and lab unit columns).

    Arm, follow-up and ``true_*`` ground-truth columns never pass.
    """
    columns = [c for c in spec.feature_input_columns() if c in frame.columns]
    columns += [f"{c}_unit" for c in spec.lab_columns() if f"{c}_unit" in frame.columns]
    leaked = [c for c in columns if c.startswith(GROUND_TRUTH_PREFIX)]
    if leaked:  # the spec validator already forbids this; keep the guarantee local too
        raise ValueError(f"ground-truth columns cannot be model inputs: {leaked}")
    out = frame.loc[:, columns].copy()
    for column in spec.numeric_covariates() + spec.baseline_score_columns():
        if column in out.columns:
            out[column] = pd.to_numeric(out[column], errors="coerce").astype(float)
    for column in spec.categorical_covariates():
        if column in out.columns:
            out[column] = level_keys(out[column])
    return out


def _rows(index: pd.Index) -> list[int]:
    return [int(i) + 1 for i in index]


def coerce_numeric(frame: pd.DataFrame, spec: DatasetSpec, report: ValidationReport | None = None) -> pd.DataFrame:
    """Numeric columns of the spec as floats; cells that are not numbers are reported."""
    out = frame.copy()
    for column in spec.numeric_ranges():
        if column not in out.columns:
            continue
        raw = out[column]
        if raw.dtype.kind in "iuf":  # numbers already (a Parquet file's float columns): as the text route would parse them
            out[column] = raw.astype(float)
            continue
        numbers = pd.to_numeric(raw.astype(str).str.strip().str.replace(",", ".", regex=False), errors="coerce")
        numbers = numbers.where(raw.notna())
        bad = raw.notna() & numbers.isna() & ~missing_mask(raw)
        if report is not None and bad.any():
            examples = ", ".join(repr(v) for v in raw[bad].unique()[:3])
            report.add("error", "not_a_number", column, _rows(raw.index[bad]), f"not a number: {examples}")
        out[column] = numbers.astype(float)
    return out


def _codes(frame: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """Arm, categorical and event columns as canonical codes, so 1, "1" and 1.0 are one level."""
    out = frame.copy()
    events = [o.column for o in spec.event_outcomes().values()] + [o.column for o in spec.event_by_outcomes().values()]
    for column in [spec.arm.column, *spec.categorical_covariates(), *events]:
        if column in out.columns:
            out[column] = level_keys(out[column])
    return out


def _schema(spec: DatasetSpec) -> pa.DataFrameSchema:
    required = set(spec.required_columns())
    non_null = required - set(spec.followup_columns())  # missing follow-up is a warning, not an error
    columns: dict[str, pa.Column] = {
        spec.id_column: pa.Column(str, nullable=False, unique=True, coerce=True, required=True),
        spec.arm.column: pa.Column(
            str, pa.Check.isin(list(spec.arm.labels)), nullable=False, coerce=True, required=True
        ),
    }
    for column, scale in spec.numeric_ranges().items():
        checks = [pa.Check.in_range(scale[0], scale[1])] if scale is not None else []
        columns[column] = pa.Column(
            float, checks, nullable=column not in non_null, coerce=True, required=column in required
        )
    for column in spec.categorical_covariates():
        levels = spec.covariates[column].level_codes()
        columns[column] = pa.Column(
            str, pa.Check.isin(levels), nullable=column not in non_null, coerce=True, required=column in required
        )
    for outcome in spec.event_outcomes().values():
        assert outcome.event is not None
        codes = [level_key(outcome.event.present), level_key(outcome.event.absent)]
        columns[outcome.column] = pa.Column(str, pa.Check.isin(codes), nullable=True, coerce=True, required=True)
    for outcome in spec.event_by_outcomes().values():  # status codes are checked by _check_event_by, naming the codes
        columns[outcome.column] = pa.Column(str, nullable=True, coerce=True, required=True)
    return pa.DataFrameSchema(columns, strict=False)


def closest_column(column: str, candidates: list[str]) -> str | None:
    """The candidate most like ``column`` (case-insensitive), if any is close: for "did you mean ...?"."""
    lowered = {str(c).lower(): str(c) for c in candidates}
    match = difflib.get_close_matches(column.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def _suggestion(column: str, candidates: list[str]) -> str:
    match = closest_column(column, candidates)
    return f"; did you mean {match!r}?" if match else ""


_CHECK_KIND = {
    "column_in_dataframe": ("missing_column", "required column is missing"),
    "field_uniqueness": ("duplicate_id", "duplicate id"),
    "not_nullable": ("missing_required_value", "required value is missing"),
}


def validate(frame: pd.DataFrame, spec: DatasetSpec, source: str = "<frame>", catalog: LabCatalog | None = None) -> ValidationReport:
    """Check a raw trial frame against the spec; never raises for data problems."""
    catalog = spec.lab_catalog(catalog or load_catalog())
    frame = frame.reset_index(drop=True)
    report = ValidationReport(source=source, spec=spec.name, n_rows=len(frame), n_columns=frame.shape[1])
    if frame.empty:
        report.add("error", "empty", None, [], "the file has no data rows")
        return report

    typed = _codes(coerce_numeric(frame, spec, report), spec)
    not_numbers = {(f.column, r) for f in report.findings for r in f.rows}
    try:
        _schema(spec).validate(typed, lazy=True)
    except pa.errors.SchemaErrors as exc:
        _collect_schema_failures(exc.failure_cases, spec, report, skip=not_numbers)
    present = [str(c) for c in frame.columns]
    unclaimed = [c for c in present if c not in spec.known_columns() and not c.startswith(GROUND_TRUTH_PREFIX)]
    for finding in report.findings:
        if finding.kind == "missing_column" and finding.column:
            finding.message += _suggestion(finding.column, unclaimed)  # never a column the spec already uses

    for analyte, lab in spec.labs.items():
        if lab.column not in frame.columns:
            _absent_optional(report, lab.column, f"lab column ({analyte})", unclaimed, present)
            continue
        units = frame[f"{lab.column}_unit"] if f"{lab.column}_unit" in frame.columns else None
        _, below_lod, issues = parse_lab_series(frame[lab.column], catalog[analyte], lab.column, lab.unit, units)
        grouped: dict[tuple[str, str], list[int]] = {}
        for issue in issues:
            kind = (
                "unknown_unit" if issue.reason.startswith("unknown unit")
                else "implausible_lab" if issue.reason.startswith("implausible")
                else "unparseable_lab"
            )
            grouped.setdefault((kind, f"{issue.raw!r}: {issue.reason}"), []).append(int(issue.row) + 1)
        for (kind, message), rows in grouped.items():
            report.add("error", kind, lab.column, rows, message)
        missing = pd.Series(missing_mask(frame[lab.column]), index=frame.index)
        if missing.any():
            report.add(
                "warning", "missing_lab", lab.column, _rows(frame.index[missing]),
                f"{int(missing.sum())} missing value(s); imputed inside the model pipeline",
            )
        below = pd.Series(below_lod > 0, index=frame.index)
        if below.any():
            report.add(
                "warning", "below_detection_limit", lab.column, _rows(frame.index[below]),
                f"{int(below.sum())} value(s) below the detection limit; substituted (LOD/sqrt 2) and flagged",
            )

    _check_event_by(typed, spec, report)
    for name, outcome in spec.outcomes.items():
        if all(c in frame.columns for c in outcome.observed_columns()):
            missing = typed[outcome.observed_columns()].isna().any(axis=1).to_numpy()
            if missing.any():
                rule = (
                    "counted as non-responders whatever the responder rule"
                    if outcome.missing_followup == "non_responder"
                    else "excluded from this outcome"
                )
                report.add(
                    "warning", "missing_followup", outcome.column, _rows(typed.index[missing]),
                    f"{int(missing.sum())} patient(s) without {name} follow-up; {rule}",
                )
    _check_responder_rules(typed, spec, report)
    optional = [c for c, s in spec.covariates.items() if not s.required]
    for column in optional:
        if column not in frame.columns:
            _absent_optional(report, column, "optional covariate", unclaimed, present)
        elif (missing := pd.Series(missing_mask(frame[column]), index=frame.index)).any():
            report.add(
                "warning", "missing_value", column, _rows(frame.index[missing]),
                f"{int(missing.sum())} missing value(s); imputed inside the model pipeline",
            )

    truth = ground_truth_columns(frame)
    if truth:
        report.add(
            "warning", "ground_truth_ignored", None, [],
            f"{len(truth)} ground-truth column(s) present and never used as features: {', '.join(truth)}",
        )
    unknown = [c for c in frame.columns if c not in spec.known_columns() and c not in truth]
    if unknown:
        report.add("warning", "unknown_column", None, [], f"columns not in the spec, ignored: {', '.join(map(str, unknown))}")
    return report


def _check_event_by(typed: pd.DataFrame, spec: DatasetSpec, report: ValidationReport) -> None:
    """Time-to-event columns: no negative time, no status code the spec does not name (errors naming rows);
    patients censored before the horizon are counted (a warning: excluded from the outcome)."""
    from core.labels import event_by_status

    for name, outcome in spec.event_by_outcomes().items():
        eb = outcome.event_by
        assert eb is not None
        if eb.time not in typed.columns or eb.status not in typed.columns:
            continue
        time = typed[eb.time]
        negative = (time < 0).to_numpy()
        if negative.any():
            report.add("error", "negative_time", eb.time, _rows(typed.index[negative]),
                       f"{int(negative.sum())} negative time(s) to event or censoring: {sorted(set(time[negative]))[:3]}")
        codes = typed[eb.status]
        unknown = (codes.notna() & ~codes.isin(eb.event_codes + eb.censored_codes)).to_numpy()
        if unknown.any():
            report.add(
                "error", "unknown_status", eb.status, _rows(typed.index[unknown]),
                f"unknown status code(s) {sorted(set(map(str, codes[unknown])))} (the spec names event {eb.event_codes}, "
                f"censored {eb.censored_codes}; list every code the file uses under event_by)",
            )
        if negative.any() or unknown.any():
            continue
        status = event_by_status(typed, outcome)
        early = status == "censored_early"
        if early.any():
            report.add(
                "warning", "censored_before_horizon", eb.status, _rows(typed.index[early]),
                f"{int(early.sum())} patient(s) censored before {eb.describe_horizon()}: status at the horizon unknown, "
                f"excluded from {name} (policy {eb.censored_before_horizon}; an inverse-probability-of-censoring weighted "
                "estimate is reported as a sensitivity analysis)",
            )


def _edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions and swaps of neighbours."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def likely_typo(column: str, candidates: list[str]) -> str | None:
    """A candidate one slip away from ``column`` (case aside; two for long names): cpr for crp, CRP, hs_crp_ for hs_crp."""
    best = min(candidates, key=lambda c: _edit_distance(column.lower(), str(c).lower()), default=None)
    if best is None:
        return None
    distance = _edit_distance(column.lower(), str(best).lower())
    return best if distance <= 1 or (distance <= 2 and len(column) >= 8) else None


def _absent_optional(report: ValidationReport, column: str, what: str, unclaimed: list[str], present: list[str]) -> None:
    """An optional spec column the file lacks: an error when the file has a column one slip away that the
    spec does not know (a typo in one of them), else a warning naming the closest column, if any."""
    typo = likely_typo(column, unclaimed)
    if typo is not None:
        report.add(
            "error", "missing_column", column, [],
            f"{what} named in the spec is not in the file, which has an unknown column {typo!r}: did you mean {typo!r}? "
            "(fix the spec or the file)",
        )
        return
    report.add(
        "warning", "missing_column", column, [],
        f"{what} named in the spec is not in the file: imputed for every patient{_suggestion(column, unclaimed)}",
    )


def _check_responder_rules(typed: pd.DataFrame, spec: DatasetSpec, report: ValidationReport) -> None:
    """Relative rules need non-zero baselines (an error naming the rows); every rule needs responders
    and non-responders in both arms (a warning below 10)."""
    from core.labels import responder_labels

    if spec.arm.column not in typed.columns:
        return
    arm = typed[spec.arm.column]
    codes = list(spec.arm.arms) if spec.arm.multi else [spec.arm.treated, spec.arm.control]
    arms = {spec.arm.arm_name(code): (arm == label).to_numpy() for code, label in zip(codes, spec.arm.labels, strict=True)}
    for name, outcome in spec.outcomes.items():
        if outcome.column not in typed.columns or (outcome.baseline is not None and outcome.baseline not in typed.columns):
            continue
        if outcome.kind == "score" and outcome.responder.rule == "relative" and outcome.baseline is not None:
            zero = (typed[outcome.baseline] <= 0).to_numpy()
            if zero.any() and outcome.zero_baseline == "refuse":
                report.add(
                    "error", "zero_baseline", outcome.baseline, _rows(typed.index[zero]),
                    f"{int(zero.sum())} baseline value(s) of 0: the relative rule of {name} ({outcome.describe_rule()}) "
                    "cannot be met from 0; use an absolute or threshold rule, or declare zero_baseline: "
                    "non_responder or exclude for this outcome in the spec",
                )
                continue
            if zero.any():
                counted = "counted as non-responders" if outcome.zero_baseline == "non_responder" else "excluded"
                report.add(
                    "warning", "zero_baseline", outcome.baseline, _rows(typed.index[zero]),
                    f"{int(zero.sum())} baseline value(s) of 0 cannot meet the relative rule of {name}; {counted}, as the spec declares",
                )
        labels, counts = responder_labels(typed, outcome)
        y = labels.to_numpy(dtype=float)
        few = []
        for arm_name, rows in arms.items():
            known = rows & ~np.isnan(y)
            responders, others = int(y[known].sum()), int(known.sum() - y[known].sum())
            if responders < MIN_PER_ARM or others < MIN_PER_ARM:
                few.append(f"{arm_name}: {responders} responder(s), {others} non-responder(s)")
        if few:
            report.add(
                "warning", "few_responders", outcome.column, [],
                f"{name} ({counts.rule}) leaves fewer than {MIN_PER_ARM} responders or non-responders in an arm ("
                + "; ".join(few) + "): the models will be unstable and the evidence weak",
            )


def _collect_schema_failures(
    cases: pd.DataFrame, spec: DatasetSpec, report: ValidationReport, skip: set[tuple[str | None, int]]
) -> None:
    """Group pandera's failure cases into findings; ``skip`` holds cells already reported."""
    grouped: dict[tuple[str, str, str], list[int]] = {}
    for case in cases.itertuples(index=False):
        column = str(case.column) if case.column is not None else None
        check = str(case.check)
        if check.startswith("coerce_dtype") or check.startswith("dtype"):
            continue  # reported as not_a_number by coerce_numeric
        if check == "column_in_dataframe":
            column = str(case.failure_case)
        kind, message = _CHECK_KIND.get(check, ("", ""))
        if not kind:
            if check.startswith("isin"):
                if column == spec.arm.column:
                    kind, message = "unknown_arm", (
                        f"unknown arm label (expected one of {', '.join(map(repr, spec.arm.arms))})"
                        if spec.arm.multi
                        else f"unknown arm label (expected {spec.arm.treated!r} or {spec.arm.control!r}; a trial with three or more "
                        "arms lists them under arm.arms with its control, see docs/wider-trials.md)"
                    )
                elif column in spec.covariates:
                    levels = spec.covariates[column].level_codes()
                    kind, message = "unknown_level", f"unknown level (expected one of {levels})"
                else:
                    outcome = next(o for o in spec.event_outcomes().values() if o.column == column)
                    assert outcome.event is not None
                    kind, message = "unknown_level", (
                        f"unknown event code (expected {outcome.event.present!r} for the event or {outcome.event.absent!r} for none)"
                    )
            elif check.startswith("in_range"):
                kind, message = "out_of_scale", f"outside its scale {check.removeprefix('in_range')}"
            else:
                kind, message = "check_failed", check
        if kind in {"unknown_arm", "unknown_level", "out_of_scale", "duplicate_id"}:
            message = f"{message}: {case.failure_case!r}"
        row = case.index
        key = (kind, column or "", message)
        grouped.setdefault(key, [])
        if row is not None and not (isinstance(row, float) and np.isnan(row)):
            if (column, int(row) + 1) in skip:
                continue
            grouped[key].append(int(row) + 1)
    for (kind, column, message), rows in grouped.items():
        if rows or kind == "missing_column":
            report.add("error", kind, column or None, rows, message)


def load_trial(path: str | Path, spec: DatasetSpec, catalog: LabCatalog | None = None) -> tuple[pd.DataFrame, ValidationReport]:
    """Read and validate a trial file; raise :class:`DataContractError` when it is not usable.

    Returns the frame with numeric columns as floats and the report (warnings included).
    """
    raw = read_table(path)
    report = validate(raw, spec, source=str(path), catalog=catalog)
    if not report.ok:
        raise DataContractError(report)
    return coerce_numeric(raw.reset_index(drop=True), spec), report
