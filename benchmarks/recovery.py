"""Section 1: subgroup recovery. Does the product find real responder subgroups, and refuse false ones?

For each scenario (``null``, ``final``, ``strong``), trial size and replicate:

1. simulate a trial (``training.simulate``);
2. heterogeneity test per outcome with the product's own
   :func:`training.evaluation.permutation_test` (the job's default statistic:
   best Qini-weighted RATE for the benefit beyond the risk model; whole
   pipeline refitted per permutation),
   then Holm across the two outcomes, as the training job does;
3. the champion the job would choose: ``cv.final_choice`` of the product's
   nested :func:`training.evaluation.cross_validate` when the Holm-adjusted p is
   below alpha, otherwise the risk model;
4. benefit ranking on a fresh held-out population of the same scenario (one
   population per scenario, different seed): every candidate, the champion,
   the oracle (true benefit) and two peers (EconML ``CausalForestDML``,
   CausalML ``BaseXClassifier``, both with LightGBM learners), all on the same
   engineered features (the product's feature pipeline fitted on the trial):
   AUC against ``true_responder_subgroup``, Spearman and RMSE (PEHE) against
   ``true_benefit_<outcome>``, coverage of the true benefit by the champion's
   :class:`training.candidates.BootstrapEnsemble` interval (and the causal
   forest's own interval).

Compute budget: the permutation test refits four candidates in every fold of
every permutation, so one test costs (B + 1) x folds x 4 fits. The settings
below (``FULL``) are what fits the whole ``make bench`` in about an hour on a
2-core machine; they are printed in the section so the figures can be read
with their Monte-Carlo error. ``BENCH_REPLICATES_SCALE=k`` multiplies every
replicate count (and the run time) by k. The `null` scenario gets the most
replicates because its false-positive rate is the figure that must be <= 5%.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from benchmarks.common import fmt_mean_se, fmt_rate, md_table, mean_se, quiet_environment

SCENARIOS = ("null", "final", "strong")
OUTCOMES = ("pain", "memory")
CANDIDATES = ("arm_only", "risk_model", "bcf", "interaction_logistic", "t_learner", "dr_learner")
PEERS = ("causal_forest", "x_learner")
METHODS = ("oracle", "champion", *CANDIDATES, *PEERS)
POPULATION_SEED = 999_983  # offset of the held-out population's seed from the trials' seeds
METHOD_LABELS = {
    "oracle": "oracle (true benefit)",
    "champion": "**our champion** (job's choice)",
    "arm_only": "arm-only floor",
    "risk_model": "risk model",
    "bcf": "Bayesian Causal Forest (probit)",
    "interaction_logistic": "interaction logistic",
    "t_learner": "T-learner (LightGBM)",
    "dr_learner": "DR-learner (LightGBM)",
    "causal_forest": "EconML CausalForestDML",
    "x_learner": "CausalML BaseXClassifier",
}


@dataclass(frozen=True)
class Settings:
    """The Monte-Carlo design of one recovery run (every figure in the section is read against these)."""

    sizes: tuple[int, ...] = (99, 300, 1000)
    replicates: tuple[int, ...] = (6, 4, 3)  # per size, for every scenario not in scenario_replicates
    scenario_replicates: tuple[tuple[str, tuple[int, ...]], ...] = (("null", (32, 12, 4)),)  # per-scenario override
    test_folds: tuple[int, ...] = (3, 2, 2)  # folds of the heterogeneity statistic, per size (job default: 5)
    permutations: int = 40  # per test (job default: 199); the fewest with which Holm over two outcomes can reject at 0.05
    alpha: float = 0.05
    population: int = 2000  # held-out patients per scenario
    bootstrap_models: int = 100  # champion interval (job default: 100)
    cv_repeats: int = 1  # nested CV that picks the champion when there is evidence (job default: 3)
    cv_folds: int = 5  # its outer folds (job default: 5)
    forest_trees: int = 200  # CausalForestDML trees (multiple of 4)
    workers: int = 2
    seed: int = 7000
    scenarios: tuple[str, ...] = SCENARIOS
    peers: bool = True
    candidate_overrides: dict = field(default_factory=dict)  # quick runs: lighter LightGBM

    def replicates_for(self, scenario: str) -> tuple[int, ...]:
        """Replicates per size for one scenario."""
        return dict(self.scenario_replicates).get(scenario, self.replicates)

    def describe(self) -> list[str]:
        """Bullet lines stating the design, for the Markdown section."""
        folds = ", ".join(f"{k} at n = {n}" for n, k in zip(self.sizes, self.test_folds, strict=True))
        per_scenario = "; ".join(
            f"`{s}` " + ", ".join(f"{r} at n = {n}" for n, r in zip(self.sizes, self.replicates_for(s), strict=True))
            for s in self.scenarios
        )
        lines = [
            f"- Replicate trials per scenario and size: {per_scenario}. Folds of the heterogeneity statistic: {folds}.",
            f"- Heterogeneity test: the product's `permutation_test` (statistic `{_default_statistic()}`, the job's default) "
            f"with B = {self.permutations} permutations per outcome "
            f"(the job's default is 199 with 5 folds; fewer permutations only coarsen the p-value, which stays valid), "
            f"Holm across pain and memory, alpha = {self.alpha}. With B = {self.permutations} the smallest p is "
            f"1/{self.permutations + 1} = {1 / (self.permutations + 1):.4f} and its Holm adjustment {2 / (self.permutations + 1):.4f}"
            + (" < alpha, so Holm can reject." if 2 / (self.permutations + 1) < self.alpha else ": Holm can never reject (smoke run)."),
            f"- Champion: `cv.final_choice` of the product's nested `cross_validate` ({self.cv_repeats} repeat(s) of {self.cv_folds} folds, "
            "inner 3 folds) when the Holm-adjusted p < alpha, otherwise the risk model.",
            f"- Ranking metrics on one held-out population of {self.population:,} simulated patients per scenario (seed differs "
            "from every trial); the pipeline and every model are fitted on the trial only.",
            f"- Intervals: the champion's `BootstrapEnsemble` ({self.bootstrap_models} refits, configured level 0.95); "
            "the causal forest's own 95% interval (`effect_interval`).",
        ]
        if self.candidate_overrides:
            lines.append(f"- Candidate settings changed for this run: `{self.candidate_overrides}`.")
        return lines


def _default_statistic() -> str:
    from training.config import load_config

    return load_config(None).evidence.statistic


FULL = Settings()
QUICK = Settings(
    sizes=(99, 300),
    replicates=(1, 1),
    scenario_replicates=(),
    test_folds=(2, 2),
    permutations=9,
    population=500,
    bootstrap_models=8,
    forest_trees=40,
    candidate_overrides={
        "t_learner": {"lightgbm": {"n_estimators": 30}},
        "dr_learner": {"nuisance": {"n_estimators": 30}, "final": {"n_estimators": 20}},
    },
)


# ---------------------------------------------------------------------------
# One replicate (runs in a worker process)
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _population(scenario: str, size: int, seed: int) -> pd.DataFrame:
    from training.simulate import simulate

    # Cached per worker: every replicate of a scenario is scored on the same patients,
    # so the oracle is a constant and ratios to it only carry the trials' variation.
    return simulate(scenario, size, seed)


def _peer_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("econml", "causalml"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = ""
    return out


def _lgbm_kwargs(config, seed: int) -> dict:
    # Peers get the same shallow, slow-learning LightGBM the product's learners use,
    # so the comparison is about the meta-learner, not the tree settings.
    return config.candidates.t_learner.lightgbm.kwargs(seed)


def _fit_peer(name: str, F: np.ndarray, t: np.ndarray, y: np.ndarray, P: np.ndarray, e: float, config, seed: int, trees: int):
    """Fit one peer on the trial; return (benefit on the population, (lower, upper) or None)."""
    from lightgbm import LGBMClassifier, LGBMRegressor

    kwargs = _lgbm_kwargs(config, seed)
    if name == "causal_forest":
        from econml.dml import CausalForestDML

        model = CausalForestDML(
            model_y=LGBMClassifier(**kwargs),
            model_t=LGBMClassifier(**kwargs),
            discrete_outcome=True,
            discrete_treatment=True,
            n_estimators=trees,
            cv=2,
            random_state=seed,
            n_jobs=1,
        )
        model.fit(y, t, X=F)
        lower, upper = model.effect_interval(P, alpha=0.05)
        return np.ravel(model.effect(P)), (np.ravel(lower), np.ravel(upper))
    if name == "x_learner":
        from causalml.inference.meta import BaseXClassifier

        model = BaseXClassifier(outcome_learner=LGBMClassifier(**kwargs), effect_learner=LGBMRegressor(**kwargs), control_name=0)
        # The randomisation ratio is known: pass it as the propensity, as the product's DR-learner does.
        model.fit(F, treatment=t, y=y, p=np.full(len(y), e))
        return np.ravel(model.predict(P, p=np.full(len(P), e))), None
    raise ValueError(name)


def _ranking_metrics(predicted: np.ndarray, truth: np.ndarray, subgroup: np.ndarray, scenario: str) -> dict[str, float]:
    rho = spearmanr(predicted, truth).statistic if np.std(predicted) > 0 else float("nan")
    return {
        # Under `null` the subgroup label exists but carries no benefit: its AUC means nothing.
        "auc": float(roc_auc_score(subgroup, predicted)) if scenario != "null" and np.std(predicted) > 0 else float("nan"),
        "spearman": float(rho),
        "rmse": float(np.sqrt(np.mean((predicted - truth) ** 2))),
    }


def run_replicate(task: tuple[str, int, int, int, Settings]) -> list[dict]:
    """Simulate one trial and run the test, the champion choice and every method on it; one row per (outcome, method)."""
    scenario, n, replicate, folds, settings = task
    quiet_environment()
    warnings.simplefilter("ignore")  # peers and LightGBM warn about feature names and future defaults
    from features.pipeline import build_feature_pipeline
    from training.candidates import BootstrapEnsemble, make_candidate
    from training.config import load_config
    from training.data import model_inputs
    from training.evaluation import cross_validate, holm, permutation_test
    from training.executor import LocalExecutor
    from training.simulate import simulate
    from training.spec import load_spec

    spec = load_spec()
    seed = settings.seed + 1000 * settings.sizes.index(n) + replicate
    trial = simulate(scenario, n, seed)
    population = _population(scenario, settings.population, settings.seed + POPULATION_SEED)
    overrides = {"candidates": settings.candidate_overrides} if settings.candidate_overrides else {}
    test_config = load_config(None, seed=seed, cv={"folds": folds}, evidence={"permutations": settings.permutations}, **overrides)
    fit_config = load_config(
        None,
        seed=seed,
        cv={"repeats": settings.cv_repeats, "folds": settings.cv_folds},
        intervals={"bootstrap_models": settings.bootstrap_models},
        **overrides,
    )
    from training.train import outcome_data  # after the environment is quiet: imports MLflow

    executor = LocalExecutor(workers=1)  # replicates are the parallel unit; everything inside runs in this process
    data = {o: outcome_data(trial, spec, o, fit_config)[0] for o in OUTCOMES}
    tests, test_seconds = {}, {}
    for outcome in OUTCOMES:
        started = time.perf_counter()
        tests[outcome] = permutation_test(data[outcome], spec, test_config, executor)
        test_seconds[outcome] = time.perf_counter() - started
    adjusted = holm({o: tests[o].p_value for o in OUTCOMES})

    population_inputs = model_inputs(population, spec)
    subgroup = population["true_responder_subgroup"].to_numpy()
    rows = []
    for outcome in OUTCOMES:
        d = data[outcome]
        evidence = bool(adjusted[outcome] < settings.alpha)
        base = {"scenario": scenario, "n": n, "replicate": replicate, "seed": seed, "outcome": outcome}
        started = time.perf_counter()
        champion = cross_validate(d, spec, fit_config, executor).final_choice
        select_seconds = time.perf_counter() - started
        rows.append(
            {
                **base,
                "method": "test",
                "p_value": tests[outcome].p_value,
                "p_adjusted": adjusted[outcome],
                "evidence": evidence,
                "statistic": tests[outcome].statistic,
                "champion_choice": champion,
                "seconds": test_seconds[outcome],
                "select_seconds": select_seconds,
            }
        )

        truth = population[f"true_benefit_{outcome}"].to_numpy()
        pipeline = build_feature_pipeline(spec).fit(d.X)
        F = pipeline.transform(d.X).reset_index(drop=True)
        P = pipeline.transform(population_inputs).reset_index(drop=True)
        predictions, models, seconds = {"oracle": truth}, {}, {"oracle": 0.0}
        for name in CANDIDATES:
            started = time.perf_counter()
            models[name] = make_candidate(name, fit_config.candidates, d.treated_fraction, fit_config.seed, final=True).fit(F, d.t, d.y)
            predictions[name] = models[name].predict_benefit(P)
            seconds[name] = time.perf_counter() - started
        intervals = {}
        started = time.perf_counter()
        ensemble = None
        if not models[champion].has_draws:
            ensemble = BootstrapEnsemble(models[champion], settings.bootstrap_models, fit_config.intervals.level, fit_config.seed)
            ensemble.fit(F, d.t, d.y)
        from training.model import model_interval

        intervals["champion"] = model_interval(models[champion], ensemble, P, predictions[champion], fit_config.intervals.level)
        predictions["champion"] = predictions[champion]
        seconds["champion"] = seconds[champion] + time.perf_counter() - started
        errors = {}
        if settings.peers:
            Fa, Pa = F.to_numpy(float), P.to_numpy(float)
            for name in PEERS:
                started = time.perf_counter()
                try:
                    predictions[name], interval = _fit_peer(
                        name, Fa, d.t, d.y, Pa, d.treated_fraction, fit_config, fit_config.seed, settings.forest_trees
                    )
                except ImportError as exc:  # the bench extra is not installed: say so, do not fake it
                    errors[name] = f"not installed ({exc.name})"
                    continue
                except Exception as exc:  # a peer that breaks on this stack is reported, not hidden
                    errors[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
                    continue
                seconds[name] = time.perf_counter() - started
                if interval is not None:
                    intervals[name] = interval
        for name in METHODS:
            row = {**base, "method": name, "champion_choice": champion, "evidence": evidence}
            if name in predictions:
                row.update(_ranking_metrics(predictions[name], truth, subgroup, scenario))
                row["seconds"] = seconds[name]
                if name in intervals:
                    lower, upper = intervals[name]
                    row["coverage"] = float(np.mean((lower <= truth + 1e-12) & (truth - 1e-12 <= upper)))
                    row["width"] = float(np.mean(upper - lower))
            else:
                row["error"] = errors.get(name, "not run")
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------


def _tasks(settings: Settings) -> list[tuple]:
    tasks = []
    for scenario in settings.scenarios:
        for n, replicates, folds in zip(settings.sizes, settings.replicates_for(scenario), settings.test_folds, strict=True):
            tasks += [(scenario, n, r, folds, settings) for r in range(replicates)]
    # Largest trials first so that the two workers finish together.
    return sorted(tasks, key=lambda task: -task[1])


def _single_threaded(task: tuple) -> list[dict]:
    from threadpoolctl import threadpool_limits

    # One BLAS/OpenMP thread per task: the parallel unit is the replicate.
    with threadpool_limits(limits=1):
        return run_replicate(task)


def run_benchmark(settings: Settings, progress: bool = True) -> pd.DataFrame:
    """Run every replicate (in ``settings.workers`` processes) and return one row per replicate x outcome x method."""
    from joblib import Parallel, delayed

    tasks = _tasks(settings)
    started = time.perf_counter()
    rows: list[dict] = []
    if settings.workers > 1:
        results = Parallel(n_jobs=settings.workers, backend="loky", return_as="generator_unordered")(
            delayed(_single_threaded)(task) for task in tasks
        )
    else:
        results = (_single_threaded(task) for task in tasks)
    for done, result in enumerate(results, 1):
        rows += result
        if progress:
            first = result[0]
            print(
                f"[recovery] {done}/{len(tasks)} {first['scenario']} n={first['n']} replicate {first['replicate']} "
                f"({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------


def _test_table(frame: pd.DataFrame, settings: Settings) -> str:
    tests = frame[frame["method"] == "test"]
    rows = []

    def row(scenario: str, size: object, cell: pd.DataFrame, what: str) -> list:
        wide = cell.pivot(index=["n", "replicate"], columns="outcome", values="evidence").astype(bool)
        R = len(wide)
        return [
            scenario,
            size,
            what,
            fmt_rate(int(wide["pain"].sum()), R),
            fmt_rate(int(wide["memory"].sum()), R),
            fmt_rate(int(wide.any(axis=1).sum()), R),
            f"{cell['p_value'].median():.2f}",
            f"{cell['seconds'].mean():.0f}",
        ]

    for scenario in settings.scenarios:
        for n in settings.sizes:
            cell = tests[(tests["scenario"] == scenario) & (tests["n"] == n)]
            if not cell.empty:
                rows.append(row(scenario, n, cell, "false-positive rate" if scenario == "null" else "power"))
        if scenario == "null" and len(settings.sizes) > 1:
            # The test's level does not depend on n: pooling the sizes gives the tightest estimate.
            rows.append(row(scenario, "all (pooled)", tests[tests["scenario"] == scenario], "false-positive rate"))
    return md_table(
        ["scenario", "n", "rate is", "pain (Holm)", "memory (Holm)", "either outcome", "median raw p", "s per test"], rows, "lrlrrrrr"
    )


def _oracle_auc(frame: pd.DataFrame, scenario: str, outcome: str) -> float:
    oracle = frame[(frame["scenario"] == scenario) & (frame["outcome"] == outcome) & (frame["method"] == "oracle")]
    return float(oracle["auc"].iloc[0]) if len(oracle) else float("nan")


def _ratio(values: pd.Series, oracle: float) -> str:
    mean, se = mean_se(values / oracle)
    if not np.isfinite(mean):
        return "—"
    return f"{mean:.2f}" if not np.isfinite(se) else f"{mean:.2f} ± {se:.2f}"


def _headline_table(frame: pd.DataFrame, settings: Settings, n: int) -> str:
    cells = [(s, o) for s in ("final", "strong") if s in settings.scenarios for o in OUTCOMES]
    rows = []
    for method in METHODS:
        row = [METHOD_LABELS[method]]
        for scenario, outcome in cells:
            sel = frame[(frame["scenario"] == scenario) & (frame["n"] == n) & (frame["outcome"] == outcome) & (frame["method"] == method)]
            row.append(_ratio(sel["auc"].dropna(), _oracle_auc(frame, scenario, outcome)) if sel["auc"].notna().any() else _missing(sel))
        rows.append(row)
    return md_table(["method", *[f"{s} / {o}" for s, o in cells]], rows)


def _missing(sel: pd.DataFrame) -> str:
    if "error" in sel and sel["error"].notna().any():
        return str(sel["error"].dropna().iloc[0])
    return "—"


def _detail_table(frame: pd.DataFrame, settings: Settings, scenario: str) -> str:
    rows = []
    for outcome in OUTCOMES:
        oracle_auc = _oracle_auc(frame, scenario, outcome)
        for n in settings.sizes:
            cell = frame[(frame["scenario"] == scenario) & (frame["n"] == n) & (frame["outcome"] == outcome)]
            if cell.empty:
                continue
            for method in METHODS:
                sel = cell[cell["method"] == method]
                if sel["rmse"].isna().all():
                    rows.append([outcome, n, METHOD_LABELS[method], _missing(sel), "", "", "", "", ""])
                    continue
                coverage = ""
                if "coverage" in sel and sel["coverage"].notna().any():
                    coverage = f"{fmt_mean_se(sel['coverage'], 2)} (width {sel['width'].mean():.2f})"
                rows.append(
                    [
                        outcome,
                        n,
                        METHOD_LABELS[method],
                        fmt_mean_se(sel["auc"]) if scenario != "null" else "—",
                        _ratio(sel["auc"].dropna(), oracle_auc) if scenario != "null" else "—",
                        fmt_mean_se(sel["spearman"]),
                        fmt_mean_se(sel["rmse"]),
                        coverage,
                        f"{sel['seconds'].mean():.1f}",
                    ]
                )
    return md_table(
        ["outcome", "n", "method", "AUC (subgroup)", "AUC / oracle", "Spearman (benefit)", "RMSE (PEHE)", "coverage of true benefit", "fit s"],
        rows,
        "lrlrrrrrr",
    )


def _champion_table(frame: pd.DataFrame, settings: Settings) -> str:
    tests = frame[frame["method"] == "test"]
    rows = []
    for scenario in settings.scenarios:
        for n in settings.sizes:
            for outcome in OUTCOMES:
                cell = tests[(tests["scenario"] == scenario) & (tests["n"] == n) & (tests["outcome"] == outcome)]
                if cell.empty:
                    continue
                counts = cell["champion_choice"].value_counts()
                rows.append([scenario, n, outcome, *[int(counts.get(name, 0)) for name in CANDIDATES]])
    return md_table(["scenario", "n", "outcome", *CANDIDATES], rows, "lrl" + "r" * len(CANDIDATES))


def render(frame: pd.DataFrame, settings: Settings, seconds: float, quick: bool) -> str:
    """The Markdown section from the per-replicate rows."""
    versions = _peer_versions()
    n_mid = 300 if 300 in settings.sizes else settings.sizes[-1]
    replicates = frame.drop_duplicates(["scenario", "n", "replicate"]).shape[0]
    parts = [
        "## 1. Subgroup recovery",
        "",
        f"{'QUICK smoke run: figures are not estimates. ' if quick else ''}"
        f"{replicates} simulated trials in {seconds / 60:.1f} min. Every rate and mean is over replicate trials and is "
        "shown with its Monte-Carlo standard error (± SE); rejection rates also with a Wilson 95% interval.",
        "",
        *settings.describe(),
        f"- Peers: EconML {versions['econml'] or 'not installed'} `CausalForestDML` "
        f"({settings.forest_trees} trees, LightGBM classifiers for outcome and treatment, discrete outcome and treatment); "
        f"CausalML {versions['causalml'] or 'not installed'} `BaseXClassifier` (LightGBM outcome and effect learners, "
        "known propensity). Same LightGBM settings as the product's learners, same engineered features.",
        "",
        "### Heterogeneity test: false positives under `null`, power under `final` and `strong`",
        "",
        "Rejection means Holm-adjusted p < alpha; *either outcome* is the family-wise rate under `null`.",
        "",
        _test_table(frame, settings),
        "",
        f"### Benefit ranking at n = {n_mid}: AUC for the true responder subgroup, as a ratio to the oracle",
        "",
        "The oracle ranks patients by their true benefit; its AUC is below 1 because the subgroup label is "
        "`subgroup weight > 0.5` while the true benefit also depends on the baseline score. Mean ± SE over replicates.",
        "",
        _headline_table(frame, settings, n_mid),
        "",
        "### How often each candidate became champion",
        "",
        "Without Holm-significant evidence the job keeps the risk model; with it, the nested-CV choice.",
        "",
        _champion_table(frame, settings),
    ]
    for scenario in settings.scenarios:
        note = {
            "null": "No subgroup by design: everybody has the same naltrexone uplift of the latent response probability, "
            "so AUC against the (meaningless) subgroup label is not shown. On the scale the product models (probability of "
            "a >= 30% improvement) the true benefit still varies slightly with the baseline score, most for memory (SD below): "
            "a rejection here is a false positive in the clinical sense, not strictly in the statistical one.",
            "final": "The FINAL-calibrated scenario: a ~30% subgroup with weak, overlapping biomarker signals.",
            "strong": "A larger, sharper subgroup and markers that track it more closely (power check).",
        }[scenario]
        population = _population(scenario, settings.population, settings.seed + POPULATION_SEED)
        truth = "; ".join(
            f"{o} mean {population[f'true_benefit_{o}'].mean():.3f}, SD {population[f'true_benefit_{o}'].std():.3f}" for o in OUTCOMES
        )
        note += f" True benefit in the held-out population: {truth}; subgroup share {population['true_responder_subgroup'].mean():.0%}."
        parts += [
            "",
            f"### Detail: `{scenario}`",
            "",
            note + " Coverage: share of held-out patients whose true benefit lies inside the method's interval "
            "(champion: bootstrap ensemble; causal forest: its own interval).",
            "",
            _detail_table(frame, settings, scenario),
        ]
    return "\n".join(parts) + "\n"


def run(quick: bool, out_dir: Path, settings: Settings | None = None) -> str:
    """Run section 1 and return its Markdown; per-replicate rows go to ``out_dir/recovery.csv``."""
    settings = settings or (QUICK if quick else FULL)
    scale = os.environ.get("BENCH_REPLICATES_SCALE")
    if scale:  # a longer, more precise campaign: multiply every replicate count
        def scaled(counts: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(max(1, math.ceil(r * float(scale))) for r in counts)

        settings = replace(
            settings,
            replicates=scaled(settings.replicates),
            scenario_replicates=tuple((s, scaled(r)) for s, r in settings.scenario_replicates),
        )
    started = time.perf_counter()
    frame = run_benchmark(settings)
    seconds = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out_dir / "recovery.parquet", index=False)  # exact types (pandas reads "null" in a CSV as missing)
    frame.to_csv(out_dir / "recovery.csv", index=False)
    (out_dir / "recovery-settings.txt").write_text(repr(asdict(settings)) + "\n")
    return render(frame, settings, seconds, quick)
