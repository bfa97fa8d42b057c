"""Statistics the cohort report shows beyond the logged metrics: intervals, flags, subgroups, benefit curves.

Everything here is computed from out-of-fold predictions or the trial's own
responder labels; nothing refits a model.

- :func:`metric_intervals`: percentile bootstrap intervals for AUC and Brier
  score per arm. Patients are resampled within each arm; every draw
  recomputes the metric on each cross-validation repeat's out-of-fold
  predictions and averages over repeats, exactly as the logged metric is
  defined, so the interval is the interval of the number in the table.
  Above 50,000 patients: DeLong's normal interval for the same AUC instead.
- :func:`subgroup_effects`: prespecified subgroups (raised inflammation,
  autoantibody positivity, baseline severity; only those the spec's inputs
  allow) with the responder risk difference in each level and a test of
  equal risk differences (the interaction on the scale that is drawn).
- :func:`benefit_calibration`, :func:`decision_curve`, :func:`toc_band`:
  the calibration-for-benefit table, the decision curve for treating by
  predicted benefit and the TOC curve behind RATE, from the out-of-fold
  predictions and doubly robust scores.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from core.effects import score_interval
from features.cores import _upper_reference
from features.labs import parse_lab_series
from training import metrics as M

if TYPE_CHECKING:
    from core.spec import DatasetSpec
    from training.evaluation import CVResult, OutcomeData

LEVEL = 0.95
BOOTSTRAP = 1000
MIN_GROUP = 5  # fewer patients than this in an arm of a subgroup level: no estimate


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# Bootstrap intervals for the arm metrics ----------------------------------------------------------------
def _auc_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUC of every row of ``(y, p)`` (Mann-Whitney, ties counted half); NaN where a row has one class."""
    ranks = stats.rankdata(p, axis=1)
    n1 = y.sum(axis=1)
    n0 = y.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)


# Above this many patients the intervals use at most LARGE_N_BOOTSTRAP draws, computed in chunks of at most
# CHUNK_ELEMENTS resampled patients: 1,000 draws of 10^5 patients held 0.8 GB per matrix, and intervals
# that narrow like 1/sqrt(n) need no more. Up to it nothing changes (one chunk per arm, the same draws).
LARGE_N = 10_000
LARGE_N_BOOTSTRAP = 200
CHUNK_ELEMENTS = 4_000_000


def _arm_draws(seed: int, arms: dict[str, np.ndarray], n_boot: int, chunked: bool):
    """Per arm, the bootstrap rows in chunks of draws (one chunk unless ``chunked``); the same every call with one seed."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {}
    for arm, rows in arms.items():
        if not len(rows):
            continue
        step = max(1, min(n_boot, CHUNK_ELEMENTS // len(rows))) if chunked else n_boot
        out[arm] = [rows[rng.integers(0, len(rows), (min(step, n_boot - start), len(rows)))] for start in range(0, n_boot, step)]
    return out


def metric_intervals(
    cv: CVResult, data: OutcomeData, names: list[str], n_boot: int = BOOTSTRAP, seed: int = 0, level: float = LEVEL
) -> dict[str, dict[str, list[float | None]]]:
    """Per candidate: ``{metric: [lower, upper]}`` for AUC and Brier per arm and the Brier mean of the arms.

    Percentile bootstrap up to :data:`ANALYTIC_N` patients; above it the normal intervals of
    :func:`_analytic_intervals` (DeLong's standard error for the AUC), which the bootstrap
    approaches at that size at a fraction of its cost (tests/test_reports.py compares them).
    """
    t = np.asarray(data.t).astype(bool)
    y = np.asarray(data.y, dtype=float)
    large = len(y) > LARGE_N
    arms = {"treated": np.nonzero(t)[0], "control": np.nonzero(~t)[0]}
    if len(y) > ANALYTIC_N:
        return {name: _analytic_intervals(cv.oof[name], y, arms, level) for name in names}
    if large:
        n_boot = min(n_boot, LARGE_N_BOOTSTRAP)
    chunks = None if large else _arm_draws(seed, arms, n_boot, chunked=False)
    tail = (1 - level) / 2
    out: dict[str, dict[str, list[float | None]]] = {}
    for name in names:
        oof = cv.oof[name]  # (repeats, n, 2)
        draws = chunks if chunks is not None else _arm_draws(seed, arms, n_boot, chunked=True)  # large trials: regenerated, not held
        values: dict[str, np.ndarray] = {}
        for column, arm in ((0, "treated"), (1, "control")):
            if arm not in draws:
                continue
            auc_parts, brier_parts = [], []
            for rows in draws[arm]:
                yy = y[rows]
                auc = np.zeros(len(rows))
                brier = np.zeros(len(rows))
                for r in range(oof.shape[0]):
                    pp = oof[r, :, column][rows]
                    auc += _auc_rows(yy, pp)
                    brier += ((pp - yy) ** 2).mean(axis=1)
                auc_parts.append(auc / oof.shape[0])
                brier_parts.append(brier / oof.shape[0])
            values[f"auc_{arm}"] = np.concatenate(auc_parts)
            values[f"brier_{arm}"] = np.concatenate(brier_parts)
        if "brier_treated" in values and "brier_control" in values:
            values["brier_mean"] = (values["brier_treated"] + values["brier_control"]) / 2
        out[name] = {}
        for key, v in values.items():
            v = v[np.isfinite(v)]
            out[name][key] = [_num(np.quantile(v, tail)), _num(np.quantile(v, 1 - tail))] if len(v) else [None, None]
    return out


ANALYTIC_N = 50_000  # above this many patients: DeLong / normal intervals instead of the bootstrap (its 200 ranked draws
# of every candidate's arms took most of the 34 s the 10^5-patient curve job spent on the cohort report's payload)


def _analytic_intervals(oof: np.ndarray, y: np.ndarray, arms: dict[str, np.ndarray], level: float) -> dict[str, list[float | None]]:
    """Normal intervals for what :func:`metric_intervals` bootstraps: patients resampled within each arm.

    AUC: DeLong, DeLong & Clarke-Pearson (1988), on each patient's placement
    value averaged over the cross-validation repeats (the logged AUC is the mean
    over repeats of each repeat's AUC, which is the mean of those placements).
    Brier: each patient's squared error averaged over repeats, its mean and
    standard error. The mean of the arms' Brier scores: the arms are independent.
    """
    z = stats.norm.ppf(1 - (1 - level) / 2)
    out: dict[str, list[float | None]] = {}
    se: dict[str, float] = {}
    estimate: dict[str, float] = {}
    for column, arm in ((0, "treated"), (1, "control")):
        rows = arms[arm]
        if not len(rows):
            continue
        yy = y[rows]
        positive = yy == 1
        n1, n0 = int(positive.sum()), int((~positive).sum())
        squared = ((oof[:, rows, column] - yy) ** 2).mean(axis=0)
        estimate[arm], se[arm] = float(squared.mean()), float(squared.std(ddof=1) / np.sqrt(len(rows)))
        out[f"brier_{arm}"] = [_num(estimate[arm] - z * se[arm]), _num(estimate[arm] + z * se[arm])]
        if n1 < 2 or n0 < 2:
            out[f"auc_{arm}"] = [None, None]
            continue
        v10, v01 = np.zeros(n1), np.zeros(n0)  # placements: of each responder among non-responders, and the reverse
        for r in range(oof.shape[0]):
            p = oof[r, rows, column]
            every = stats.rankdata(p)
            v10 += (every[positive] - stats.rankdata(p[positive])) / n0
            v01 += 1 - (every[~positive] - stats.rankdata(p[~positive])) / n1
        v10, v01 = v10 / oof.shape[0], v01 / oof.shape[0]
        auc = float(v10.mean())
        half = z * float(np.sqrt(v10.var(ddof=1) / n1 + v01.var(ddof=1) / n0))
        out[f"auc_{arm}"] = [_num(max(0.0, auc - half)), _num(min(1.0, auc + half))]
    if len(se) == 2:
        mean, half = (estimate["treated"] + estimate["control"]) / 2, z * float(np.hypot(se["treated"], se["control"])) / 2
        out["brier_mean"] = [_num(mean - half), _num(mean + half)]
    return out


# Prespecified subgroups ------------------------------------------------------------------------------------
def _lab_values(X: pd.DataFrame, spec: DatasetSpec, analyte: str) -> np.ndarray:
    lab_spec = spec.labs[analyte]
    if lab_spec.column not in X.columns:
        return np.full(len(X), np.nan)
    units = X[f"{lab_spec.column}_unit"] if f"{lab_spec.column}_unit" in X.columns else None
    value, _, _ = parse_lab_series(X[lab_spec.column], spec.lab_catalog()[analyte], lab_spec.column, lab_spec.unit, units)
    return value


def _any_of(flags: list[np.ndarray], measured: list[np.ndarray]) -> np.ndarray:
    """1 if any measured flag is set, 0 if at least one is measured and none is set, NaN if none is measured."""
    hit = np.zeros(len(flags[0]), bool)
    seen = np.zeros(len(flags[0]), bool)
    for flag, ok in zip(flags, measured, strict=True):
        hit |= flag & ok
        seen |= ok
    return np.where(seen, hit.astype(float), np.nan)


def subgroup_definitions(X: pd.DataFrame, spec: DatasetSpec, outcome: str) -> list[dict[str, Any]]:
    """The prespecified subgroups the spec's inputs allow: membership (1/0/NaN) and level names."""
    catalog = spec.lab_catalog()
    groups: list[dict[str, Any]] = []
    inflammation = [a for a in spec.labs if catalog[a].group == "inflammation"]
    if inflammation:
        age = pd.to_numeric(X[spec.roles.age], errors="coerce").to_numpy(dtype=float) if spec.roles.age in X.columns else None
        female = None
        if spec.roles.sex and spec.roles.sex in X.columns:
            female = X[spec.roles.sex].astype(str).to_numpy() == str(spec.roles.female)
        flags, measured = [], []
        for analyte in inflammation:
            lab = catalog[analyte]
            value = _lab_values(X, spec, analyte)
            limit = np.broadcast_to(_upper_reference(lab, age, female), value.shape)
            ok = np.isfinite(value)
            flags.append(ok & (value > limit))
            measured.append(ok)
        names = ", ".join(catalog[a].label for a in inflammation)
        groups.append(
            {
                "key": "inflammation",
                "label": "Raised inflammation",
                "definition": (
                    f"{names} above {'its' if len(inflammation) == 1 else 'any of their'} upper reference limit"
                    f"{'' if len(inflammation) == 1 else 's'} (lab catalog"
                    f"{'; ESR by age and sex' if any(catalog[a].reference_rule for a in inflammation) else ''})"
                ),
                "levels": ("above the reference limit" if len(inflammation) == 1 else "at least one marker raised", "none raised"),
                "member": _any_of(flags, measured),
            }
        )
    autoantibody = [a for a in spec.labs if catalog[a].group == "autoantibody" and catalog[a].positive_at is not None]
    if autoantibody:
        flags, measured = [], []
        for analyte in autoantibody:
            value = _lab_values(X, spec, analyte)
            ok = np.isfinite(value)
            flags.append(ok & (value >= catalog[analyte].positive_at))
            measured.append(ok)
        names = ", ".join(catalog[a].label for a in autoantibody)
        groups.append(
            {
                "key": "autoantibody",
                "label": "Autoantibody positive",
                "definition": f"{names} at or above the catalog's positivity cut-off (any)",
                "levels": ("positive", "negative"),
                "member": _any_of(flags, measured),
            }
        )
    baseline = spec.outcomes[outcome].baseline
    if baseline is not None and baseline in X.columns:
        value = pd.to_numeric(X[baseline], errors="coerce").to_numpy(dtype=float)
        if np.isfinite(value).sum() > 1:
            median = float(np.nanmedian(value))
            high = value >= median
            if 0 < high[np.isfinite(value)].sum() < np.isfinite(value).sum():
                label = spec.baseline_label(baseline) if baseline in spec.baseline_score_columns() else baseline
                groups.append(
                    {
                        "key": "severity",
                        "label": "Baseline severity",
                        "definition": f"{label} at or above the trial median ({median:g})",
                        "levels": (f">= {median:g}", f"< {median:g}"),
                        "member": np.where(np.isfinite(value), high.astype(float), np.nan),
                    }
                )
    return groups


def _effect(y: np.ndarray, t: np.ndarray) -> dict[str, Any]:
    r_t, n_t = int(y[t].sum()), int(t.sum())
    r_c, n_c = int(y[~t].sum()), int((~t).sum())
    row: dict[str, Any] = {"n": n_t + n_c, "responders_treated": r_t, "n_treated": n_t, "responders_control": r_c, "n_control": n_c,
                           "risk_difference": None, "lower": None, "upper": None}
    if n_t >= MIN_GROUP and n_c >= MIN_GROUP:
        low, high = score_interval(r_t, n_t, r_c, n_c, LEVEL)
        row.update(risk_difference=_num(r_t / n_t - r_c / n_c), lower=_num(low), upper=_num(high))
    return row


def _adjusted_rd(y: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Risk difference and its variance with one success and one failure added per arm (Agresti-Caffo)."""
    r_t, n_t = y[t].sum() + 1, t.sum() + 2
    r_c, n_c = y[~t].sum() + 1, (~t).sum() + 2
    p_t, p_c = r_t / n_t, r_c / n_c
    return float(p_t - p_c), float(p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c)


def subgroup_effects(X: pd.DataFrame, t: np.ndarray, y: np.ndarray, spec: DatasetSpec, outcome: str) -> dict[str, Any]:
    """Responder risk difference overall and in each level of each prespecified subgroup, with interaction p-values.

    Interval: Miettinen-Nurminen score interval (as the average effect).
    Interaction: Wald test that the two levels' risk differences are equal,
    each with the Agresti-Caffo variance (stable with 0% or 100% response).
    Unadjusted for multiplicity: exploratory, as subgroup analyses of a trial are.
    """
    t = np.asarray(t).astype(bool)
    y = np.asarray(y, dtype=float)
    out: dict[str, Any] = {"overall": _effect(y, t), "groups": []}
    for group in subgroup_definitions(X.reset_index(drop=True), spec, outcome):
        member = group["member"]
        levels = []
        estimates = []
        for value, name in zip((1.0, 0.0), group["levels"], strict=True):
            rows = member == value
            levels.append({"label": name, **_effect(y[rows], t[rows])})
            if t[rows].sum() and (~t[rows]).sum():
                estimates.append(_adjusted_rd(y[rows], t[rows]))
        p = None
        if len(estimates) == 2 and all(lv["risk_difference"] is not None for lv in levels):
            (d1, v1), (d0, v0) = estimates
            p = _num(2 * stats.norm.sf(abs(d1 - d0) / math.sqrt(v1 + v0)))
        out["groups"].append(
            {
                "key": group["key"],
                "label": group["label"],
                "definition": group["definition"],
                "levels": levels,
                "unknown": int(np.isnan(member).sum()),
                "interaction_p": p,
            }
        )
    return out


# Benefit curves from out-of-fold predictions ------------------------------------------------------------
def benefit_calibration(benefit: np.ndarray, t: np.ndarray, y: np.ndarray, groups: int | None = None) -> list[dict[str, Any]]:
    """Observed vs predicted benefit by quantile group of predicted benefit (observed: responder risk difference)."""
    benefit, t, y = np.asarray(benefit, float), np.asarray(t).astype(bool), np.asarray(y, float)
    n = len(benefit)
    groups = groups or max(2, min(5, n // 30))
    edges = np.unique(np.quantile(benefit, np.linspace(0, 1, groups + 1)))
    index = np.clip(np.searchsorted(edges, benefit, side="right") - 1, 0, max(len(edges) - 2, 0))
    rows = []
    for g in np.unique(index):
        rows_g = index == g
        effect = _effect(y[rows_g], t[rows_g])
        rows.append({"predicted": _num(benefit[rows_g].mean()), **effect})
    return rows


def decision_curve(benefit: np.ndarray, psi: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Net benefit (extra responders per patient, minus the threshold per patient treated) of three policies.

    Treating the patients whose predicted benefit exceeds a threshold gains
    ``mean(psi * treat)`` responders per patient (doubly robust scores, so the
    gain is estimated from the randomised comparison, not from the model's own
    predictions) and costs ``threshold * mean(treat)``; treating everyone gains
    ``mean(psi)`` at cost ``threshold``; treating no one is 0 (Vickers, Kattan
    and Sargent, Trials 2007;8:14).
    """
    benefit, psi = np.asarray(benefit, float), np.asarray(psi, float)
    treat = benefit[None, :] > thresholds[:, None]
    model = (psi[None, :] * treat).mean(axis=1) - thresholds * treat.mean(axis=1)
    everyone = psi.mean() - thresholds
    return {"threshold": thresholds, "model": model, "all": everyone, "none": np.zeros_like(thresholds)}


def toc_band(benefit: np.ndarray, psi: np.ndarray, grid: np.ndarray, n_boot: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """The TOC curve on ``grid`` (fractions treated) and a percentile bootstrap 95% band (patients resampled)."""
    benefit, psi = np.asarray(benefit, float), np.asarray(psi, float)
    q, toc = M.toc_curve(benefit, psi)
    curve = np.interp(grid, q, toc)
    if n_boot <= 0:
        return curve, None
    draws = np.empty((n_boot, len(grid)))
    for b, rows in enumerate(M.bootstrap_orders(benefit, n_boot, seed)):
        qb, tb = M.toc_sorted(psi[rows])
        draws[b] = np.interp(grid, qb, tb)
    return curve, np.quantile(draws, [0.025, 0.975], axis=0)
