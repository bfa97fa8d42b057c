"""The trial's own tables in the cohort report: Table 1 (baseline by arm), outcome changes (ANCOVA) and responder rates.

Computed once at training time from the trial frame, beside the published
figures when the data are a simulated FINAL trial.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.labels import responder_labels
from core.spec import DatasetSpec, level_key
from features.labs import parse_lab_series
from training.published import PUBLISHED_FINAL
from training.reports.numbers import _censored_median_iqr, _count_pct, _digits, _mean_sd, _median_iqr, _num

if TYPE_CHECKING:
    from core.config import TrainConfig


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
