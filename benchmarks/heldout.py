"""Section 4: the heterogeneity test above twice ``evidence.max_patients`` (the held-out test), its level and power.

Above 2,000 patients the job's test fits BCF on a random 1,000 patients (stratified by outcome) and tests, on every other patient,
whether BCF's effect beyond a cubic in its prognosis on control predicts the patients' doubly-robust benefit scores
(:func:`training.heterogeneity.held_out_test`). The null designs are section 1's: the simulator's `null`, `ushape`
(a constant probit effect with a U-shaped prognosis: the null the test names, where a prognosis BCF misses could pass
for effect modification) and `sharp` (outcomes independent of covariates and arm). Every trial runs the test on both
outcomes with Holm's correction, as the job does. On `final` and `strong` the section also scores the test's own BCF
fit on the trial's held-out patients: the AUC with which its predicted benefit picks out the top quarter of their true
benefit (the simulator's ``true_benefit_*``), and how often the test rejects when that AUC is at least 0.9.
"""

from __future__ import annotations

import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import (
    auc_top_quarter,
    fmt_rate,
    md_table,
    outcome_data_mask,
    per_size_bounds,
    quiet_environment,
    wilson,
)

OUTCOMES = ("pain", "memory")
NULLS = ("null", "ushape", "sharp")
ALTERNATIVES = ("final", "strong")
SEED = 9100
LEVEL_BOUND = 0.10  # the Wilson 95% upper limit of the family-wise rate a design and size must stay below (issue 21)


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    null_trials: tuple[int, ...]  # per null design, per size
    alternative_trials: tuple[int, ...]  # per alternative, per size
    workers: int = 2


# 40 null trials per design at 100,000 patients: with 15 even none rejected left a Wilson 95% upper limit of 20%, so the
# level criterion (upper limit below 10%) could not be shown there; 0 of 40 gives 8.8%.
FULL = Plan(sizes=(3_000, 10_000, 100_000), null_trials=(150, 150, 40), alternative_trials=(30, 30, 8))
QUICK = Plan(sizes=(2_500,), null_trials=(3,), alternative_trials=(2,))


def _trial(task: tuple[str, int, int]) -> list[dict]:
    """One simulated trial: the job's test on both outcomes; one row per outcome."""
    quiet_environment()
    warnings.simplefilter("ignore")

    from benchmarks.recovery import DESIGN_SEED_OFFSET, null_design_outcome
    from core.candidates import BCF, make_candidate
    from core.config import load_config
    from core.spec import load_spec
    from features.pipeline import build_feature_pipeline
    from training.executor import LocalExecutor
    from training.heterogeneity import imputed_randomisation_test, test_rows
    from training.simulate import simulate
    from training.train import outcome_data

    design, n, replicate = task
    seed = SEED + DESIGN_SEED_OFFSET.get(design, 0) + 1000 * replicate + n % 997
    spec = load_spec()
    trial = simulate("null" if design in ("ushape", "sharp") else design, n, seed)
    config = load_config(None, seed=seed).resolved(n)
    rows = []
    for index, outcome in enumerate(OUTCOMES):
        d, _ = outcome_data(trial, spec, outcome, config)
        F = build_feature_pipeline(spec).fit_transform(d.X).reset_index(drop=True)
        if design in ("ushape", "sharp"):
            d = replace(d, y=null_design_outcome(design, F, d.t, d.y, seed, index))
        started = time.perf_counter()
        result = imputed_randomisation_test(F, d.t, d.y, config, d.treated_fraction, LocalExecutor(workers=1))
        row = {
            "design": design, "n": n, "replicate": replicate, "seed": seed, "outcome": outcome, "method": result.method,
            "p": result.p_value, "z": result.statistic, "seconds": time.perf_counter() - started, "auc_top_quarter": np.nan,
            "p_normal": result.details.get("p_normal", np.nan),
        }
        if design in ALTERNATIVES and result.method == "held_out":
            # The test's own BCF fit (same rows, seed and settings), scored on the patients it was not fitted on.
            fit = test_rows(d.y, config.evidence.max_patients, config.seed + 77)
            rest = np.setdiff1d(np.arange(len(d.y)), fit)
            model = make_candidate(BCF, config.candidates, d.treated_fraction, config.seed + 77)
            model.fit(F.iloc[fit].reset_index(drop=True), np.asarray(d.t)[fit], np.asarray(d.y)[fit])
            predicted = model.predict_benefit(F.iloc[rest].reset_index(drop=True))
            keep = trial.index[outcome_data_mask(trial, spec, outcome, config)]
            truth = trial.loc[keep, f"true_benefit_{outcome}"].to_numpy()[rest]
            row["auc_top_quarter"] = auc_top_quarter(predicted, truth)
        rows.append(row)
    return rows


def _tasks(plan: Plan) -> list[tuple[str, int, int]]:
    tasks = []
    for i, n in enumerate(plan.sizes):
        most = max(plan.null_trials[i], plan.alternative_trials[i])
        for r in range(most):  # round by round over the designs, so a stopped run has every design's first trials
            tasks += [(d, n, r) for d in NULLS if r < plan.null_trials[i]]
            tasks += [(d, n, r) for d in ALTERNATIVES if r < plan.alternative_trials[i]]
    return tasks


def _holm(pain: float, memory: float) -> tuple[float, float]:
    from training.inference import holm

    adjusted = holm({"pain": pain, "memory": memory})
    return adjusted["pain"], adjusted["memory"]


def run(quick: bool, out_dir: Path) -> str:
    plan = QUICK if quick else FULL
    quiet_environment()
    started = time.perf_counter()
    tasks = _tasks(plan)
    with ProcessPoolExecutor(plan.workers) as pool:
        rows = [row for chunk in pool.map(_trial, tasks) for row in chunk]
    frame = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out_dir / "heldout.parquet", index=False)  # exact types (pandas reads the design "null" in a CSV as missing)
    frame.to_csv(out_dir / "heldout.csv", index=False)
    return render(frame, plan, (time.perf_counter() - started) / 60)


def render(frame: pd.DataFrame, plan: Plan, minutes: float, alpha: float = 0.05) -> str:
    """The section from the per-outcome rows (one per trial and outcome: design, n, replicate, p, auc_top_quarter, seconds)."""
    from core.config import load_config

    replicates = load_config(None).evidence.replicates  # the null trials each test ran (run_test: the job's config)
    wide = frame.pivot_table(index=["design", "n", "replicate"], columns="outcome", values="p").reset_index()
    adjusted = [_holm(p, m) for p, m in zip(wide["pain"], wide["memory"], strict=True)]
    wide["pain_adj"], wide["memory_adj"] = zip(*adjusted, strict=True)
    wide["any"] = (wide["pain_adj"] < alpha) | (wide["memory_adj"] < alpha)

    normal = frame.pivot_table(index=["design", "n", "replicate"], columns="outcome", values="p_normal").reset_index()
    adjusted = [_holm(p, m) for p, m in zip(normal["pain"], normal["memory"], strict=True)]
    normal["any"] = [min(a) < alpha for a in adjusted]
    level_rows, met = [], []
    for n in plan.sizes:
        row = [f"{n:,}"]
        for design in NULLS:
            sel = wide[(wide["design"] == design) & (wide["n"] == n)]
            k, total = int(sel["any"].sum()), len(sel)
            row.append(fmt_rate(k, total))
            if total:
                met.append((design, n, k, total, k / total <= alpha and wilson(k, total)[1] < LEVEL_BOUND))
        for design in NULLS:  # the same z read from the normal distribution, and its SD (1 if that reading were right)
            sel = normal[(normal["design"] == design) & (normal["n"] == n)]
            z = frame[(frame["design"] == design) & (frame["n"] == n)]["z"]
            row.append(f"{fmt_rate(int(sel['any'].sum()), len(sel))}; SD of z {z.std():.2f}" if len(sel) else "—")
        level_rows.append(row)
    power_rows = []
    for n in plan.sizes:
        for design in ALTERNATIVES:
            sel = wide[(wide["design"] == design) & (wide["n"] == n)]
            if not len(sel):
                continue
            long = frame[(frame["design"] == design) & (frame["n"] == n)]
            auc = long["auc_top_quarter"].dropna()
            strong = long.merge(sel[["replicate", "pain_adj", "memory_adj"]], on="replicate")
            strong["adjusted"] = np.where(strong["outcome"] == "pain", strong["pain_adj"], strong["memory_adj"])
            high = strong[strong["auc_top_quarter"] >= 0.9]
            power_rows.append([
                f"{n:,}", f"`{design}`", len(sel),
                fmt_rate(int((sel["pain_adj"] < alpha).sum()), len(sel)),
                fmt_rate(int((sel["memory_adj"] < alpha).sum()), len(sel)),
                f"{auc.mean():.3f} (range {auc.min():.2f}-{auc.max():.2f})" if len(auc) else "—",
                fmt_rate(int((high["adjusted"] < alpha).sum()), len(high)) if len(high) else "no outcome-run had AUC >= 0.9",
            ])
    seconds = frame.groupby("n")["seconds"].mean()
    cells_met = sum(m[-1] for m in met)
    not_met = [f"`{d}` n = {n:,} ({k}/{t})" for d, n, k, t, ok in met if not ok]
    lines = [
        "## 4. The heterogeneity test above 2,000 patients",
        "",
        f"{len(wide)} simulated trials in {minutes:.1f} min ({plan.workers} worker processes). Above twice "
        "`evidence.max_patients` (1,000) the job's test is the held-out test (`training.heterogeneity.held_out_test`): BCF, "
        "with the cross-validation settings, fitted on a random 1,000 patients stratified by outcome; on every other patient the "
        "doubly-robust benefit scores (BCF's arm probabilities as outcome models, the known randomisation probability) "
        "regressed on a cubic in BCF's prognosis on control and on BCF's effect beyond it; the one-sided z of that slope "
        f"(HC1 standard error) against the same z on {replicates} null trials of the held-out patients from BCF's no-modification "
        "model (BCF not refitted); Holm across pain and memory at alpha = 0.05, as the job decides. Null designs as in "
        "section 1 (`ushape`: a constant probit effect of 0.35 with a U-shaped prognosis in `crp_log`, the null the test "
        "names; `sharp`: outcomes permuted across patients); their patients are `null` trials'.",
        "",
        "- Mean seconds per test (one outcome, one process): " + ", ".join(f"n = {n:,}: {s:.1f} s" for n, s in seconds.items()) + ".",
        f"- Family-wise level, at most 5% with a Wilson 95% upper limit below 10% per design and size: met in {cells_met} of "
        f"{len(met)} cells" + (f"; not met: {', '.join(not_met)}." if not_met else ".")
        + (f" {pooled.strip()}" if (pooled := per_size_bounds(met, alpha, LEVEL_BOUND, "{:,}".format)) else ""),
        "",
        "Family-wise false-positive rate (either outcome rejected after Holm), per null design: the job's test (its "
        "p-value from null trials of the held-out patients), and beside it the same z read from the normal distribution "
        "with the SD of z over the design's outcome-runs (1 where that reading is right):",
        "",
        md_table(["n", *[f"`{d}`" for d in NULLS], *[f"`{d}`, normal reading" for d in NULLS]], level_rows),
        "",
        "Power (rejection per outcome after Holm), the test's own BCF ranking of the held-out patients' true benefit (AUC "
        "for the top quarter, mean and range over outcome-runs), and how often the test rejected in the outcome-runs "
        "where that AUC was at least 0.9:",
        "",
        md_table(["n", "scenario", "trials", "power pain", "power memory", "BCF AUC, top quarter", "rejected when AUC >= 0.9"], power_rows, "llrrrrr"),
    ]
    return "\n".join(lines) + "\n"
