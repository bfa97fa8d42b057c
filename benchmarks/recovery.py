"""Section 1: subgroup recovery. Does the product find real responder subgroups, refuse false ones, and say honestly how sure it is?

For each scenario (``null``, ``final``, ``strong``), trial size and replicate a
trial is simulated (``training.simulate``) and, per outcome:

1. **Heterogeneity tests** (issue 12, item 7). The product's default test
   (:func:`training.evaluation.permutation_test`: whole-pipeline permutation
   test of the beyond-risk RATE, Besag-Clifford sequential p-value), the
   product's sample-split RATE test (``split_rate``), the grf-style RATE test
   with a half-sample bootstrap (:func:`benchmarks.peers.grf_rate_test`) and a
   statistic of BCF's posterior (:func:`benchmarks.peers.bcf_heterogeneity`),
   each with Holm across the two outcomes; at the nominal level, and at the
   same false-positive rate (p-values calibrated on the ``null`` replicates).
2. **The champion** the job would serve: ``cv.final_choice`` of the product's
   nested :func:`training.evaluation.cross_validate`, refitted by
   :func:`training.train.fit_champion` (the training job's own function) and
   scored by :meth:`training.model.ResponderModel.predict` on a fresh
   held-out population of the same scenario: the served point estimate and
   95% interval, including the unmeasured-heterogeneity allowance.
3. **Every candidate** refitted the same way with its own interval machinery
   (BCF posterior, arm-only Jeffreys draws, bootstrap refits for the others;
   :func:`training.model.model_interval`, widened by the job's allowance with
   :func:`training.model.widen`) and the peers (EconML ``CausalForestDML``
   with its own interval, CausalML ``BaseXClassifier``): AUC for the true
   subgroup, Spearman and RMSE (PEHE) against the true benefit, coverage of
   the individual true benefit and of the observable oracle.
4. **Selection criteria** (item 8): every value of ``selection.criterion``
   (the default ``bcf_when_eligible``: BCF when it is not worse than the
   floor, else the floor) applied to the same out-of-fold predictions of the
   same nested CV, scored by the fresh-patient ranking of the candidate each
   picks.
5. **Two oracles**: the true benefit itself, and the *observable oracle*
   (:mod:`benchmarks.oracle`), a LightGBM fit of the true benefit on 200,000
   simulated patients' engineered features: the best ranking the measured
   features allow.

Compute budget. Not every trial needs every step, and the product's
permutation test (refits four learners per fold per permutation) dominates:
the ``null`` family-wise rate needs many trials but only that test; the
calibration of the other tests' cut-offs and their power need more trials, but
only the cheap tests (one fit each); coverage and the criteria need the
work-up but not the test. So each scenario and size has three counts
(:class:`Settings`): trials (all run the cheap tests), the first of which also
run the permutation test, and the first of which also get the work-up.
``BENCH_REPLICATES_SCALE=k`` multiplies all three.
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

from benchmarks.common import fmt_mean_se, fmt_rate, md_table, mean_se, quiet_environment, wilson
from benchmarks.oracle import OracleSettings, load_oracles
from benchmarks.peers import BCF_SMALL_SD, PEERS

SCENARIOS = ("null", "final", "strong")
OUTCOMES = ("pain", "memory")
CANDIDATES = ("arm_only", "risk_model", "bcf", "interaction_logistic", "t_learner", "dr_learner")
METHODS = ("oracle", "observable", "champion", *CANDIDATES, *PEERS)
CRITERIA = ("bcf_when_eligible", "dr_tau_risk_1se", "dr_tau_risk", "r_loss_1se", "r_loss", "rate")
SELECTORS = CRITERIA
POPULATION_SEED = 999_983  # offset of the held-out population's seed from the trials' seeds
METHOD_LABELS = {
    "oracle": "oracle (true benefit)",
    "observable": "observable oracle (LightGBM on 200k)",
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
SELECTOR_LABELS = {
    "bcf_when_eligible": "`bcf_when_eligible` (BCF when eligible, else the floor)",
    "dr_tau_risk_1se": "`dr_tau_risk_1se` (paired one-SE)",
    "dr_tau_risk": "`dr_tau_risk`",
    "r_loss_1se": "`r_loss_1se`",
    "r_loss": "`r_loss`",
    "rate": "`rate` (Qini RATE of held-out folds)",
}
# The heterogeneity tests; "calibrate" says which column carries the evidence (p: smaller, stat: larger).
TESTS = {
    "permutation": ("product default: permutation test of the beyond-risk RATE", "p"),
    "split_rate": ("product `split_rate`: sample-split beyond-risk RATE, 3 candidates, Bonferroni", "p"),
    "grf_autoc": ("grf-style RATE test, AUTOC (causal forest, half-sample bootstrap)", "p"),
    "grf_qini": ("grf-style RATE test, QINI (causal forest, half-sample bootstrap)", "p"),
    "bcf": ("BCF posterior: 5% quantile of the SD of tau(x)", "stat"),
}
# Combinations decided before looking at any figure: the product's test with each other valid test.
COMBINATIONS = {
    "permutation+split_rate": ("permutation or split_rate (Bonferroni)", ("permutation", "split_rate")),
    "permutation+grf_qini": ("permutation or grf QINI (Bonferroni)", ("permutation", "grf_qini")),
}
# Allowance rules beyond multiples of the job's reference SD (k = intervals.unmeasured_heterogeneity):
ALLOWANCE_RULES = {
    "mean_sd": "k x SD of BCF's mean benefit",  # the SD over patients of BCF's posterior-mean benefit (shrinks with the mean)
    "mean_sd_gap": "k x SD of BCF's mean benefit (+) gap",  # ... in quadrature with the SD of (BCF's benefit - the champion's)
    "gap": "k x BCF posterior spread (+) gap (the job's default)",  # the served interval
}
MIN_NULL_FOR_CALIBRATION = 40  # null values per size below which a test's calibration pools the sizes

Counts = tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True)
class Settings:
    """The Monte-Carlo design of one recovery run (every figure in the section is read against these).

    ``trials``: simulated trials per scenario and size (every one runs the cheap
    tests: split RATE, grf-style RATE, BCF's posterior); ``permutation_trials``:
    how many of them (the first ones) also run the product's permutation test;
    ``full_trials``: how many (the first ones) also get the work-up. ``None``
    settings take the training job's default.
    """

    sizes: tuple[int, ...] = (99, 300, 1000)
    trials: Counts = (("null", (300, 60, 60)), ("final", (5, 20, 20)), ("strong", (5, 20, 20)))
    permutation_trials: Counts = (("null", (300, 20, 12)), ("final", (5, 6, 5)), ("strong", (5, 6, 5)))
    full_trials: Counts = (("null", (4, 4, 3)), ("final", (5, 6, 5)), ("strong", (5, 6, 5)))
    permutations: int = 199  # as the job; the sequential rule stops most null trials after a few dozen
    alpha: float = 0.05
    population: int = 2000  # held-out patients per scenario
    bootstrap_models: int | None = None
    cv_folds: int | None = None  # also the folds of the permutation test's statistic (one config, as in the job)
    cv_repeats: int | None = None
    forest_trees: int = 200  # CausalForestDML trees (multiple of 4)
    rate_bootstrap: int = 200  # half-samples of the grf-style test (grf's default R)
    allowance_multiples: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    oracle: OracleSettings = OracleSettings()
    workers: int = 2
    seed: int = 7000
    scenarios: tuple[str, ...] = SCENARIOS
    peers: bool = True
    candidate_overrides: dict = field(default_factory=dict)  # quick runs: lighter learners

    def counts(self, which: str, scenario: str) -> tuple[int, ...]:
        """Trials per size of one kind (``trials``, ``permutation_trials``, ``full_trials``) for one scenario."""
        return dict(getattr(self, which)).get(scenario, (0,) * len(self.sizes))

    def scaled(self, factor: float) -> Settings:
        """Every trial count multiplied by ``factor`` (rounded up)."""

        def scale(counts: Counts) -> Counts:
            return tuple((s, tuple(math.ceil(c * factor) for c in per_size)) for s, per_size in counts)

        return replace(self, trials=scale(self.trials), permutation_trials=scale(self.permutation_trials), full_trials=scale(self.full_trials))

    def config_overrides(self, seed: int) -> dict:
        """Keyword overrides of the packaged training config for one trial."""
        cv = {k: v for k, v in (("folds", self.cv_folds), ("repeats", self.cv_repeats)) if v is not None}
        out: dict = {"seed": seed, "evidence": {"permutations": self.permutations}}
        if cv:
            out["cv"] = cv
        if self.bootstrap_models is not None:
            out["intervals"] = {"bootstrap_models": self.bootstrap_models}
        if self.candidate_overrides:
            out["candidates"] = self.candidate_overrides
        return out

    def describe(self) -> list[str]:
        """Bullet lines stating the design, for the Markdown section."""
        from training.config import load_config

        job = load_config(None)
        config = load_config(None, **self.config_overrides(self.seed)).resolved(max(self.sizes))

        def per_size(which: str) -> str:
            return "; ".join(
                f"`{s}` " + ", ".join(f"{c} at n = {n}" for n, c in zip(self.sizes, self.counts(which, s), strict=True))
                for s in self.scenarios
            )

        lines = [
            f"- Simulated trials: {per_size('trials')}. Of these, with the product's permutation test: {per_size('permutation_trials')}; "
            f"with the full work-up (nested CV, champion, every candidate's interval, peers, criteria): {per_size('full_trials')}.",
            f"- Product test: `permutation_test` as the job runs it (`evidence.method: {job.evidence.method}`, statistic "
            f"`{job.evidence.statistic}`, {config.cv.folds} folds, sequential stop after h = {job.evidence.sequential_h} exceedances) "
            f"with at most B = {self.permutations} permutations (job: {job.evidence.permutations}; a smaller cap only coarsens "
            f"the p-value, smallest {1 / (self.permutations + 1):.3f}), Holm across pain and memory, alpha = {self.alpha}.",
            f"- Champion: `cross_validate(...).final_choice` ({config.cv.repeats} repeat(s) of {config.cv.folds} outer folds, "
            f"inner {config.cv.inner_folds} folds, criterion `{config.selection.criterion}`), refitted by `training.train.fit_champion` "
            f"({config.intervals.bootstrap_models} bootstrap refits where the candidate has no posterior draws; unmeasured-heterogeneity "
            f"allowance {config.intervals.unmeasured_heterogeneity} x BCF's posterior spread of benefit"
            f"{', plus the model gap in quadrature' if config.intervals.model_gap else ''}) and scored by `ResponderModel.predict`.",
            f"- Held-out population: {self.population:,} simulated patients per scenario (a seed no trial uses); pipelines and models "
            "see the trial only.",
            f"- Observable oracle: LightGBM regression of the true benefit on the engineered features of {self.oracle.patients:,} "
            f"simulated patients per scenario (at most {self.oracle.n_estimators} trees, learning rate {self.oracle.learning_rate}, "
            f"{self.oracle.num_leaves} leaves, early stopping on a 10% split), its own seed; `benchmarks/oracle.py`.",
            f"- grf-style test: {self.forest_trees}-tree causal forests, {self.rate_bootstrap} half-samples.",
        ]
        if self.candidate_overrides:
            lines.append(f"- Candidate settings changed for this run: `{self.candidate_overrides}`.")
        return lines


FULL = Settings()
QUICK = Settings(
    sizes=(99, 300),
    trials=(("null", (3, 2)), ("final", (1, 1)), ("strong", (1, 1))),
    permutation_trials=(("null", (2, 1)), ("final", (1, 1)), ("strong", (1, 1))),
    full_trials=(("null", (1, 1)), ("final", (1, 1)), ("strong", (1, 1))),
    permutations=9,
    population=500,
    bootstrap_models=8,
    cv_repeats=1,
    forest_trees=40,
    rate_bootstrap=50,
    oracle=OracleSettings(patients=20_000, n_estimators=300, learning_rate=0.1),
    candidate_overrides={
        "t_learner": {"lightgbm": {"n_estimators": 30}},
        "dr_learner": {"nuisance": {"n_estimators": 30}, "final": {"n_estimators": 20}},
        "bcf": {"num_gfr": 5, "num_mcmc": 50, "cv_gfr": 3, "cv_mcmc": 20},
    },
)

# A campaign of about 90 minutes on 2 cores (86 measured) (``BENCH_RECOVERY=short``): every size, enough
# work-ups for the served intervals' coverage and the champion's ranking, and 300 cheap permutation
# tests (the job's B = 199) on FINAL-sized null trials: at a family-wise rate near 5%, 300 trials put
# the Wilson 95% upper bound near 8% (40 trials left it at 15%); few at the larger sizes.
SHORT = Settings(
    trials=(("null", (300, 10, 4)), ("final", (8, 6, 3)), ("strong", (8, 6, 3))),
    permutation_trials=(("null", (300, 2, 1)), ("final", (3, 2, 1)), ("strong", (3, 2, 1))),
    full_trials=(("null", (3, 2, 2)), ("final", (8, 6, 3)), ("strong", (8, 6, 3))),
)
PRESETS = {"full": FULL, "short": SHORT, "quick": QUICK}


@dataclass(frozen=True)
class Task:
    """One simulated trial and what to run on it."""

    scenario: str
    n: int
    replicate: int
    permutation: bool  # also run the product's permutation test
    full: bool  # also the work-up: nested CV, champion, every candidate's interval, peers, criteria
    seed: int
    settings: Settings
    observable: dict[str, np.ndarray]  # the observable oracle's prediction on the population, per outcome

    @property
    def kind(self) -> str:
        return "+".join(["cheap tests", *(["permutation test"] if self.permutation else []), *(["work-up"] if self.full else [])])


# ---------------------------------------------------------------------------
# One replicate (runs in a worker process)
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _population(scenario: str, size: int, seed: int) -> pd.DataFrame:
    from training.simulate import simulate

    # Cached per process: every replicate of a scenario is scored on the same patients,
    # so the oracles are constants and ratios to them only carry the trials' variation.
    return simulate(scenario, size, seed)


def population(settings: Settings, scenario: str) -> pd.DataFrame:
    """The held-out population of one scenario."""
    return _population(scenario, settings.population, settings.seed + POPULATION_SEED)


def _peer_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("econml", "causalml", "stochtree"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = ""
    return out


def _ranking_metrics(predicted: np.ndarray, truth: np.ndarray, observable: np.ndarray, subgroup: np.ndarray, scenario: str) -> dict:
    spread = np.std(predicted) > 0
    return {
        # Under `null` the subgroup label exists but carries no benefit: its AUC means nothing.
        "auc": float(roc_auc_score(subgroup, predicted)) if scenario != "null" and spread else (0.5 if scenario != "null" else float("nan")),
        "spearman": float(spearmanr(predicted, truth).statistic) if spread else float("nan"),
        "rmse": float(np.sqrt(np.mean((predicted - truth) ** 2))),
        "rmse_observable": float(np.sqrt(np.mean((predicted - observable) ** 2))),
    }


def _covers(lower: np.ndarray, upper: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean((lower <= target + 1e-12) & (target - 1e-12 <= upper)))


def _interval_metrics(lower, upper, model_lower, model_upper, truth, observable) -> dict:
    return {
        "coverage": _covers(lower, upper, truth),
        "coverage_observable": _covers(lower, upper, observable),
        "coverage_model": _covers(model_lower, model_upper, truth),
        "coverage_model_observable": _covers(model_lower, model_upper, observable),
        "width": float(np.mean(upper - lower)),
        "width_model": float(np.mean(model_upper - model_lower)),
    }


class RecordingExecutor:
    """One in-process executor that keeps the last map's raw results.

    ``cross_validate`` keeps only a summary of its outer folds; their outcome
    models (for the R-loss) are needed to re-run the selection with every criterion.
    """

    name = "local"
    workers = 1

    def __init__(self):
        from training.executor import LocalExecutor

        self._inner = LocalExecutor(workers=1)
        self.results: list | None = None

    def map(self, fn, items, desc="", shared=None, progress=None):
        self.results = self._inner.map(fn, items, desc, shared=shared, progress=progress)
        return self.results


def criterion_choices(cv, outer: list[dict], data, configs: dict) -> tuple[dict[str, str], list[str]]:
    """What each selection criterion picks from the same outer out-of-fold predictions (as ``cross_validate`` does).

    Returns the choice per criterion (``CRITERIA``) and the eligible candidates.
    """
    from training.evaluation import FoldPredictions, select

    names = list(next(iter(configs.values())).candidates.enabled)
    mu = np.full((cv.repeats, cv.n, 2), np.nan)
    for res in outer:
        mu[res["repeat"], res["test"], 0], mu[res["repeat"], res["test"], 1] = res["mu1"], res["mu0"]
    averaged = FoldPredictions(
        {name: (cv.oof[name][:, :, 0].mean(axis=0), cv.oof[name][:, :, 1].mean(axis=0)) for name in names},
        mu[:, :, 0].mean(axis=0),
        mu[:, :, 1].mean(axis=0),
    )
    psi = cv.psi.mean(axis=0)
    choices, eligible = {}, []
    for criterion, config in configs.items():
        selection = select(averaged, data.y, data.t, data.treated_fraction, config, psi=psi)
        choices[criterion], eligible = selection.choice, selection.eligible
    return choices, eligible


def _untested():
    from training.evaluation import PermutationResult

    return PermutationResult(float("nan"), {}, np.array([]), float("nan"))


def run_replicate(task: Task) -> list[dict]:
    """Simulate one trial and run what ``task`` asks for on it; one row per (outcome, test / method / selector)."""
    quiet_environment()
    warnings.simplefilter("ignore")  # peers, LightGBM and stochtree warn about feature names and defaults
    from benchmarks.peers import bcf_heterogeneity, grf_rate_test
    from features.pipeline import build_feature_pipeline
    from training.candidates import make_candidate
    from training.config import load_config
    from training.evaluation import holm, permutation_test, split_rate_test
    from training.executor import LocalExecutor
    from training.simulate import simulate
    from training.spec import load_spec

    wall, cpu = time.perf_counter(), time.process_time()
    settings = task.settings
    spec = load_spec()
    trial = simulate(task.scenario, task.n, task.seed)
    # ``auto`` settings resolved for this trial's size, as the job resolves them.
    config = load_config(None, **settings.config_overrides(task.seed)).resolved(task.n)
    from training.train import outcome_data  # after the environment is quiet: imports MLflow

    executor = LocalExecutor(workers=1)  # replicates are the parallel unit; everything inside runs in this process
    data, counts, features, bcf = {}, {}, {}, {}
    rows: list[dict] = []
    base = {"scenario": task.scenario, "n": task.n, "replicate": task.replicate, "seed": task.seed, "trial_kind": task.kind}
    tests = {o: _untested() for o in OUTCOMES}
    for outcome in OUTCOMES:
        d, counts[outcome] = outcome_data(trial, spec, outcome, config)
        data[outcome] = d
        F = features[outcome] = build_feature_pipeline(spec).fit_transform(d.X).reset_index(drop=True)
        results: dict[str, dict] = {}
        if task.permutation:
            started = time.perf_counter()
            perm = permutation_test(d, spec, config, executor)
            results["permutation"] = {
                "p": perm.p_value,
                "stat": perm.statistic,
                "permutations_run": perm.permutations_run,
                "seconds": time.perf_counter() - started,
            }
            tests[outcome] = perm
        started = time.perf_counter()
        split = split_rate_test(F, d.t, d.y, config, d.treated_fraction, config.seed + 77)
        results["split_rate"] = {"p": split.p_value, "stat": split.statistic, "seconds": time.perf_counter() - started}
        if settings.peers:
            started = time.perf_counter()
            try:
                grf = grf_rate_test(F.to_numpy(float), d.t, d.y, config, task.seed, settings.forest_trees, settings.rate_bootstrap)
            except ImportError as exc:
                results["grf_autoc"] = results["grf_qini"] = {"error": f"not installed ({exc.name})"}
            except Exception as exc:  # a peer's test that breaks on a small trial is reported, not hidden
                results["grf_autoc"] = results["grf_qini"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            else:
                seconds = time.perf_counter() - started
                for target in ("autoc", "qini"):
                    results[f"grf_{target}"] = {"p": grf[f"{target}_p"], "stat": grf[f"{target}_estimate"], "se": grf[f"{target}_se"], "seconds": seconds}
        started = time.perf_counter()
        bcf[outcome] = make_candidate("bcf", config.candidates, d.treated_fraction, config.seed, final=True).fit(F, d.t, d.y)
        posterior = bcf_heterogeneity(bcf[outcome], F)
        # Uncalibrated rule: "P(SD > small) >= 1 - alpha" read as a p-value 1 - P(SD > small).
        results["bcf"] = {
            "p": 1.0 - posterior["p_small"],
            "stat": posterior["q05"],
            "stat_mean": posterior["mean"],
            "seconds": time.perf_counter() - started,
        }
        for test, values in results.items():
            rows.append({**base, "kind": "test", "outcome": outcome, "method": test, **values})
    if task.full:
        # Without the permutation test (alternatives at some sizes) the model is served as "not tested":
        # the evidence changes the labels only, not the point estimates or intervals measured here.
        adjusted = holm({o: tests[o].p_value for o in OUTCOMES})
        for outcome in OUTCOMES:
            rows += _work_up(task, config, spec, trial, outcome, data[outcome], counts[outcome], features[outcome], bcf[outcome], tests[outcome], adjusted)
    rows.append({**base, "kind": "timing", "method": task.kind, "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu})
    return rows


def _work_up(task: Task, config, spec, trial, outcome, d, counts, F, bcf_model, test, adjusted) -> list[dict]:
    """Nested CV, the served champion, every candidate's and peer's interval, the criteria (one outcome)."""
    from benchmarks.peers import fit_peer
    from training.candidates import BootstrapEnsemble, make_candidate
    from training.config import load_config
    from training.data import model_inputs
    from training.effects import adjust
    from training.evaluation import cross_validate
    from training.model import Evidence, model_interval, widen
    from training.results import OutcomeResult
    from training.train import average_effect, champion_reason, fit_champion

    settings = task.settings
    pop = population(settings, task.scenario)
    pop_inputs = model_inputs(pop, spec)
    subgroup = pop["true_responder_subgroup"].to_numpy()
    truth = pop[f"true_benefit_{outcome}"].to_numpy()
    observable = task.observable[outcome]
    base = {"scenario": task.scenario, "n": task.n, "replicate": task.replicate, "seed": task.seed, "trial_kind": task.kind, "outcome": outcome}
    level = config.intervals.level

    # The champion exactly as the training job chooses, fits and serves it.
    started = time.perf_counter()
    recorder = RecordingExecutor()
    cv = cross_validate(d, spec, config, recorder)
    cv_seconds = time.perf_counter() - started
    configs = {c: load_config(None, **settings.config_overrides(task.seed), selection={"criterion": c}).resolved(task.n) for c in CRITERIA}
    choices, eligible = criterion_choices(cv, recorder.results or [], d, configs)
    if choices[config.selection.criterion] != cv.final_choice:
        raise AssertionError(f"re-running the selection gave {choices[config.selection.criterion]}, cross_validate {cv.final_choice}")
    effects = adjust({o: average_effect(trial, spec, o, config) for o in OUTCOMES}, alpha=config.evidence.alpha)
    evidence_found = bool(test.tested and adjusted[outcome] < config.evidence.alpha)
    result = OutcomeResult(
        outcome, counts, d, cv, test, p_adjusted=adjusted[outcome], evidence=evidence_found, champion=cv.final_choice,
        average_effect=effects[outcome],
    )
    result.reason = champion_reason(result, config)
    evidence = Evidence(
        tested=test.tested, subgroup_evidence=evidence_found, p_value=test.p_value, p_adjusted=adjusted[outcome],
        statistic=test.statistic, alpha=config.evidence.alpha, permutations=int(test.permutations_run),
        verdict="benchmark", method=test.method,
    )
    started = time.perf_counter()
    model = fit_champion(result, spec, config, evidence)
    served = model.predict(pop_inputs)
    champion_seconds = time.perf_counter() - started
    P = model.features(pop_inputs)
    reference_sd = float(model.metadata["heterogeneity_reference"]["sd"])

    predictions = {"oracle": truth, "observable": observable, "champion": served["benefit"].to_numpy()}
    intervals: dict[str, tuple] = {"champion": (served["benefit_lower"].to_numpy(), served["benefit_upper"].to_numpy())}
    model_intervals = {"champion": model.model_interval(P, predictions["champion"])}
    seconds = {"oracle": 0.0, "observable": 0.0, "champion": champion_seconds}
    for name in CANDIDATES:
        started = time.perf_counter()
        if name == model.candidate_name:
            candidate, ensemble = model.candidate, model.ensemble
        elif name == "bcf":
            candidate, ensemble = bcf_model, None
        else:
            candidate = make_candidate(name, config.candidates, d.treated_fraction, config.seed, final=True).fit(F, d.t, d.y)
            ensemble = None
            if not candidate.has_draws:
                ensemble = BootstrapEnsemble(candidate, config.intervals.bootstrap_models, level, config.seed).fit(F, d.t, d.y)
        benefit = candidate.predict_benefit(P)
        lower, upper = model_interval(candidate, ensemble, P, benefit, level)
        predictions[name], model_intervals[name] = benefit, (lower, upper)
        intervals[name] = widen(benefit, lower, upper, model.heterogeneity_sd, level)
        seconds[name] = time.perf_counter() - started
    # The served answer is the champion candidate's, through the same functions.
    np.testing.assert_allclose(predictions["champion"], predictions[model.candidate_name], atol=1e-9)
    np.testing.assert_allclose(intervals["champion"][0], intervals[model.candidate_name][0], atol=1e-9)

    errors = {}
    if settings.peers:
        Fa, Pa = F.to_numpy(float), P.to_numpy(float)
        for name in PEERS:
            started = time.perf_counter()
            try:
                predictions[name], interval = fit_peer(name, Fa, d.t, d.y, Pa, d.treated_fraction, config, config.seed, settings.forest_trees)
            except ImportError as exc:  # the bench extra is not installed: say so, do not fake it
                errors[name] = f"not installed ({exc.name})"
                continue
            except Exception as exc:  # a peer that breaks on this stack is reported, not hidden
                errors[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
                continue
            seconds[name] = time.perf_counter() - started
            if interval is not None:
                model_intervals[name] = interval
                intervals[name] = widen(predictions[name], *interval, model.heterogeneity_sd, level)

    rows = []
    metrics = {}
    for name in METHODS:
        row = {**base, "kind": "method", "method": name, "champion_choice": cv.final_choice}
        if name in predictions:
            metrics[name] = _ranking_metrics(predictions[name], truth, observable, subgroup, task.scenario)
            row.update(metrics[name])
            row["seconds"] = seconds[name]
            if name in intervals:
                row.update(_interval_metrics(*intervals[name], *model_intervals[name], truth, observable))
        else:
            row["error"] = errors.get(name, "not run")
        if name == "champion":
            row.update({"heterogeneity_sd": model.heterogeneity_sd, "reference_sd": reference_sd, "cv_seconds": cv_seconds})
        rows.append(row)

    # The champion's interval under other allowances: multiples of the job's reference (BCF's posterior spread of
    # benefit), the SD of BCF's posterior-mean benefit instead, and either with the model gap.
    lower, upper = model_intervals["champion"]
    benefit = predictions["champion"]
    k = config.intervals.unmeasured_heterogeneity
    mean_sd = float(np.std(bcf_model.predict_benefit(F)))
    # What the champion leaves out of the benefit BCF attributes to the measured features (0 for BCF itself):
    # the job's own figure (its BCF reference fit) when intervals.model_gap is on, as served.
    if config.intervals.model_gap:
        gap = float(model.metadata["heterogeneity_reference"]["model_gap_sd"])
    else:
        gap = 0.0 if model.candidate.name == "bcf" else float(np.std(bcf_model.predict_benefit(F) - model.candidate.predict_benefit(F)))
    rules = {f"x{m:g}": m * reference_sd for m in settings.allowance_multiples}
    rules["mean_sd"] = k * mean_sd
    rules["mean_sd_gap"] = math.hypot(k * mean_sd, gap)
    rules["gap"] = math.hypot(k * reference_sd, gap)
    for rule, sd in rules.items():
        wl, wu = widen(benefit, lower, upper, sd, level)
        rows.append(
            {
                **base, "kind": "allowance", "method": rule, "champion_choice": cv.final_choice, "allowance_sd": sd,
                "coverage": _covers(wl, wu, truth), "coverage_observable": _covers(wl, wu, observable), "width": float(np.mean(wu - wl)),
            }
        )

    # Selection criteria: which candidate each picks, judged on the fresh patients.
    best_auc = max(CANDIDATES, key=lambda c: (np.nan_to_num(metrics[c]["auc"], nan=-1.0), -CANDIDATES.index(c)))
    best_rmse = min(CANDIDATES, key=lambda c: (metrics[c]["rmse"], CANDIDATES.index(c)))
    for selector in SELECTORS:
        pick = choices[selector]
        rows.append(
            {
                **base, "kind": "selection", "method": selector, "pick": pick, "eligible": ",".join(eligible),
                "best_auc": best_auc, "best_rmse": best_rmse,
                "picked_best_auc": pick == best_auc, "picked_best_rmse": pick == best_rmse,
                "auc": metrics[pick]["auc"], "rmse": metrics[pick]["rmse"],
                "auc_of_best": metrics[best_auc]["auc"], "rmse_of_best": metrics[best_rmse]["rmse"],
            }
        )
    return rows


# ---------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------


def tasks(settings: Settings, observable: dict[str, dict[str, np.ndarray]]) -> list[Task]:
    """Every trial of the design, round by round: every cell's first trial, then every cell's second, ...

    A campaign stopped early (or still running) then has the first trials of
    every cell; within a round the most expensive come first so that the
    workers finish together.
    """
    out = []
    for scenario in settings.scenarios:
        trials, perm, full = (settings.counts(k, scenario) for k in ("trials", "permutation_trials", "full_trials"))
        for i, n in enumerate(settings.sizes):
            for r in range(trials[i]):
                out.append(Task(scenario, n, r, r < perm[i], r < full[i], settings.seed + 1000 * i + r, settings, observable[scenario]))
    return sorted(out, key=lambda t: (t.replicate, -(2 * t.full + 3 * t.permutation), -t.n))


def _single_threaded(task: Task) -> list[dict]:
    from threadpoolctl import threadpool_limits

    # One BLAS/OpenMP thread per task: the parallel unit is the replicate.
    with threadpool_limits(limits=1):
        return run_replicate(task)


def _campaign_key(settings: Settings) -> str:
    """What must match for a campaign to be resumed: the code revision and the design (not the worker count)."""
    from benchmarks.run import git_revision

    return f"{git_revision()}\n{asdict(replace(settings, workers=0))!r}\n"


def run_benchmark(
    settings: Settings,
    observable: dict[str, dict[str, np.ndarray]],
    progress: bool = True,
    partial: Path | None = None,
    resume: bool = False,
) -> pd.DataFrame:
    """Run every replicate (in ``settings.workers`` processes) and return one row per replicate x outcome x row kind.

    ``partial``: a JSON-lines file that receives each trial's rows as it finishes, so that an
    interrupted campaign still leaves its figures (``pd.read_json(partial, lines=True)``).
    ``resume``: keep the trials already in ``partial`` when it was written by the same code
    revision and design (they are deterministic) and run only the others; their rows are
    marked ``resumed``.
    """
    from joblib import Parallel, delayed

    todo = tasks(settings, observable)
    started = time.perf_counter()
    rows: list[dict] = []
    if partial is not None:
        stamp = partial.with_suffix(".key")
        key = _campaign_key(settings)
        if resume and partial.exists() and stamp.exists() and stamp.read_text() == key:
            earlier = pd.read_json(partial, lines=True)
            finished = set(map(tuple, earlier.loc[earlier["kind"] == "timing", ["scenario", "n", "replicate"]].to_numpy().tolist()))
            earlier = earlier[[(s, n, r) in finished for s, n, r in earlier[["scenario", "n", "replicate"]].itertuples(index=False)]]
            rows = [{**row, "resumed": True} for row in earlier.to_dict("records")]
            todo = [t for t in todo if (t.scenario, t.n, t.replicate) not in finished]
            print(f"[recovery] resuming: {len(finished)} trials kept from {partial}", file=sys.stderr, flush=True)
        else:
            partial.unlink(missing_ok=True)
            stamp.write_text(key)
    if settings.workers > 1:
        results = Parallel(n_jobs=settings.workers, backend="loky", return_as="generator_unordered")(
            delayed(_single_threaded)(task) for task in todo
        )
    else:
        results = (_single_threaded(task) for task in todo)
    for done, result in enumerate(results, 1):
        rows += result
        if partial is not None:
            with partial.open("a") as handle:
                handle.write(pd.DataFrame(result).to_json(orient="records", lines=True))
        if progress:
            first = result[0]
            print(
                f"[recovery] {done}/{len(todo)} {first['scenario']} n={first['n']} replicate {first['replicate']} ({first['trial_kind']}) "
                f"({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------
# Test results: Holm, calibration on null replicates, combinations
# ---------------------------------------------------------------------------


def rejection_table(frame: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """One row per (scenario, n, replicate, outcome, test) with nominal and calibrated p-values, each Holm-adjusted.

    Calibration: a test's evidence (its p-value, or BCF's statistic) is ranked
    among the same test's values on the ``null`` replicates of the same size
    (both outcomes), ``p_cal = (1 + #{null at least as extreme}) / (1 + N)``;
    a null replicate is left out of its own reference. When a size has fewer
    than :data:`MIN_NULL_FOR_CALIBRATION` null values the sizes are pooled.
    Combinations are Bonferroni (twice the smaller p), calibrated the same way.
    """
    from training.evaluation import holm

    tests = frame[frame["kind"] == "test"].copy()
    tests = tests[tests["p"].notna()] if "p" in tests else tests.iloc[0:0]
    keys = ["scenario", "n", "replicate", "outcome"]
    parts = [tests[[*keys, "method", "p", "stat"]]]
    wide = tests.pivot_table(index=keys, columns="method", values="p", aggfunc="first")
    for name, (_, (a, b)) in COMBINATIONS.items():
        if a in wide and b in wide:
            both = wide[[a, b]].dropna()
            combo = both.min(axis=1).mul(2).clip(upper=1.0).rename("p").reset_index()
            combo["method"], combo["stat"] = name, np.nan
            parts.append(combo)
    out = pd.concat(parts, ignore_index=True)
    out["p_cal"] = np.nan
    for method, group in out.groupby("method"):
        column = TESTS.get(method, ("", "p"))[1]
        evidence = group[column] if column == "p" else -group[column]  # smaller = more evidence
        null = group["scenario"] == "null"
        for n in group["n"].unique():
            here = group["n"] == n
            reference = null & (here if (null & here).sum() >= MIN_NULL_FOR_CALIBRATION else True)
            ref_values, ref_rep, ref_n = evidence[reference].to_numpy(), group.loc[reference, "replicate"].to_numpy(), group.loc[reference, "n"].to_numpy()
            for idx in group.index[here]:
                keep = ~((ref_rep == group.at[idx, "replicate"]) & (ref_n == n)) if group.at[idx, "scenario"] == "null" else np.ones(len(ref_values), bool)
                values = ref_values[keep]
                if len(values):
                    out.at[idx, "p_cal"] = (1 + np.sum(values <= evidence[idx] + 1e-12)) / (1 + len(values))
    for column in ("p", "p_cal"):
        adjusted = {}
        for key, group in out.groupby(["scenario", "n", "replicate", "method"]):
            values = holm(dict(zip(group["outcome"], group[column], strict=True)))
            adjusted.update({(*key, o): v for o, v in values.items()})
        out[f"{column}_holm"] = [adjusted[(s, n, r, m, o)] for s, n, r, m, o in out[["scenario", "n", "replicate", "method", "outcome"]].itertuples(index=False)]
    return out


def _test_label(method: str) -> str:
    return TESTS[method][0] if method in TESTS else COMBINATIONS[method][0]


def _rejections(cell: pd.DataFrame, column: str, alpha: float) -> tuple[int, int, int, int]:
    """(pain rejections, memory rejections, either, replicates) on Holm-adjusted ``column``."""
    wide = cell.pivot_table(index="replicate", columns="outcome", values=column, aggfunc="first")
    wide = wide.dropna()
    if wide.empty:
        return 0, 0, 0, 0
    reject = wide < alpha
    pain = int(reject["pain"].sum()) if "pain" in reject else 0
    memory = int(reject["memory"].sum()) if "memory" in reject else 0
    return pain, memory, int(reject.any(axis=1).sum()), len(wide)


def _pct(k: int, n: int) -> str:
    return f"{100 * k / n:.0f}%" if n else "—"


def fwer_markdown(frame: pd.DataFrame, table: pd.DataFrame, settings: Settings) -> str:
    """The null family-wise false-positive rate of the product's default test, per size and pooled."""
    perm = table[(table["method"] == "permutation") & (table["scenario"] == "null")]
    runs = frame[(frame["kind"] == "test") & (frame["method"] == "permutation") & (frame["scenario"] == "null")]
    rows, total = [], [0, 0, 0, 0]
    for n in settings.sizes:
        cell = perm[perm["n"] == n]
        pain, memory, either, R = _rejections(cell, "p_holm", settings.alpha)
        if not R:
            continue
        total = [a + b for a, b in zip(total, (pain, memory, either, R), strict=True)]
        sel = runs[runs["n"] == n]
        rows.append([n, R, fmt_rate(pain, R), fmt_rate(memory, R), fmt_rate(either, R), f"{sel['permutations_run'].mean():.0f}", f"{sel['seconds'].mean():.0f}"])
    pain, memory, either, R = total
    if R:
        rows.append(["all (pooled)", R, fmt_rate(pain, R), fmt_rate(memory, R), f"**{fmt_rate(either, R)}**", f"{runs['permutations_run'].mean():.0f}", f"{runs['seconds'].mean():.0f}"])
    table_md = md_table(["n", "trials", "pain (Holm)", "memory (Holm)", "either outcome (FWER)", "mean permutations run", "s per test"], rows, "lrrrrrr")
    lo, hi = wilson(either, R) if R else (float("nan"), float("nan"))
    core_minutes = runs["seconds"].sum() / 60
    verdict = (
        f"Family-wise false-positive rate {either}/{R} = {100 * either / R:.1f}% (Wilson 95% CI {100 * lo:.1f}–{100 * hi:.1f}%): "
        f"the upper bound is {'below' if hi < 0.10 else '**not** below'} 10%. The {R} tests of {2 * R} outcomes took "
        f"{core_minutes:.0f} process-minutes (wall time inside the worker processes, {settings.workers} in parallel on a shared machine)."
        if R
        else "No null trial ran the permutation test."
    )
    return table_md + "\n\n" + verdict


def tests_markdown(table: pd.DataFrame, settings: Settings, column: str) -> str:
    """Rejection rates of every test (rows: test x size) under null (FWER) and the alternatives (per outcome)."""
    alternatives = [s for s in ("final", "strong") if s in settings.scenarios]
    rows = []
    for method in [*TESTS, *COMBINATIONS]:
        for n in settings.sizes:
            sel = table[(table["method"] == method) & (table["n"] == n)]
            if sel.empty:
                continue
            _, _, either, R = _rejections(sel[sel["scenario"] == "null"], column, settings.alpha)
            row = [_test_label(method), n, f"{either}/{R} = {_pct(either, R)}" if R else "—"]
            for scenario in alternatives:
                pain, memory, either_alt, R_alt = _rejections(sel[sel["scenario"] == scenario], column, settings.alpha)
                row += [f"{_pct(pain, R_alt)} / {_pct(memory, R_alt)} ({R_alt})" if R_alt else "—"]
            rows.append(row)
    headers = ["test", "n", "null: FWER"] + [f"{s}: power pain / memory (trials)" for s in alternatives]
    return md_table(headers, rows, "lrr" + "r" * len(alternatives))


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------


def _cell(frame: pd.DataFrame, kind: str, **where) -> pd.DataFrame:
    sel = frame[frame["kind"] == kind]
    for key, value in where.items():
        sel = sel[sel[key] == value]
    return sel


def _oracle_auc(frame: pd.DataFrame, scenario: str, outcome: str, which: str) -> float:
    sel = _cell(frame, "method", scenario=scenario, outcome=outcome, method=which)
    return float(sel["auc"].iloc[0]) if len(sel) and "auc" in sel else float("nan")


def _ratio(values: pd.Series, oracle: float) -> str:
    if not np.isfinite(oracle):
        return "—"
    mean, se = mean_se(values / oracle)
    if not np.isfinite(mean):
        return "—"
    return f"{mean:.2f}" if not np.isfinite(se) else f"{mean:.2f} ± {se:.2f}"


def _missing(sel: pd.DataFrame) -> str:
    if "error" in sel and sel["error"].notna().any():
        return str(sel["error"].dropna().iloc[0])
    return "—"


def headline_markdown(frame: pd.DataFrame, settings: Settings, n: int) -> str:
    """AUC for the true subgroup as a ratio to the observable oracle, every method, at one size."""
    cells = [(s, o) for s in ("final", "strong") if s in settings.scenarios for o in OUTCOMES]
    rows = []
    for method in METHODS:
        row = [METHOD_LABELS[method]]
        for scenario, outcome in cells:
            sel = _cell(frame, "method", scenario=scenario, n=n, outcome=outcome, method=method)
            if "auc" in sel and sel["auc"].notna().any():
                row.append(_ratio(sel["auc"].dropna(), _oracle_auc(frame, scenario, outcome, "observable")))
            else:
                row.append(_missing(sel))
        rows.append(row)
    return md_table(["method", *[f"{s} / {o}" for s, o in cells]], rows)


def _picks(cell: pd.DataFrame) -> str:
    counts = cell["champion_choice"].value_counts()
    return ", ".join(f"{name} {int(counts[name])}" for name in CANDIDATES if name in counts)


def coverage_markdown(frame: pd.DataFrame, settings: Settings) -> str:
    """The served champion's interval coverage per scenario, size and outcome, against the target."""
    rows = []
    for scenario in settings.scenarios:
        for n in settings.sizes:
            for outcome in OUTCOMES:
                sel = _cell(frame, "method", scenario=scenario, n=n, outcome=outcome, method="champion")
                if sel.empty or "coverage" not in sel:
                    continue
                mean, se = mean_se(sel["coverage"])
                verdict = "yes" if mean >= 0.90 else ("within MC error" if np.isfinite(se) and mean + 2 * se >= 0.90 else f"**no** (short by {0.90 - mean:.2f})")
                rows.append(
                    [
                        scenario, n, outcome, _picks(sel), f"{fmt_mean_se(sel['coverage'], 2)}", fmt_mean_se(sel["coverage_observable"], 2),
                        fmt_mean_se(sel["coverage_model"], 2), f"{sel['width'].mean():.2f}", f"{sel['heterogeneity_sd'].mean():.3f}", verdict,
                    ]
                )
    return md_table(
        ["scenario", "n", "outcome", "champions (trials)", "covers true benefit", "covers observable oracle", "model only (true)",
         "mean width", "allowance SD", ">= 0.90?"],
        rows,
        "lrllrrrrrl",
    )


def allowance_markdown(frame: pd.DataFrame, settings: Settings) -> str:
    """The champion's coverage of the true benefit under other allowance rules (same intervals otherwise)."""
    rules = [f"x{m:g}" for m in settings.allowance_multiples] + list(ALLOWANCE_RULES)
    rows = []
    for scenario in settings.scenarios:
        for n in settings.sizes:
            for outcome in OUTCOMES:
                sel = _cell(frame, "allowance", scenario=scenario, n=n, outcome=outcome)
                if sel.empty:
                    continue
                row = [scenario, n, outcome]
                for rule in rules:
                    r = sel[sel["method"] == rule]
                    row.append(f"{fmt_mean_se(r['coverage'], 2)} ({r['width'].mean():.2f})" if len(r) else "—")
                rows.append(row)
    headers = ["scenario", "n", "outcome"] + [f"{m:g} x BCF SD" for m in settings.allowance_multiples] + list(ALLOWANCE_RULES.values())
    return md_table(headers, rows, "lrl" + "r" * len(rules))


def selection_markdown(frame: pd.DataFrame, settings: Settings) -> tuple[str, str]:
    """Selection criteria: a summary over final/strong at the two largest sizes, and the detail per cell."""
    sel = frame[frame["kind"] == "selection"]
    large = [n for n in settings.sizes if n >= 300] or list(settings.sizes)
    alt = sel[sel["scenario"].isin(["final", "strong"]) & sel["n"].isin(large)]
    null = sel[(sel["scenario"] == "null")]
    summary = []
    for selector in SELECTORS:
        a, z = alt[alt["method"] == selector], null[null["method"] == selector]
        k, R = int(a["picked_best_auc"].sum()) if len(a) else 0, len(a)
        counts = a["pick"].value_counts()
        summary.append(
            [
                SELECTOR_LABELS[selector],
                fmt_rate(k, R) if R else "—",
                fmt_mean_se(a["auc"]) if R else "—",
                fmt_mean_se(a["auc_of_best"] - a["auc"]) if R else "—",
                fmt_mean_se(a["rmse"]) if R else "—",
                fmt_mean_se(z["rmse"]) if len(z) else "—",
                ", ".join(f"{c} {int(counts[c])}" for c in CANDIDATES if c in counts),
            ]
        )
    if len(alt):
        best = alt[alt["method"] == SELECTORS[0]]
        counts = best["best_auc"].value_counts()
        summary.append(
            ["*best candidate on fresh patients (hindsight)*", "—", fmt_mean_se(best["auc_of_best"]), "0", fmt_mean_se(best["rmse_of_best"]),
             fmt_mean_se(null[null["method"] == SELECTORS[0]]["rmse_of_best"]) if len(null) else "—",
             ", ".join(f"{c} {int(counts[c])}" for c in CANDIDATES if c in counts)]
        )
    sizes = " and ".join(str(n) for n in large)
    summary_md = md_table(
        ["criterion", f"picks the best fresh ranking (final + strong, n = {sizes}, both outcomes)", "fresh AUC of its pick",
         "AUC lost vs the best", "PEHE of its pick", "PEHE of its pick under null", "picks"],
        summary,
        "lrrrrrl",
    )
    detail = []
    for scenario in settings.scenarios:
        for n in settings.sizes:
            cell = sel[(sel["scenario"] == scenario) & (sel["n"] == n)]
            if cell.empty:
                continue
            for selector in SELECTORS:
                c = cell[cell["method"] == selector]
                detail.append(
                    [scenario, n, SELECTOR_LABELS[selector],
                     fmt_rate(int(c["picked_best_auc"].sum()), len(c)) if scenario != "null" else "—",
                     fmt_mean_se(c["auc"]) if scenario != "null" else "—", fmt_mean_se(c["rmse"])]
                )
    detail_md = md_table(["scenario", "n", "criterion", "picks the best fresh ranking", "fresh AUC of its pick", "PEHE of its pick"], detail, "lrlrrr")
    return summary_md, detail_md


def detail_markdown(frame: pd.DataFrame, settings: Settings, scenario: str) -> str:
    """Every method's ranking, error and interval per outcome and size in one scenario."""
    rows = []
    for outcome in OUTCOMES:
        observable_auc = _oracle_auc(frame, scenario, outcome, "observable")
        for n in settings.sizes:
            cell = _cell(frame, "method", scenario=scenario, n=n, outcome=outcome)
            if cell.empty:
                continue
            for method in METHODS:
                sel = cell[cell["method"] == method]
                if "rmse" not in sel or sel["rmse"].isna().all():
                    rows.append([outcome, n, METHOD_LABELS[method], _missing(sel), "", "", "", "", "", "", "", ""])
                    continue
                covered = "coverage" in sel and sel["coverage"].notna().any()
                rows.append(
                    [
                        outcome,
                        n,
                        METHOD_LABELS[method],
                        fmt_mean_se(sel["auc"]) if scenario != "null" else "—",
                        _ratio(sel["auc"].dropna(), observable_auc) if scenario != "null" else "—",
                        fmt_mean_se(sel["spearman"]),
                        fmt_mean_se(sel["rmse"]),
                        fmt_mean_se(sel["coverage"], 2) if covered else "",
                        fmt_mean_se(sel["coverage_observable"], 2) if covered else "",
                        fmt_mean_se(sel["coverage_model"], 2) if covered else "",
                        f"{sel['width'].mean():.2f}" if covered else "",
                        f"{sel['seconds'].mean():.1f}",
                    ]
                )
    return md_table(
        ["outcome", "n", "method", "AUC (subgroup)", "AUC / observable oracle", "Spearman (benefit)", "RMSE (PEHE)",
         "covers true benefit", "covers observable oracle", "model only (true)", "width", "fit s"],
        rows,
        "lrlrrrrrrrrr",
    )


def champion_counts_markdown(frame: pd.DataFrame, settings: Settings) -> str:
    rows = []
    for scenario in settings.scenarios:
        for n in settings.sizes:
            for outcome in OUTCOMES:
                cell = _cell(frame, "method", scenario=scenario, n=n, outcome=outcome, method="champion")
                if cell.empty:
                    continue
                counts = cell["champion_choice"].value_counts()
                rows.append([scenario, n, outcome, *[int(counts.get(name, 0)) for name in CANDIDATES]])
    return md_table(["scenario", "n", "outcome", *CANDIDATES], rows, "lrl" + "r" * len(CANDIDATES))


def _resumed(frame: pd.DataFrame) -> str:
    if "resumed" not in frame or not frame["resumed"].fillna(False).astype(bool).any():
        return ""
    kept = frame[frame["resumed"].fillna(False).astype(bool)].drop_duplicates(["scenario", "n", "replicate"]).shape[0]
    return f" ({kept} of them kept from an interrupted run of the same code and design: `BENCH_RESUME=1`)"


def timing_line(frame: pd.DataFrame, settings: Settings) -> str:
    """Where the compute went: CPU time by trial kind, and the permutation tests' share of the wall time."""
    timing = frame[frame["kind"] == "timing"]
    if timing.empty:
        return "- Compute: not recorded."
    by_kind = timing.groupby("method")["cpu_seconds"].agg(["count", "sum"])
    parts = ", ".join(f"{kind}: {int(row['count'])} trials, {row['sum'] / 3600:.2f} h" for kind, row in by_kind.iterrows())
    perm = frame[(frame["kind"] == "test") & (frame["method"] == "permutation")]["seconds"].sum()
    share = perm / timing["seconds"].sum() if timing["seconds"].sum() > 0 else float("nan")
    return (
        f"- Compute: {timing['cpu_seconds'].sum() / 3600:.2f} CPU-hours in {settings.workers} worker processes ({parts}); "
        f"the product's permutation tests took {100 * share:.0f}% of the workers' wall time."
    )


def render(
    frame: pd.DataFrame, settings: Settings, seconds: float, quick: bool, oracles: dict, observable: dict, oracle_cached: bool
) -> str:
    """The Markdown section from the per-replicate rows."""
    versions = _peer_versions()
    n_mid = 300 if 300 in settings.sizes else settings.sizes[-1]
    trials = frame.drop_duplicates(["scenario", "n", "replicate"]).shape[0]
    table = rejection_table(frame, settings)
    oracle_lines = []
    for scenario in settings.scenarios:
        pop = population(settings, scenario)
        o = oracles[scenario]
        parts = []
        for outcome in OUTCOMES:
            truth = pop[f"true_benefit_{outcome}"].to_numpy()
            pred = observable[scenario][outcome]
            parts.append(
                f"{outcome}: true benefit mean {truth.mean():.3f}, SD {truth.std():.3f}; unexplained by the features (RMSE of the "
                f"observable oracle) {np.sqrt(np.mean((truth - pred) ** 2)):.3f} ({o.trees[outcome]} trees)"
            )
        oracle_lines.append(f"- `{scenario}`: " + "; ".join(parts) + f"; subgroup share {pop['true_responder_subgroup'].mean():.0%}.")
    oracle_time = "taken from the cache (`benchmarks/out/`)" if oracle_cached else f"fitted in this run ({sum(o.seconds for o in oracles.values()) / 60:.1f} min)"
    parts = [
        "## 1. Subgroup recovery",
        "",
        f"{'QUICK smoke run: figures are not estimates. ' if quick else ''}"
        f"{trials} simulated trials in {seconds / 60:.1f} min{_resumed(frame)}. Every rate and mean is over replicate trials and is "
        "shown with its Monte-Carlo standard error (± SE); rejection rates also with a Wilson 95% interval where it matters.",
        "",
        *settings.describe(),
        timing_line(frame, settings),
        f"- Peers: EconML {versions['econml'] or 'not installed'} `CausalForestDML` "
        f"({settings.forest_trees} trees, LightGBM classifiers for outcome and treatment, discrete outcome and treatment, its own "
        f"`effect_interval`); CausalML {versions['causalml'] or 'not installed'} `BaseXClassifier` (LightGBM outcome and effect "
        f"learners, known propensity; no interval). Same LightGBM settings as the product's learners, same engineered features. "
        f"BCF: stochtree {versions['stochtree'] or 'not installed'}.",
        "",
        f"The truth in the held-out populations, and what the observable oracle ({oracle_time}) cannot explain:",
        "",
        *oracle_lines,
        "",
        "### Null family-wise false-positive rate of the product's test",
        "",
        "Rejection: Holm-adjusted p < alpha; *either outcome* is the family-wise rate.",
        "",
        fwer_markdown(frame, table, settings),
        "",
        "### Heterogeneity tests compared: the product's against the peers' own",
        "",
        "At the nominal level (each test's own p-value; BCF: the uncalibrated rule 'posterior probability "
        f"that the SD of tau exceeds {BCF_SMALL_SD} probit units, read as p = 1 - that probability'), Holm across pain and memory:",
        "",
        tests_markdown(table, settings, "p_holm"),
        "",
        "At the same false-positive rate: every test's evidence is ranked among its own values on the `null` trials of the same size "
        f"(sizes pooled when there are fewer than {MIN_NULL_FOR_CALIBRATION}; a null trial is left out of its own reference), then Holm. "
        "This is possible only in a simulator (it needs the null distribution), so it compares tests, it does not make one valid.",
        "",
        tests_markdown(table, settings, "p_cal_holm"),
        "",
        "How `split_rate` differs from grf's RATE test: the same TOC and QINI weighting (`rate_qini` = grf's QINI target); "
        "grf ranks with one causal forest and scores with AIPW scores of a second forest on the evaluation half (out-of-bag "
        "CATE, forest outcome mean), averages DR scores within tied priorities and takes the SE as the SD over half-samples "
        "drawn without replacement; `split_rate` ranks with the best of three learners by their beyond-risk benefit (risk "
        "model's benefit subtracted from ranking and scores, Bonferroni over the three), scores with cross-fitted per-arm "
        "logistic outcome models, breaks ties by order, and bootstraps with replacement.",
        "",
        f"### Benefit ranking at n = {n_mid}: AUC for the true subgroup as a ratio to the observable oracle",
        "",
        "1.00 is the best ranking the measured features allow; the true-benefit oracle is above 1 because the features measure "
        "the latent profile only noisily. Mean ± SE over trials.",
        "",
        headline_markdown(frame, settings, n_mid),
        "",
        "### Coverage of the served champion's 95% benefit interval",
        "",
        "`ResponderModel.predict` on the held-out population: the interval the API returns (model uncertainty widened by the "
        "allowance: k x BCF's posterior spread of benefit over the training patients, plus in quadrature the SD of BCF's benefit "
        "minus the champion's when `intervals.model_gap` is on, the default). Target (issue 12): covers the individual true benefit for "
        ">= 0.90 of patients in every scenario and size. *Model only* is the interval before the allowance.",
        "",
        coverage_markdown(frame, settings),
        "",
        "The same champion intervals under other allowance rules (coverage of the true benefit, mean width in brackets; k = "
        "`intervals.unmeasured_heterogeneity`): multiples of the job's reference, BCF's posterior spread of benefit (the "
        "posterior mean, over draws, of the SD of the drawn benefit across the training patients); the SD of BCF's "
        "posterior-mean benefit instead (which shrinks with the posterior mean on small trials); and either with the *gap* "
        "added in quadrature: the SD over the training patients of BCF's benefit minus the champion's, i.e. the "
        "measured-feature heterogeneity the champion leaves out (all of BCF's for the arm-only floor, none for BCF itself). "
        "The last column is what the API serves.",
        "",
        allowance_markdown(frame, settings),
        "",
        "### Selection criteria: which picks the candidate that ranks fresh patients best",
        "",
        "Every criterion is applied to the same outer out-of-fold predictions of the same nested CV (as `cross_validate` does for "
        "its `final_choice`), among the candidates not worse than the floor; *best* is the candidate with the highest AUC for the "
        "true subgroup on the held-out population (all six fitted on the whole trial).",
        "",
        *selection_markdown(frame, settings)[:1],
        "",
        "### How often each candidate became champion",
        "",
        champion_counts_markdown(frame, settings),
    ]
    notes = {
        "null": "No subgroup by design: the same naltrexone uplift of the latent response probability for everybody, so AUC "
        "against the (meaningless) subgroup label is not shown. On the scale the product models (probability of a >= 30% "
        "improvement) the true benefit still varies a little with the baseline score.",
        "final": "The FINAL-calibrated scenario: a ~30% subgroup with weak, overlapping biomarker signals.",
        "strong": "A larger, sharper subgroup and markers that track it more closely (power check).",
    }
    for scenario in settings.scenarios:
        parts += [
            "",
            f"### Detail: `{scenario}`",
            "",
            notes[scenario] + " Intervals: the champion's as served; each candidate's own (BCF posterior, arm-only Jeffreys, "
            "bootstrap refits) and the causal forest's, all widened by the job's allowance; *model only* before it.",
            "",
            detail_markdown(frame, settings, scenario),
        ]
    parts += ["", "### Detail: selection criteria per cell", "", selection_markdown(frame, settings)[1]]
    return "\n".join(parts) + "\n"


def observable_predictions(oracles: dict, settings: Settings) -> dict[str, dict[str, np.ndarray]]:
    """The observable oracle's predictions on each scenario's held-out population."""
    from training.data import model_inputs
    from training.spec import load_spec

    spec = load_spec()
    return {s: oracles[s].predict(model_inputs(population(settings, s), spec)) for s in settings.scenarios}


def run(quick: bool, out_dir: Path, settings: Settings | None = None) -> str:
    """Run section 1 and return its Markdown; per-replicate rows go to ``out_dir/recovery.parquet`` (and ``.csv``)."""
    preset = os.environ.get("BENCH_RECOVERY", "").strip().lower()
    if preset and preset not in PRESETS:
        raise ValueError(f"BENCH_RECOVERY={preset!r}: expected one of {sorted(PRESETS)}")
    settings = settings or (QUICK if quick else PRESETS[preset or "full"])
    scale = os.environ.get("BENCH_REPLICATES_SCALE")
    if scale:  # a longer, more precise campaign: multiply every replicate count
        settings = settings.scaled(float(scale))
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    oracles, cached = load_oracles(settings.scenarios, settings.oracle, out_dir / "oracle-cache")
    observable = observable_predictions(oracles, settings)
    resume = os.environ.get("BENCH_RESUME") == "1"
    frame = run_benchmark(settings, observable, partial=out_dir / "recovery-partial.jsonl", resume=resume)
    seconds = time.perf_counter() - started
    frame.to_parquet(out_dir / "recovery.parquet", index=False)  # exact types (pandas reads "null" in a CSV as missing)
    frame.to_csv(out_dir / "recovery.csv", index=False)
    (out_dir / "recovery-settings.txt").write_text(repr(asdict(settings)) + "\n")
    return render(frame, settings, seconds, quick, oracles, observable, cached)
