"""Section 6: the served answer on large trials (3,000, 10^4 and 10^5 patients), against the observable oracle.

Each simulated trial (`final` and `strong`) is fitted by the training job's own fit
(:class:`training.estimator.ResponderEstimator`, the default config and executor: nested CV, PATH, the heterogeneity
test with Holm, the answer, the final fits with their intervals), with the ``true_*`` columns dropped. The served
model then scores fresh patients of the same scenario, and is read against their true benefit and the observable
oracle (``benchmarks/oracle.py``):

- **ranking**: the AUC with which the served benefit picks out the top quarter of the fresh patients' true benefit,
  beside the observable oracle's AUC (the best the measured values allow) and beside what the rule used below 2,000
  patients (``bcf_when_eligible``) would have served: BCF, fitted on its 1,000-patient subsample, when it is eligible,
  else the floor (a constant, AUC 0.5);
- **the answer**: which answer served and from which model, and whether the floor ever served although the test
  found effect modification and a candidate beat the floor;
- **the interval**: the served interval's coverage of the observable conditional benefit, its width and its interval
  score, beside the trial average's interval given to everyone and EconML ``CausalForestDML``'s own
  ``effect_interval`` fitted on the same trial (the issue's two baselines; section 5 has both up to 1,000 patients).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import auc_top_quarter, md_table, quiet_environment

OUTCOMES = ("pain", "memory")
SEED = 9600
GAP = 0.05  # the criterion: within 0.05 of the observable oracle's AUC


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    trials: tuple[int, ...]  # per scenario, per size
    scenarios: tuple[str, ...] = ("final", "strong")
    population: int = 20_000  # fresh patients per scenario (one draw, shared by every trial of it)
    forest_trees: int = 200  # the peer's trees (EconML CausalForestDML, as in sections 1 and 5)


FULL = Plan(sizes=(3_000, 10_000, 100_000), trials=(3, 3, 2))
QUICK = Plan(sizes=(2_500,), trials=(1,), scenarios=("strong",), population=2_000, forest_trees=40)


def _trial(scenario: str, n: int, replicate: int, pop: pd.DataFrame, observable: dict[str, np.ndarray], plan: Plan) -> list[dict]:
    """One trial fitted as the job fits it; one row per outcome."""
    from benchmarks.recovery import interval_score
    from core.candidates import BCF, FLOOR, make_candidate
    from core.config import load_config
    from core.data import model_inputs
    from core.spec import load_spec
    from features.pipeline import build_feature_pipeline
    from training.estimator import ResponderEstimator
    from training.simulate import simulate

    seed = SEED + 1000 * replicate + n % 997 + (0 if scenario == "final" else 17)
    spec = load_spec()
    trial = simulate(scenario, n, seed)
    trial = trial.drop(columns=[c for c in trial.columns if c.startswith("true_")])
    config = load_config(None, seed=seed)
    started = time.perf_counter()
    fitted = ResponderEstimator(spec, config).fit(trial)
    job_seconds = time.perf_counter() - started
    resolved = config.resolved(n)
    pop_inputs = model_inputs(pop, spec)
    level = resolved.intervals.level
    rows = []
    for outcome in OUTCOMES:
        result = fitted.results[outcome]
        truth = pop[f"true_benefit_{outcome}"].to_numpy()
        target = observable[outcome]
        served = result.model.predict(pop_inputs)
        benefit, lower, upper = (served[c].to_numpy() for c in ("benefit", "benefit_lower", "benefit_upper"))
        # The model's own interval (refits or draws), before the allowance the served one adds.
        own = replace(result.model, calibration_allowance=0.0).predict(pop_inputs)
        own_lower, own_upper = own["benefit_lower"].to_numpy(), own["benefit_upper"].to_numpy()
        # ... and with the allowance's calibration part alone (without the candidates' disagreement).
        allowance = result.model.metadata.get("calibration_allowance") or {}
        calibration_sd = float(allowance.get("calibration_sd", result.model.calibration_allowance))
        alone = replace(result.model, calibration_allowance=calibration_sd).predict(pop_inputs)
        cal_lower, cal_upper = alone["benefit_lower"].to_numpy(), alone["benefit_upper"].to_numpy()
        # What the rule below 2,000 patients would have served: BCF (on its subsample) when eligible, else the floor.
        d = result.data
        pipeline = build_feature_pipeline(spec).fit(d.X)
        started = time.perf_counter()
        bcf = make_candidate(BCF, resolved.candidates, d.treated_fraction, seed, final=True)
        bcf.fit(pipeline.transform(d.X).reset_index(drop=True), d.t, d.y)
        bcf_benefit = bcf.predict_benefit(pipeline.transform(pop_inputs))
        bcf_seconds = time.perf_counter() - started
        former = BCF if BCF in result.cv.eligible else FLOOR
        average = result.average_effect
        ones = np.ones(len(pop))
        compared = _full_size_bootstrap(result.model, d, pop_inputs, benefit, target, level)
        peer = _causal_forest(pipeline, d, pop_inputs, target, truth, resolved, seed, plan.forest_trees, level)
        rows.append(
            {
                **compared,
                **peer,
                "scenario": scenario, "n": n, "replicate": replicate, "seed": seed, "outcome": outcome,
                "answer": result.answer, "champion": result.champion, "cv_choice": result.cv.final_choice,
                "eligible": ",".join(result.cv.eligible), "evidence": bool(result.evidence),
                "p_adjusted": float(result.p_adjusted), "test": result.permutation.method,
                "auc_oracle": auc_top_quarter(target, truth), "auc_served": auc_top_quarter(benefit, truth),
                "auc_bcf": auc_top_quarter(bcf_benefit, truth), "former_choice": former,
                "auc_former": auc_top_quarter(bcf_benefit, truth) if former == BCF else 0.5,
                "coverage": float(np.mean((lower <= target + 1e-12) & (target - 1e-12 <= upper))),
                "allowance": float(result.model.calibration_allowance),
                "allowance_calibration": calibration_sd, "allowance_disagreement": float(allowance.get("disagreement_sd", 0.0)),
                "coverage_calibration": float(np.mean((cal_lower <= target + 1e-12) & (target - 1e-12 <= cal_upper))),
                "width_calibration": float(np.mean(cal_upper - cal_lower)),
                "interval_score_calibration": float(np.mean(interval_score(cal_lower, cal_upper, target, 1 - level))),
                "coverage_own": float(np.mean((own_lower <= target + 1e-12) & (target - 1e-12 <= own_upper))),
                "width_own": float(np.mean(own_upper - own_lower)),
                "interval_score_own": float(np.mean(interval_score(own_lower, own_upper, target, 1 - level))),
                "width": float(np.mean(upper - lower)),
                "interval_score": float(np.mean(interval_score(lower, upper, target, 1 - level))),
                "interval_score_average": float(np.mean(interval_score(average.ci_low * ones, average.ci_high * ones, target, 1 - level))),
                "coverage_average": float(np.mean((average.ci_low <= target) & (target <= average.ci_high))),
                "floor_despite_evidence": bool(result.evidence and result.champion == FLOOR and any(c != FLOOR for c in result.cv.eligible)),
                "job_seconds": job_seconds, "bcf_seconds": bcf_seconds,
            }
        )
    return rows


def _causal_forest(pipeline, d, pop_inputs: pd.DataFrame, target: np.ndarray, truth: np.ndarray, config, seed: int, trees: int, level: float) -> dict:
    """EconML's CausalForestDML on the same trial's engineered features: its `effect_interval` on the fresh patients.

    The issue's baseline for the served interval at every size (section 5 has it up to 1,000 patients). The forest
    uses both cores here (the job's workers are idle while it fits); empty where EconML is not installed.
    """
    from benchmarks.recovery import _peer_versions, interval_score

    if not _peer_versions()["econml"]:  # `make bench` installs it; CI's test environment does not
        return {}
    from benchmarks.peers import fit_peer

    started = time.perf_counter()
    F = pipeline.transform(d.X).to_numpy(dtype=float)
    P = pipeline.transform(pop_inputs).to_numpy(dtype=float)
    benefit, (lower, upper) = fit_peer(
        "causal_forest", F, np.asarray(d.t).astype(int), np.asarray(d.y).astype(int), P, d.treated_fraction, config, seed, trees,
        n_jobs=os.cpu_count() or 1,
    )
    return {
        "cf_auc": auc_top_quarter(benefit, truth),
        "cf_coverage": float(np.mean((lower <= target + 1e-12) & (target - 1e-12 <= upper))),
        "cf_width": float(np.mean(upper - lower)),
        "cf_interval_score": float(np.mean(interval_score(lower, upper, target, 1 - level))),
        "cf_seconds": time.perf_counter() - started,
    }


def _full_size_bootstrap(model, d, pop_inputs: pd.DataFrame, benefit: np.ndarray, target: np.ndarray, level: float) -> dict:
    """Where the served interval is an m-out-of-n bootstrap: the same refits at full size, scored beside it, both timed here."""
    from benchmarks.recovery import interval_score
    from core.candidates import BootstrapEnsemble

    served = model.ensemble
    if served is None or served.fraction == 1:
        return {}
    F = model.pipeline.transform(d.X).reset_index(drop=True)
    P = model.pipeline.transform(pop_inputs).reset_index(drop=True)
    out: dict = {"bootstrap_rate": served.rate_, "bootstrap_fraction": served.fraction}
    for kind, fraction in (("mofn", served.fraction), ("full", 1.0)):
        started = time.perf_counter()
        ensemble = BootstrapEnsemble(served.candidate, served.n_models, served.level, served.seed, served.penalty, fraction).fit(F, d.t, d.y)
        out[f"refit_seconds_{kind}"] = time.perf_counter() - started
        lower, upper = ensemble.interval(P, benefit)
        out[f"coverage_{kind}"] = float(np.mean((lower <= target + 1e-12) & (target - 1e-12 <= upper)))
        out[f"width_{kind}"] = float(np.mean(upper - lower))
        out[f"interval_score_{kind}"] = float(np.mean(interval_score(lower, upper, target, 1 - level)))
    return out


def run(quick: bool, out_dir: Path, plan: Plan | None = None) -> str:
    """Run section 6 and return its Markdown; per-outcome rows go to ``out_dir/large.parquet`` (and ``.csv``)."""
    from benchmarks.oracle import OracleSettings, load_oracles
    from core.data import model_inputs
    from core.spec import load_spec
    from training.simulate import simulate

    quiet_environment()
    warnings.simplefilter("ignore")
    plan = plan or (QUICK if quick else FULL)
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    oracles, cached = load_oracles(plan.scenarios, OracleSettings(), out_dir / "oracle-cache")
    spec = load_spec()
    rows = []
    for scenario in plan.scenarios:
        pop = simulate(scenario, plan.population, SEED + 500_000)
        observable = oracles[scenario].predict(model_inputs(pop, spec))
        for n, count in zip(plan.sizes, plan.trials, strict=True):
            for replicate in range(count):
                rows.extend(_trial(scenario, n, replicate, pop, observable, plan))
                print(f"[large] {scenario} n={n:,} trial {replicate + 1}/{count} done", flush=True)
    frame = pd.DataFrame(rows)
    frame.to_parquet(out_dir / "large.parquet", index=False)
    frame.to_csv(out_dir / "large.csv", index=False)
    return render(frame, plan, (time.perf_counter() - started) / 60, quick, cached, os.cpu_count() or 1)


RANKS_WELL = 0.9  # the criterion: the test rejects whenever the served model ranks this well


def _ranks_well_line(frame: pd.DataFrame) -> str:
    """Whether the test found effect modification wherever the served model ranked fresh patients' true benefit well."""
    good = frame[frame["auc_served"] >= RANKS_WELL]
    if not len(good):
        return f"- No outcome-run's served model ranked the fresh patients' true benefit with AUC >= {RANKS_WELL}."
    missed = good[~good["evidence"].astype(bool)]
    where = "; ".join(f"`{r.scenario}` {r.n:,} {r.outcome} (AUC {r.auc_served:.3f}, Holm p {r.p_adjusted:.3f})" for r in missed.itertuples())
    return (
        f"- Outcome-runs whose served model ranked the fresh patients' true benefit with AUC >= {RANKS_WELL}: {len(good)} of "
        f"{len(frame)}; the job's test found effect modification (Holm) in **{len(good) - len(missed)} of {len(good)}**"
        + (f" (not: {where})." if len(missed) else ".")
    )


def _mean_min(values: pd.Series) -> str:
    return f"{values.mean():.3f} ({values.min():.3f})" if len(values) > 1 else f"{values.mean():.3f}"


def _counts(values: pd.Series) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.value_counts().sort_index().items())


def render(frame: pd.DataFrame, plan: Plan, minutes: float, quick: bool, cached: bool, cores: int) -> str:
    trials = frame.drop_duplicates(["scenario", "n", "replicate"]).shape[0]
    runs = len(frame)
    within = frame["auc_served"] >= frame["auc_oracle"] - GAP
    former_within = frame["auc_former"] >= frame["auc_oracle"] - GAP
    floor_bad = int(frame["floor_despite_evidence"].sum())
    parts = [
        "## 6. The served answer on large trials",
        "",
        f"{'QUICK smoke run: figures are not estimates. ' if quick else ''}"
        f"{trials} simulated trials ({runs} outcome-runs) in {minutes:.1f} min on {cores} cores "
        f"(`make bench BENCH_ARGS='--sections large'`). Observable oracle "
        f"{'from the cache' if cached else 'fitted in this run'}.",
        "",
        f"Each trial ({', '.join(f'`{s}`' for s in plan.scenarios)} at "
        f"{', '.join(f'{n:,}' for n in plan.sizes)} patients; "
        f"{', '.join(str(t) for t in plan.trials)} trials per scenario) is fitted by the training job's own fit "
        "(`training.estimator.ResponderEstimator`, the default config and executor, the `true_*` columns dropped). "
        f"Its served model then scores {plan.population:,} fresh patients of the same scenario. Ranking: the AUC with "
        "which a benefit picks out the top quarter of the fresh patients' true benefit. The observable oracle is the best "
        "ranking the measured values allow. \"Rule below 2,000\" is what `bcf_when_eligible` (the criterion below 2,000 "
        "patients) would have served from the same cross-validation: BCF, fitted on its 1,000-patient subsample, when it "
        "is eligible, else the floor (AUC 0.5). The interval is scored against each fresh patient's observable "
        "conditional benefit, beside the trial average's interval given to everyone.",
        "",
        f"- Served ranking within {GAP} of the observable oracle: **{int(within.sum())} of {runs}** outcome-runs "
        f"(the rule below 2,000 patients: {int(former_within.sum())} of {runs}); by trial size: "
        + "; ".join(f"{n:,}: {int(within[frame['n'] == n].sum())} of {int((frame['n'] == n).sum())}" for n in sorted(frame["n"].unique()))
        + ".",
        f"- Outcome-runs where the floor served although the test found effect modification and a candidate beat the "
        f"floor: **{floor_bad}**.",
        _ranks_well_line(frame),
        f"- Served interval: coverage of the observable conditional benefit {frame['coverage'].mean():.2f} (mean over "
        f"outcome-runs; target 0.90-0.97), width {frame['width'].mean():.3f}; interval score below the trial average's in "
        f"{int((frame['interval_score'] < frame['interval_score_average']).sum())} of {runs}.",
        *_allowance_summary(frame),
        *_peer_summary(frame, plan),
        "",
    ]
    rows = []
    for (scenario, n, outcome), cell in frame.groupby(["scenario", "n", "outcome"], sort=False):
        rows.append(
            [
                f"`{scenario}`", f"{n:,}", outcome, len(cell), _counts(cell["answer"]), _counts(cell["champion"]),
                f"{cell['auc_oracle'].mean():.3f}", _mean_min(cell["auc_served"]),
                f"{(cell['auc_served'] - cell['auc_oracle']).mean():+.3f}",
                _mean_min(cell["auc_former"]), f"{cell['coverage'].mean():.2f} / {_peer_mean(cell, 'cf_coverage', 2)}",
                f"{cell['width'].mean():.3f} / {_peer_mean(cell, 'cf_width', 3)}",
                f"{cell['interval_score'].mean():.3f} / {cell['interval_score_average'].mean():.3f} / {_peer_mean(cell, 'cf_interval_score', 3)}",
                _allowance_cell(cell),
                f"{cell['job_seconds'].mean():.0f}",
            ]
        )
    parts.append(
        md_table(
            [
                "scenario", "n", "outcome", "trials", "answer served", "served by", "oracle AUC",
                "served AUC, mean (min)", "served - oracle", "rule below 2,000: AUC", "coverage: served / EconML",
                "width: served / EconML", "interval score: served / trial average / EconML",
                "allowance, pp: total (calibration, disagreement); coverage without it / with the calibration part only", "job s",
            ],
            rows,
            align="lrlrllrrrrrrrrr",
        )
    )
    if "coverage_mofn" in frame:
        parts += _bootstrap_comparison(frame.dropna(subset=["coverage_mofn"]))
    parts += [
        "",
        "Per trial: the cross-validation's choice (`dr_tau_risk` among the eligible), the eligible candidates, the "
        "Holm-adjusted p of the test and BCF's own AUC on the fresh patients.",
        "",
        md_table(
            ["scenario", "n", "trial", "outcome", "test", "Holm p", "CV choice", "eligible", "BCF AUC", "EconML AUC", "served AUC"],
            [
                [
                    f"`{r.scenario}`", f"{r.n:,}", r.replicate + 1, r.outcome, r.test, f"{r.p_adjusted:.3f}", r.cv_choice,
                    r.eligible, f"{r.auc_bcf:.3f}", _peer_value(getattr(r, "cf_auc", np.nan), 3), f"{r.auc_served:.3f}",
                ]
                for r in frame.itertuples()
            ],
            align="lrrlllllrrr",
        ),
    ]
    return "\n".join(parts) + "\n"


def _peer_value(value: float, digits: int) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _peer_mean(cell: pd.DataFrame, column: str, digits: int) -> str:
    """The peer's mean over a cell's outcome-runs, or a dash (EconML not installed)."""
    return _peer_value(float(cell[column].mean()) if column in cell else float("nan"), digits)


def _allowance_cell(cell: pd.DataFrame) -> str:
    if "allowance" not in cell:  # rows of a run before the allowance
        return "—"
    if "allowance_disagreement" not in cell:  # rows of a run before the disagreement part
        return f"{100 * cell['allowance'].mean():.1f} ({cell['coverage_own'].mean():.2f})"
    return (
        f"{100 * cell['allowance'].mean():.1f} ({100 * cell['allowance_calibration'].mean():.1f}, "
        f"{100 * cell['allowance_disagreement'].mean():.1f}); {cell['coverage_own'].mean():.2f} / {cell['coverage_calibration'].mean():.2f}"
    )


def _allowance_summary(frame: pd.DataFrame) -> list[str]:
    """The served interval with and without its allowance for the model's error (``training.steps.calibration_allowance``)."""
    if "allowance" not in frame:
        return []
    applied = frame[frame["allowance"] > 0]
    line = (
        f"- Model-error allowance (`training.steps.calibration_allowance`: a conditional answer's out-of-fold calibration error across "
        f"`intervals.calibration_groups` groups of predicted benefit and, where recorded, its disagreement with the other "
        f"candidates, added to each side in quadrature): above 0 in "
        f"{len(applied)} of {len(frame)} outcome-runs (0 where the groups' gaps are within their noise, and below 2,000 "
        "patients, where it is not measured)"
    )
    if applied.empty:
        return [line + "."]
    line += (
        f", SD {100 * applied['allowance'].min():.1f}-{100 * applied['allowance'].max():.1f} pp. Without it the model's own "
        f"interval (refits or draws) covers {frame['coverage_own'].mean():.2f} at width {frame['width_own'].mean():.3f}; its "
        f"interval score is below the served one's in {int((frame['interval_score_own'] < frame['interval_score']).sum())} "
        f"of {len(frame)}"
    )
    if "cf_interval_score" in frame and frame["cf_interval_score"].notna().any():
        peer = frame.dropna(subset=["cf_interval_score"])
        line += f" and below EconML's in {int((peer['interval_score_own'] < peer['cf_interval_score']).sum())} of {len(peer)}"
    lines = [line + "."]
    if "allowance_disagreement" in frame:
        split = frame[frame["allowance"] > 0]
        lines.append(
            f"- The allowance's two parts (added in quadrature): the calibration error across groups, SD "
            f"{100 * split['allowance_calibration'].min():.1f}-{100 * split['allowance_calibration'].max():.1f} pp, and the served "
            "model's root-mean-square out-of-fold disagreement with the other eligible candidates that model effect "
            f"modification and see every patient (`intervals.disagreement`; `training.metrics.candidate_disagreement`), "
            f"{100 * split['allowance_disagreement'].min():.1f}-{100 * split['allowance_disagreement'].max():.1f} pp. With the "
            f"calibration part alone the interval covers {frame['coverage_calibration'].mean():.2f} at width "
            f"{frame['width_calibration'].mean():.3f}; the served interval's score is below that one's in "
            f"{int((frame['interval_score'] < frame['interval_score_calibration']).sum())} of {len(frame)}."
        )
    return lines


def _peer_summary(frame: pd.DataFrame, plan: Plan) -> list[str]:
    """The issue's second baseline at these sizes: EconML CausalForestDML's own interval on the same trials."""
    if "cf_interval_score" not in frame or frame["cf_interval_score"].isna().all():
        return ["- EconML is not installed in this environment (`make bench` installs it): no peer interval at these sizes."]
    peer = frame.dropna(subset=["cf_interval_score"])
    within = peer["cf_auc"] >= peer["auc_oracle"] - GAP
    return [
        f"- EconML `CausalForestDML` ({plan.forest_trees} trees, LightGBM nuisance models, its own `effect_interval`, both "
        f"cores) on the same trials: coverage {peer['cf_coverage'].mean():.2f}, width {peer['cf_width'].mean():.3f}; the "
        f"served interval's score is below the forest's in **{int((peer['interval_score'] < peer['cf_interval_score']).sum())} "
        f"of {len(peer)}** outcome-runs. The forest's ranking is within {GAP} of the observable oracle in {int(within.sum())} "
        f"of {len(peer)}; it took {peer['cf_seconds'].mean():.0f} s per fit on average (largest trials "
        f"{peer.loc[peer['n'] == peer['n'].max(), 'cf_seconds'].mean():.0f} s).",
    ]


def _bootstrap_comparison(frame: pd.DataFrame) -> list[str]:
    """The served m-out-of-n interval beside the full-size bootstrap of the same champion, same refits count and seed."""
    if frame.empty:
        return []
    ratio = frame["refit_seconds_full"].sum() / frame["refit_seconds_mofn"].sum()
    rows = [
        [
            f"`{scenario}`", f"{n:,}", outcome, len(cell), f"{cell['bootstrap_rate'].mean():.2f}",
            f"{cell['coverage_mofn'].mean():.2f} / {cell['coverage_full'].mean():.2f}",
            f"{cell['width_mofn'].mean():.3f} / {cell['width_full'].mean():.3f}",
            f"{cell['interval_score_mofn'].mean():.3f} / {cell['interval_score_full'].mean():.3f}",
            f"{cell['refit_seconds_full'].sum() / cell['refit_seconds_mofn'].sum():.1f}x",
        ]
        for (scenario, n, outcome), cell in frame.groupby(["scenario", "n", "outcome"], sort=False)
    ]
    width = frame["width_mofn"].mean() / frame["width_full"].mean()
    return [
        "",
        f"**The m-out-of-n bootstrap against the full-size bootstrap** (the refits' own interval, before the model-error "
        f"allowance; from {frame['n'].min():,} patients the served "
        f"interval's refits are on {frame['bootstrap_fraction'].iloc[0]:.0%} and a quarter of that of each arm, their spread "
        "carried to the trial by the rate measured between the two sizes; `core.candidates.ensemble`). Here the served "
        "champion is also refitted as many times at full size with the same seed, one process, both timed in this run. "
        f"Over {len(frame)} outcome-runs the m-out-of-n interval is {width:.2f}x the full-size one's width, and its refits "
        f"take 1/{ratio:.1f} of the time.",
        "",
        md_table(
            [
                "scenario", "n", "outcome", "trials", "measured rate", "coverage: m-out-of-n / full",
                "width: m-out-of-n / full", "interval score: m-out-of-n / full", "refit time: full / m-out-of-n",
            ],
            rows,
            align="lrlrrrrrr",
        ),
    ]
