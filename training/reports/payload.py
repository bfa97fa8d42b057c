"""The cohort report's payload: every number and array the cohort report shows, computed once at training time.

A training job builds the payload from the trial frame and its
:class:`~training.train.OutcomeResult` objects and logs it to the parent MLflow
run (``reports/payload.json`` plus Parquet parts under ``reports/payload/``),
so ``responders report cohort --run RUN_ID`` re-renders the same report from
MLflow alone, without the data file or a refit. Metrics are copied from the
same cross-validation summary the job logs as MLflow metrics, never
recomputed, so the report and the tracking store cannot disagree.

Numbers that are not logged metrics are computed here once, at training time,
from the same out-of-fold predictions and responder labels: bootstrap
intervals for AUC and Brier, the worse-than-chance flags, the prespecified
subgroups and, for a simulated trial, its distance from the published one
(``training.reports.analysis``, ``training.published``).

Parts hold pseudonymised per-patient arrays (no patient ids): out-of-fold
predictions for the calibration, Qini, TOC, calibration-for-benefit and
decision curves, and SHAP contributions of the champion on the training cohort
for the beeswarm and dependence plots.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.candidates import FLOOR, candidate_label
from core.labelling import Wording
from core.labels import responder_labels
from core.runtime.artefact import ResponderModel
from core.runtime.explain import explain_patients
from core.spec import DEFAULT_SPEC, DatasetSpec, level_key
from features.labs import parse_lab_series
from training.diagnostics import describe as describe_diagnostics
from training.evaluation import SELECTED
from training.published import PUBLISHED_FINAL, comparison
from training.reports.analysis import chance_flags, metric_intervals, subgroup_effects
from training.results import HEADLINE
from training.tracking import metric_value

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from core.config import TrainConfig
    from core.data import ValidationReport
    from training.results import OutcomeResult

log = logging.getLogger("responders.reports")

SCHEMA_VERSION = 3  # 3: answers (estimands), PATH analysis, calibrated heterogeneity test
ARTIFACT_DIR = "reports"
PAYLOAD_FILE = "payload.json"
PARTS_DIR = "payload"
MAX_SHAP_ROWS = 1000  # a beeswarm of more points adds nothing and explain time grows linearly (registries of 1e5 rows)
METRIC_BOOTSTRAP = 1000  # draws for the AUC and Brier intervals

SIMULATED_NAME = re.compile(r"^(?P<scenario>final|null|strong)-n(?P<n>\d+)-seed(?P<seed>\d+)$")


# Small helpers ----------------------------------------------------------------------------------
def _num(value: Any) -> float | None:
    """JSON-safe float, rounded as MLflow metrics are logged (:func:`training.tracking.metric_value`); None for missing or non-finite values."""
    if value is None:
        return None
    value = float(value)
    return metric_value(value) if math.isfinite(value) else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _mean_sd(x: np.ndarray, digits: int = 1) -> str:
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return "n/a"
    sd = float(np.std(x, ddof=1)) if len(x) > 1 else float("nan")
    return f"{_fmt(float(np.mean(x)), digits)} ({_fmt(sd, digits)})"


def _median_iqr(x: np.ndarray, digits: int = 1) -> str:
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return "n/a"
    q1, q2, q3 = np.quantile(x, [0.25, 0.5, 0.75])
    return f"{q2:.{digits}f} [{q1:.{digits}f} to {q3:.{digits}f}]"


def _censored_median_iqr(x: np.ndarray, below: np.ndarray, lod: float | None, digits: int) -> str:
    """Median [IQR] of a lab with values below the detection limit, which are only known to be below it.

    A quartile that falls among the censored values is shown as ``< LOD``; when
    most measured values are censored the median itself is, and the count
    below the limit is shown instead of a number that would only repeat the
    substituted value.
    """
    measured = ~np.isnan(x)
    n = int(measured.sum())
    if n == 0:
        return "n/a"
    censored = int((below[measured] > 0).sum())
    if lod is None or censored == 0:
        return _median_iqr(x, digits)
    limit = f"< {lod:g}"
    if censored * 2 >= n:
        return f"{limit} in {censored}/{n} ({100 * censored / n:.0f}%)"
    fraction = censored / n
    values = np.quantile(x[measured], [0.25, 0.5, 0.75])
    shown = [limit if q <= fraction else f"{v:.{digits}f}" for q, v in zip((0.25, 0.5, 0.75), values, strict=True)]
    return f"{shown[1]} [{shown[0]} to {shown[2]}]"


def _digits(x: np.ndarray) -> int:
    """Decimals that suit the scale of a lab (IL-1beta near 0.7 needs two, ESR near 12 none)."""
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return 1
    median = abs(float(np.median(x)))
    return 2 if median < 1 else 1 if median < 20 else 0


def _count_pct(hits: int, total: int) -> str:
    return f"{hits}/{total} ({100 * hits / total:.0f}%)" if total else "0/0"


# Provenance -------------------------------------------------------------------------------------
def data_provenance(frame: pd.DataFrame, data_path: str | Path, digest: str, spec: DatasetSpec) -> dict[str, Any]:
    """Where the training data came from, and whether it is simulated.

    A file with ``true_*`` ground-truth columns is simulated (only the
    simulator writes them). ``responders simulate`` names files
    ``<scenario>-n<N>-seed<S>`` (the Makefile's default); when the name says
    so, the scenario is recorded. The published FINAL figures are set beside
    the results for simulated data from the default spec unless the file is
    known to come from another scenario than ``final``.
    """
    truth = [c for c in frame.columns if str(c).startswith("true_")]
    simulated = bool(truth)
    match = SIMULATED_NAME.match(Path(data_path).stem)
    scenario = match.group("scenario") if (simulated and match) else None
    seed = int(match.group("seed")) if (simulated and match) else None
    return {
        "source": Path(data_path).name,
        "digest": digest,
        "n_rows": len(frame),
        "simulated": simulated,
        "scenario": scenario,
        "seed": seed,
        "ground_truth_columns": len(truth),
        "compare_published": simulated and spec.name == DEFAULT_SPEC and scenario in (None, "final"),
    }


# Table 1 ------------------------------------------------------------------------------------------
def _suffixes(spec: DatasetSpec) -> tuple[str, str]:
    """Baseline and follow-up column suffixes of the spec's first outcome with a baseline (``_baseline``, ``_week12``)."""
    first = next((o for o in spec.outcomes.values() if o.baseline is not None), None)
    if first is None or first.baseline is None:
        return "", ""
    common = _common_prefix(first.baseline, first.column)
    if "_" not in common:
        return "", ""
    prefix = common[: common.rindex("_")]  # whole name parts only: wb_0 / wb_26 give _0 / _26, not 0 / 26
    return first.baseline[len(prefix):], first.column[len(prefix):]


def _is_symptom_score(spec: DatasetSpec, column: str) -> bool:
    suffix = _suffixes(spec)[0]
    return bool(suffix) and column.endswith(suffix)


def _arms(frame: pd.DataFrame, spec: DatasetSpec) -> list[tuple[str, np.ndarray]]:
    treated = spec.arm.is_treated(frame[spec.arm.column])
    return [(spec.treated_display(), treated), (spec.control_display(), ~treated), ("All", np.ones(len(frame), bool))]


def table_one(frame: pd.DataFrame, spec: DatasetSpec, published: bool) -> dict[str, Any]:
    """Baseline characteristics by arm, as in a trial paper's Table 1."""
    catalog = spec.lab_catalog()
    arms = _arms(frame, spec)
    rows: list[dict[str, Any]] = []

    def add(group: str, label: str, values: list[str], notes: list[str] | None = None, published_value: str | None = None) -> None:
        rows.append({"group": group, "label": label, "values": values, "notes": notes or ["" for _ in values], "published": published_value})

    add("Patients", "Randomised, n", [str(int(m.sum())) for _, m in arms],
        published_value=f"{PUBLISHED_FINAL['n']['treated']} / {PUBLISHED_FINAL['n']['control']}" if published else None)
    for column, cov in spec.covariates.items():
        if column not in frame.columns or _is_symptom_score(spec, column):
            continue
        label = cov.label or column
        if cov.kind == "categorical":
            values = frame[column].map(level_key)
            names = cov.level_names()
            for level in cov.level_codes():
                add("Demographics", f"{label}: {names.get(level, level)}, n (%)",
                    [_count_pct(int((values[m] == level).sum()), int(m.sum())) for _, m in arms])
            missing = [int(values[m].isna().sum()) for _, m in arms]
            if any(missing):
                add("Demographics", f"{label}: not recorded, n (%)", [_count_pct(k, int(m.sum())) for k, (_, m) in zip(missing, arms, strict=True)])
            continue
        x = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        skewed = abs(float(pd.Series(x).skew())) > 1 if np.isfinite(x).sum() > 2 else False
        stat, summarise = ("median [IQR]", _median_iqr) if skewed else ("mean (SD)", _mean_sd)
        missing = [int(np.isnan(x[m]).sum()) for _, m in arms]
        notes = [f"{k} missing" if k else "" for k in missing]
        unit = f", {cov.unit}" if cov.unit else ""
        pub = PUBLISHED_FINAL["age"] if (published and column == spec.roles.age) else None
        add("Demographics", f"{label}{unit}, {stat}", [summarise(x[m]) for _, m in arms], notes, pub)

    scores = [(c, spec.baseline_outcome(c).baseline_label or spec.baseline_outcome(c).label) for c in spec.baseline_score_columns()]
    scores += [(c, cov.label or c) for c, cov in spec.covariates.items() if cov.kind == "numeric" and _is_symptom_score(spec, c)]
    group = "Baseline symptoms" if spec.cognitive_dominance is not None else "Baseline scores"
    for column, label in scores:
        if column not in frame.columns:
            continue
        x = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        pub = PUBLISHED_FINAL["baseline"].get(column) if published else None
        add(group, f"{label}, mean (SD)", [_mean_sd(x[m]) for _, m in arms], published_value=f"{pub} (all)" if pub else None)

    positivity: list[tuple[str, np.ndarray, np.ndarray, str]] = []
    for analyte, lab_spec in spec.labs.items():
        lab = catalog[analyte]
        if lab_spec.column not in frame.columns:
            continue
        units = frame[f"{lab_spec.column}_unit"] if f"{lab_spec.column}_unit" in frame.columns else None
        value, below, _ = parse_lab_series(frame[lab_spec.column], lab, lab_spec.column, lab_spec.unit, units)
        group = {"inflammation": "Inflammation labs", "autoantibody": "Autoantibodies"}.get(lab.group or "", "Labs")
        if lab.kind == "quantitative":
            digits = _digits(value)
            notes = []
            for _, m in arms:
                parts = []
                missing = int(np.isnan(value[m]).sum())
                if missing:
                    parts.append(f"{100 * missing / m.sum():.0f}% missing")
                n_below = int((below[m] > 0).sum())
                if n_below:
                    parts.append(f"{n_below} below LOD")
                notes.append("; ".join(parts))
            add(group, f"{lab.label}, {lab.unit}, median [IQR]", [_censored_median_iqr(value[m], below[m], lab.lod, digits) for _, m in arms], notes)
        if lab.positive_at is not None:
            cut = f"1:{lab.positive_at:g}" if lab.kind == "titre" else f"{lab.positive_at:g} {lab.unit}"
            positivity.append((f"{lab.label} positive (>= {cut}), n/N measured (%)", value, value >= lab.positive_at, analyte))
    for label, value, positive, _ in positivity:
        measured = ~np.isnan(value)
        add("Autoantibody positivity", label, [_count_pct(int((positive & measured & m).sum()), int((measured & m).sum())) for _, m in arms])
    return {"columns": [name for name, _ in arms], "rows": rows}


# Outcome changes (ANCOVA) and responder rates ---------------------------------------------------
def _outcome_pairs(spec: DatasetSpec) -> list[dict[str, Any]]:
    """Spec outcomes (primary analysis of this job) and secondary pairs named like them (e.g. fatigue_week12)."""
    pairs = [
        {"key": name, "label": o.label, "baseline": o.baseline, "followup": o.column, "role": "modelled", "better": o.better}
        for name, o in spec.outcomes.items()
        if o.kind == "score"
    ]
    base_suffix, follow_suffix = _suffixes(spec)
    if base_suffix and follow_suffix:
        known = set(spec.followup_columns())
        for column in spec.auxiliary:
            if column in known or not column.endswith(follow_suffix):
                continue
            baseline = column[: -len(follow_suffix)] + base_suffix
            if baseline in spec.covariates:
                label = spec.covariates[baseline].label or baseline
                pairs.append({"key": baseline.removesuffix(base_suffix), "label": label, "baseline": baseline,
                              "followup": column, "role": "secondary", "better": "lower"})
    return pairs


def _common_prefix(a: str, b: str) -> str:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return a[:k]


def outcome_changes(frame: pd.DataFrame, spec: DatasetSpec, published: bool) -> list[dict[str, Any]]:
    """Change from baseline by arm: mean (SD), 95% CI; difference by ANCOVA adjusting for baseline (complete cases)."""
    from scipy import stats
    from statsmodels.regression.linear_model import OLS  # not statsmodels.api: that imports every submodule (seconds)

    treated = spec.arm.is_treated(frame[spec.arm.column])
    out = []
    for pair in _outcome_pairs(spec):
        if pair["followup"] not in frame.columns or (pair["baseline"] is not None and pair["baseline"] not in frame.columns):
            continue
        follow = pd.to_numeric(frame[pair["followup"]], errors="coerce").to_numpy(dtype=float)
        # Without a baseline the comparison is of the follow-up values themselves, unadjusted.
        has_baseline = pair["baseline"] is not None
        base = pd.to_numeric(frame[pair["baseline"]], errors="coerce").to_numpy(dtype=float) if has_baseline else np.zeros(len(frame))
        change = follow - base
        ok = np.isfinite(change)
        row: dict[str, Any] = {**pair, "n_missing": int((~ok).sum()), "measure": "change" if has_baseline else "follow-up"}
        for arm, rows in (("treated", treated & ok), ("control", ~treated & ok)):
            x = change[rows]
            n = len(x)
            mean = float(np.mean(x)) if n else float("nan")
            sd = float(np.std(x, ddof=1)) if n > 1 else float("nan")
            half = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if n > 1 else float("nan")
            row[arm] = {"n": n, "mean": _num(mean), "sd": _num(sd), "lower": _num(mean - half), "upper": _num(mean + half)}
        columns = [np.ones(int(ok.sum())), treated[ok].astype(float)] + ([base[ok]] if has_baseline else [])
        design = np.column_stack(columns)
        if ok.sum() > 3 and 0 < treated[ok].sum() < ok.sum():
            fit = OLS(change[ok], design).fit()
            lower, upper = fit.conf_int()[1]
            row["difference"] = {"estimate": _num(fit.params[1]), "lower": _num(lower), "upper": _num(upper), "p": _num(fit.pvalues[1])}
        else:
            row["difference"] = {"estimate": None, "lower": None, "upper": None, "p": None}
        row["published"] = PUBLISHED_FINAL["changes"].get(pair["key"]) if (published and pair["role"] == "modelled") else None
        out.append(row)
    return out


def responder_rates(frame: pd.DataFrame, spec: DatasetSpec, config: TrainConfig, published: bool) -> list[dict[str, Any]]:
    """Responders by arm under each outcome's rule (as trained); the difference is the job's average effect (see ``effect``)."""
    treated = spec.arm.is_treated(frame[spec.arm.column])
    out = []
    for name, outcome in spec.outcomes.items():
        labels, counts = responder_labels(frame, outcome, config.responder_rules.get(name), config.missing_followup)
        y = labels.to_numpy(dtype=float)
        ok = ~np.isnan(y)
        r_t, n_t = int(y[treated & ok].sum()), int((treated & ok).sum())
        r_c, n_c = int(y[~treated & ok].sum()), int((~treated & ok).sum())
        out.append(
            {
                "outcome": name,
                "label": outcome.label,
                "rule": counts.rule,
                "missing_followup": counts.missing_followup,
                "missing_policy": counts.missing_policy,
                "kind": outcome.kind,
                "effect": None,  # the job's average effect (Miettinen-Nurminen, Holm), filled from its results
                "sensitivity": None,  # filled from the job's results (missing_followup_sensitivity) when computed
                "treated": {"responders": r_t, "n": n_t, "rate": _num(r_t / n_t) if n_t else None},
                "control": {"responders": r_c, "n": n_c, "rate": _num(r_c / n_c) if n_c else None},
                "published": PUBLISHED_FINAL["responders"].get(name) if published else None,
            }
        )
    return out


# Models: candidates, evidence, SHAP ----------------------------------------------------------------
def _floor_only(result: OutcomeResult, name: str) -> bool:
    """Whether a row's predictions are the arm-only floor's: one probability per arm, no ranking to judge."""
    if name == FLOOR:
        return True
    selections = result.cv.selections
    return name == SELECTED and sum(selections.values()) > 0 and selections.get(FLOOR, 0) == sum(selections.values())


def candidate_rows(
    result: OutcomeResult, headline: list[str], arm_names: tuple[str, str] = ("treated", "control"), seed: int = 0
) -> list[dict[str, Any]]:
    """One row per candidate (and the nested selection procedure): out-of-fold metrics as logged, intervals, flags.

    AUC and Brier intervals are percentile bootstrap intervals over the
    out-of-fold predictions (:func:`training.reports.analysis.metric_intervals`).
    A row is flagged when it predicts worse than chance out of fold (AUC below
    0.5 or a negative calibration slope in an arm), except the arm-only floor,
    which gives every patient of an arm the same probability by design: its AUC
    and slope only reflect fold-to-fold noise.
    """
    summary = result.cv.summary
    names = [str(name) for name in summary.index]
    intervals = metric_intervals(result.cv, result.data, [n for n in names if n in result.cv.oof], METRIC_BOOTSTRAP, seed)
    rows = []
    for name in names:
        metrics = {k: _num(summary.loc[name, k]) for k in headline if k in summary.columns}
        floor = _floor_only(result, name)
        rows.append(
            {
                "name": name,
                "label": candidate_label(name) if name in result.cv.selections else "Nested selection (inner-loop choice per outer fold)",
                "times_selected": result.cv.selections.get(name),
                "is_procedure": name == result.procedure,
                "is_champion": name == result.champion,
                "metrics": metrics,
                "intervals": intervals.get(name, {}),
                "floor_only": floor,
                "flags": [] if floor else chance_flags(metrics, arm_names),
            }
        )
    return rows


def shap_cohort(model: ResponderModel, X: pd.DataFrame, seed: int) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """SHAP contributions of the champion on the training cohort, through :func:`explain_patients` only.

    Returns feature metadata and three frames (rows = patients, columns = the
    pipeline's feature names): contributions to the benefit, contributions to
    P(responder | naltrexone), and the engineered feature values; plus base
    values and outputs per row.
    """
    rows = X.reset_index(drop=True)
    subsampled = len(rows) > MAX_SHAP_ROWS
    if subsampled:
        rows = rows.sample(MAX_SHAP_ROWS, random_state=seed).reset_index(drop=True)
    info = model.feature_info()
    names = list(info)
    index = {name: j for j, name in enumerate(names)}
    explanations = explain_patients(model, rows)
    benefit = np.zeros((len(rows), len(names)))
    treated = np.zeros((len(rows), len(names)))
    bases = np.zeros((len(rows), 4))
    for i, explanation in enumerate(explanations):
        for matrix, output in ((benefit, explanation.benefit), (treated, explanation.p_response_treated)):
            for name, value in output.features.items():
                matrix[i, index[name]] = value
        bases[i] = (
            explanation.benefit.base_value,
            explanation.benefit.prediction,
            explanation.p_response_treated.base_value,
            explanation.p_response_treated.prediction,
        )
    features = model.features(rows).reset_index(drop=True)[names].astype(float)
    mean_abs = np.abs(benefit).mean(axis=0)

    def top(group: str) -> str | None:
        candidates = [(mean_abs[index[n]], n) for n, meta in info.items() if meta.group == group]
        best = max(candidates, default=(0.0, None))
        return best[1] if best[0] > 0 else None

    meta = {
        "n": len(rows),
        "n_cohort": len(X),
        "subsampled": subsampled,
        "features": names,
        "labels": [info[n].short for n in names],
        "groups": [info[n].group for n in names],
        "units": [info[n].unit for n in names],
        "descriptions": [info[n].description for n in names],
        "mean_abs_benefit": [_num(v) for v in mean_abs],
        "mean_abs_p_treated": [_num(v) for v in np.abs(treated).mean(axis=0)],
        "top_inflammation": top("inflammation"),
        "top_autoantibody": top("autoantibody"),
        "max_additivity_error": _num(
            max(max(e.benefit.additivity_error, e.p_response_treated.additivity_error) for e in explanations) if explanations else 0.0
        ),
    }
    parts = {
        "shap_benefit": pd.DataFrame(benefit, columns=names),
        "shap_p_treated": pd.DataFrame(treated, columns=names),
        "features": features,
        "base": pd.DataFrame(bases, columns=["base_benefit", "benefit", "base_p_treated", "p_treated"]),
    }
    return meta, parts


def oof_frame(result: OutcomeResult) -> pd.DataFrame:
    """The champion's out-of-fold predictions (averaged over repeats), as logged in evaluation/oof_predictions.parquet."""
    cv, data = result.cv, result.data
    p = cv.oof[result.procedure].mean(axis=0)
    return pd.DataFrame(
        {"t": data.t, "y": data.y, "p1": p[:, 0], "p0": p[:, 1], "benefit": cv.mean_benefit(result.procedure), "psi": cv.psi.mean(axis=0)}
    )


def _verdict(evidence: bool, tested: bool) -> str:
    if not tested:
        return "Effect modification not tested"
    return "Evidence of effect modification" if evidence else "No reliable evidence of effect modification"


# The payload ------------------------------------------------------------------------------------------
@dataclass
class CohortPayload:
    """Everything the cohort report shows: JSON-able ``meta`` plus per-patient ``parts`` (Parquet)."""

    meta: dict[str, Any]
    parts: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def outcomes(self) -> dict[str, dict[str, Any]]:
        """Per outcome: metrics as logged, candidates, evidence, SHAP feature metadata, registry outcome."""
        return self.meta["outcomes"]

    def part(self, outcome: str, name: str) -> pd.DataFrame:
        """One per-patient table of an outcome: ``oof``, ``shap_benefit``, ``shap_p_treated``, ``features`` or ``base``."""
        return self.parts[f"{outcome}__{name}"]

    def save(self, directory: str | Path) -> Path:
        """Write ``payload.json`` and ``payload/<part>.parquet`` under ``directory``."""
        directory = Path(directory)
        (directory / PARTS_DIR).mkdir(parents=True, exist_ok=True)
        (directory / PAYLOAD_FILE).write_text(json.dumps(self.meta, indent=1, allow_nan=False))
        for name, frame in self.parts.items():
            frame.to_parquet(directory / PARTS_DIR / f"{name}.parquet", index=False)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> CohortPayload:
        directory = Path(directory)
        meta = json.loads((directory / PAYLOAD_FILE).read_text())
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"report payload schema {meta.get('schema_version')!r} is not {SCHEMA_VERSION}: re-run the training job")
        parts = {p.stem: pd.read_parquet(p) for p in sorted((directory / PARTS_DIR).glob("*.parquet"))}
        return cls(meta, parts)

    def log_to_mlflow(self, artifact_dir: str = ARTIFACT_DIR) -> None:
        """Log the payload to the active MLflow run under ``reports/`` (a comparison's: ``reports/<comparison>/``)."""
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            self.save(tmp)
            mlflow.log_artifact(str(Path(tmp) / PAYLOAD_FILE), artifact_path=artifact_dir)
            mlflow.log_artifacts(str(Path(tmp) / PARTS_DIR), artifact_path=f"{artifact_dir}/{PARTS_DIR}")

    @classmethod
    def from_mlflow(cls, run_id: str, tracking_uri: str, artifact_dir: str = ARTIFACT_DIR) -> CohortPayload:
        """Download and load the payload logged by the training job ``run_id`` (a comparison's: ``reports/<comparison>``)."""
        import mlflow
        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / ARTIFACT_DIR
            try:
                for name in (PAYLOAD_FILE, PARTS_DIR):
                    mlflow.artifacts.download_artifacts(
                        run_id=run_id, artifact_path=f"{artifact_dir}/{name}", dst_path=str(local), tracking_uri=tracking_uri
                    )
            except (MlflowException, OSError) as err:
                raise LookupError(f"run {run_id} has no cohort report payload ({artifact_dir}/{PAYLOAD_FILE}): {err}") from err
            return cls.load(local)


def latest_training_run(client: MlflowClient, experiment_name: str) -> str:
    """The newest finished training job of an experiment (the parent run, tagged ``job = train``)."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise LookupError(f"no MLflow experiment {experiment_name!r}: run `responders train` first")
    runs = client.search_runs(
        [experiment.experiment_id],
        "tags.job = 'train' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise LookupError(f"no finished training run in experiment {experiment_name!r}")
    return runs[0].info.run_id


def build_cohort_payload(
    frame: pd.DataFrame,
    spec: DatasetSpec,
    config: TrainConfig,
    results: dict[str, OutcomeResult],
    provenance: dict[str, Any],
    validation: ValidationReport,
    parent_run_id: str,
    experiment_id: str,
) -> CohortPayload:
    """Compute the cohort payload from a training job's frame and results (before promotion; see :func:`add_registry`)."""
    started = time.perf_counter()
    published = bool(provenance.get("compare_published"))
    parts: dict[str, pd.DataFrame] = {}
    outcomes: dict[str, dict[str, Any]] = {}
    for name, result in results.items():
        assert result.model is not None, "build the payload after the champion is fitted"
        perm = result.permutation
        tested = bool(perm.tested)
        shap_meta, shap_parts = shap_cohort(result.model, result.data.X, config.seed)
        for part, table in shap_parts.items():
            parts[f"{name}__{part}"] = table
        parts[f"{name}__oof"] = oof_frame(result)
        outcome = spec.outcomes[name]
        wording = Wording.of(outcome)
        candidates = candidate_rows(result, HEADLINE, (spec.treated_display(), spec.control_display()), config.seed)
        outcomes[name] = {
            "label": outcome.label,
            "responder_rule": result.counts.rule,
            "n_patients": result.counts.n,
            "n_responders": result.counts.responders,
            "n_missing_followup": result.counts.missing_followup,
            "missing_policy": result.counts.missing_policy,
            "run_id": result.run_id,
            "procedure": result.procedure,
            "champion": result.champion,
            "champion_label": candidate_label(result.champion),
            "reason": result.reason,
            "metrics": {k: _num(result.cv.summary.loc[result.procedure, k]) for k in HEADLINE if k in result.cv.summary.columns},
            "candidates": candidates,
            "worse_than_chance": [c["label"].split(" (")[0] for c in candidates if c["flags"] and not c["is_procedure"]],
            "procedure_flags": next((c["flags"] for c in candidates if c["is_procedure"]), []),
            "subgroups": subgroup_effects(result.data.X, result.data.t, result.data.y, spec, name),
            "evidence": {
                "tested": tested,
                "subgroup_evidence": bool(result.evidence),
                "statistic": _num(perm.statistic),
                "statistic_label": perm.label,
                "per_candidate": {k: _num(v) for k, v in perm.per_candidate.items()},
                "p_value": _num(perm.p_value) if tested else None,
                "p_adjusted": _num(result.p_adjusted) if tested else None,
                "permutations": int(len(perm.null)),
                "method": perm.method,
                "null_hypothesis": perm.details.get("null") if perm.details else None,
                "stopped_early": bool(perm.stopped_early),
                "null": [float(v) for v in perm.null if math.isfinite(v)],
                "alpha": config.evidence.alpha,
                "verdict": _verdict(bool(result.evidence), tested),
            },
            "interval_level": result.model.interval_level,
            "label_rule": result.model.label_policy.describe(),
            "label_mode": result.model.label_policy.mode,
            "answer": result.answer,
            "answer_reason": result.model.label_policy.answer_reason,
            "estimand": result.model.label_policy.estimand(spec.treated_inline(), spec.control_inline(), wording),
            "event": wording.event,  # an event to prevent is told as its risk (core.labelling.Wording)
            "population_nnt": _population_nnt(wording, result.average_effect),
            "interval_kind": result.model.label_policy.interval_kind,
            "population_label": result.model.label_policy.population_label,
            "refused": result.refused,
            "path": _json_safe(result.path.to_dict()) if result.path is not None else None,
            "path_sentence": result.path.sentence() if result.path is not None else None,
            "diagnostics": _json_safe(result.model.metadata.get("bcf_diagnostics")),
            "diagnostics_sentence": describe_diagnostics(result.model.metadata.get("bcf_diagnostics")),
            "average_effect": _json_safe(result.average_effect.to_dict()) if result.average_effect is not None else None,
            "shap": shap_meta,
            "registry": {},
        }
    any_tested = any(o["evidence"]["tested"] for o in outcomes.values())
    with_evidence = [k for k, o in outcomes.items() if o["evidence"]["subgroup_evidence"]]
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "title": f"Cohort report: {spec.name}",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": {"parent_run_id": parent_run_id, "experiment_id": experiment_id},
        "spec": {
            "name": spec.name,
            "description": spec.description,
            "treated": spec.treated_display(),
            "control": spec.control_display(),
            "treated_fraction": spec.arm.treated_fraction,
            "n_labs": len(spec.labs),
            # The lab groups the dependence plots and subgroups can speak of (none for a trial without labs).
            "lab_groups": [g for g in ("inflammation", "autoantibody") if any(spec.lab_catalog()[a].group == g for a in spec.labs)],
        },
        "data": {
            **provenance,
            "validation": {"errors": len(validation.errors), "warnings": len(validation.warnings), "counts": validation.counts()},
        },
        "config": {
            "seed": config.seed,
            "cv_folds": config.cv.folds,
            "cv_repeats": config.cv.repeats,
            "inner_folds": config.cv.inner_folds,
            "criterion": config.selection.criterion,
            "floor_margin_se": config.selection.floor_margin_se,
            "candidates": list(config.candidates.enabled),
            "permutations": config.evidence.permutations,
            "evidence_method": config.evidence.method,
            "replicates": config.evidence.replicates,
            "alpha": config.evidence.alpha,
            "bootstrap_models": config.intervals.bootstrap_models,
            "interval_level": config.intervals.level,
            "metric_bootstrap": METRIC_BOOTSTRAP,
            "digest": config.digest(),
        },
        "published": PUBLISHED_FINAL if published else None,
        "published_comparison": comparison(frame, provenance.get("seed")) if published else None,
        "table1": table_one(frame, spec, published),
        "changes": outcome_changes(frame, spec, published),
        "responders": _with_effects(responder_rates(frame, spec, config, published), results),
        "outcomes": outcomes,
        "verdict": {
            "tested": any_tested,
            "evidence_outcomes": with_evidence,
            "text": _verdict(bool(with_evidence), any_tested),
        },
    }
    json.dumps(meta, allow_nan=False)  # fail now, before the champion gate, rather than when the payload is logged
    log.info("cohort report payload built in %.1f s", time.perf_counter() - started)
    return CohortPayload(meta, parts)


def _population_nnt(wording: Wording, effect: Any) -> str:
    """The number needed to treat of the trial's average effect (its Holm-adjusted interval when there is one)."""
    if effect is None or effect.risk_difference is None:
        return ""
    adjusted = effect.ci_low_adjusted is not None
    low, high = (effect.ci_low_adjusted, effect.ci_high_adjusted) if adjusted else (effect.ci_low, effect.ci_high)
    return wording.nnt(effect.risk_difference, low, high, effect.adjusted_level if adjusted and effect.adjusted_level else effect.level)


def _with_effects(rows: list[dict[str, Any]], results: dict[str, OutcomeResult]) -> list[dict[str, Any]]:
    """Each responder row with the job's average effect and its sensitivity analysis (the other missing-follow-up policy)."""
    for row in rows:
        result = results.get(row["outcome"])
        effect = getattr(result, "average_effect", None)
        row["effect"] = _json_safe(effect.to_dict()) if effect is not None else None
        sensitivity = getattr(result, "average_effect_sensitivity", None)
        row["sensitivity"] = _json_safe(sensitivity.to_dict()) if sensitivity is not None else None
        row["censoring"] = _json_safe(getattr(result, "censoring", None))
    return rows


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return _num(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def add_registry(payload: CohortPayload, results: dict[str, OutcomeResult]) -> None:
    """Record the registry outcome (version, promotion, gate) once the champion aliases have been decided."""
    for name, result in results.items():
        payload.outcomes[name]["registry"] = {
            "registered_model": result.registered_model,
            "version": result.version,
            "promoted": bool(result.promoted),
            "gate": list(result.gate),
            "champion_version": result.champion_version,
        }
