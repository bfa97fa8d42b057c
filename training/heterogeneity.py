"""Is there effect modification? A randomisation test of the null it names, with the served model as its statistic.

**Null hypothesis.** No effect modification beyond a constant treatment effect
on the probit scale with a flexible prognosis:
``P(y = 1 | x, t) = Phi(m(x) + c t)`` for some function ``m`` and constant
``c``. On the risk-difference scale such a trial still shows benefits that
vary with baseline risk; that variation is the risk-based (PATH) answer
(:mod:`training.path`), not a subgroup, and this null does not count it.

**Statistic.** The served model itself: the Bayesian Causal Forest (probit
link, the cross-validation settings with ``evidence.warm_starts`` grow-from-root
iterations, which dominate a small trial's fit, and the test refits BCF up to
a hundred times) fitted to the trial. ``T`` is the
standard deviation across patients of its posterior-mean treatment effect on
the probit scale, after removing the part that a cubic in its posterior-mean
prognosis *on control* (``mu(x) - tau(x) / 2`` with BCF's +-1/2 coding)
explains. BCF's effect forest is shrunk towards one common effect, so ``T``
is small unless the data insist that effects differ. The removed part is what
a prognosis the forest cannot fit leaks into the effect forest (prototype
runs on constant-effect trials with a U-shaped prognosis, n = 200, one
outcome, trials simulated from the fitted null: the plain spread gave
p <= 0.05 in 3 of 30 trials, the residual spread in 1 of 20), and effect
variation that runs with baseline risk is what the PATH treatment x risk
interaction test examines (:mod:`training.path`). The prognosis is the
control arm's, as in PATH: the forest's midpoint ``mu(x)`` carries half of
every patient's own effect, so removing a cubic in it removed much of the
effect modification the test looks for (the recovery benchmark measures the
level and power of this statistic: benchmarks/RESULTS.md section 1).

**Calibration.** A composite null has no exact permutation distribution,
so the test builds null trials from the fitted no-modification model, as a
randomisation test with imputed potential outcomes (in the spirit of Ding,
Feller & Miratrix, JRSS-B 2016, with the nuisance effect plugged in): the
fitted BCF's posterior-mean prognosis ``mu(x)`` (at the midpoint of its +-1/2
treatment coding) with its average probit effect ``c``. Each patient's latent
error is drawn given their real outcome; the arms are re-randomised; a
patient who keeps their arm keeps their real outcome, and one whose arm
changed gets the outcome of the same latent shifted by ``c``. BCF is refitted
on every null trial. Keeping the real outcomes keeps the trial's real
prognostic structure, which a trial simulated wholly from the fitted model
lacks (the fitted prognosis is smoother than the truth, so such trials were
easier for the forest and the test rejected too often). The price is power:
on a trial with effect modification the kept outcomes, and the latents drawn
given real outcomes, carry part of it into the null trials (section 1 of
benchmarks/RESULTS.md measures the share per statistic). The p-value is
Besag & Clifford's sequential Monte-Carlo p-value over at most
``evidence.replicates`` null trials (it stops once ``sequential_h`` of their
statistics reach the observed one), which is exact whenever it stops. With
199 null trials and h = 5 a stopped test has p >= 5/199 > 0.025, so stopping
never changes Holm's first step for two outcomes; at 0.05 it can (rarely)
differ from the verdict of all 199. With 99 null trials a p-value below
0.025 needed at most one null statistic at the observed one, and that
resolution cost power at n = 1,000 (benchmarks/RESULTS.md, section 1).

**The trial's prespecified modifiers.** When the spec names
``prespecified_modifiers`` (and ``evidence.prespecified`` is true), a second
statistic joins BCF's spread on the same null trials: the probit
likelihood-ratio statistic of arm x those modifiers, adjusted for a quadratic
in the cross-fitted PATH risk score, or its signed root (one-sided) when the
spec's ``prespecified_direction`` says which way the one modifier moves the
benefit (:mod:`training.modifiers`). Its
chi-square reading is never used: each statistic's p-value is its rank among
the observed and the null trials, and the test's p-value is the rank of
Fisher's combination (``-sum log p``) of the observed trial among every
trial's (:func:`training.inference.fisher_p_value`: exact whenever the trials
are exchangeable, as for one statistic, whatever the statistics'
dependence). Fisher's combination accumulates evidence that both statistics
see, as both look at the same modification (BCF along any feature, the LR
statistic along the named ones). Besag & Clifford's rule does not apply to a
rank that depends on every null trial, so futility rules stop the null
trials instead: once the observed trial's own p-values (which more null
trials can only raise) would put the combination above alpha even for
independent statistics, or, looked at every 20 null trials, once the chance
that the whole budget would still reject is below 0.1% (stochastic
curtailment, :func:`training.inference._curtailed`). A stopped test does not
reject, so stopping never adds a rejection to those of the whole budget. The result's ``statistic`` is
then Fisher's combination (larger is more extreme), ``details["components"]``
gives each statistic with its own p-value, and ``null_components`` every
null trial's pair. A null trial whose probit fit fails counts as reaching
the observed statistic (conservative); when the observed trial's fit fails,
BCF's spread is tested alone and the details say why.

``evidence.combination: bonferroni`` joins them otherwise: BCF's spread on the
null trials (Besag-Clifford), the modifiers' statistic by a parametric
bootstrap from its own fitted no-modification probit model
(:func:`training.modifiers.parametric_bootstrap`: no bootstrap trial keeps a
real outcome, so none carries part of a real modification, but it is exact
only when that model is the truth), the smaller p-value doubled.
``evidence.combination: fisher_or_bootstrap`` keeps the Fisher test whole and
joins it to that bootstrap the same way (:func:`fisher_or_bootstrap_result`).
Section 1 of benchmarks/RESULTS.md measures both beside the default on the
same trials.

On trials above ``evidence.max_patients`` (up to twice that) the test runs on
a random subsample of that many patients, stratified by outcome (every null
trial refits BCF; :func:`test_rows` says why not by arm x outcome). The recovery benchmark (benchmarks/recovery.py) measures its level on
several null designs and sizes, and its power beside the other tests.

**Larger trials: a held-out test.** (From 2,000 patients the served model is the
cross-validation's choice, ``selection.criterion: auto``; BCF stays the test's
prespecified statistic.) Above twice ``evidence.max_patients`` a
subsample would cap the test's power at that of a 1,000-patient trial however
many patients there are. There BCF (the same statistic's fit) is fitted on that
subsample and tested on every other patient, in the manner of the
best-linear-predictor test of Chernozhukov, Demirer, Duflo & Fernandez-Val
(2018): on the held-out patients, with BCF's arm probabilities as the outcome
models and the known randomisation probability, each patient's doubly-robust
benefit score (unbiased for their conditional benefit whatever BCF got wrong)
is regressed on a cubic in BCF's prognosis on control and on BCF's effect
beyond that cubic (``S``). Under the null every conditional benefit is a
function of the true prognosis; the cubic in BCF's estimate of it stands in
for that function, so ``S`` should predict nothing (how nearly is what the null
designs of section 4 measure). The statistic is the z of ``S``'s slope (heteroscedasticity-
consistent standard error), one-sided (more benefit where BCF predicts more).
Its p-value is not read from the normal distribution (section 4 of
benchmarks/RESULTS.md shows that reading's level and the SD of z beside the
job's): the held-out patients get null trials of their own,
built as above from BCF's no-modification model (BCF is not refitted: it never
saw them), ``evidence.replicates`` of them, each two passes over the held-out
patients (section 3 of benchmarks/RESULTS.md times the test phase up to 10^6).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy.special import ndtr
from scipy.stats import norm

from core.candidates import BCF, make_candidate, stratified_subsample
from core.config import TrainConfig
from core.spec import DatasetSpec, modifier_parts
from training import metrics as M
from training.evaluation import OutcomeData, features_of, with_parsed
from training.executor import Executor
from training.inference import (
    CURTAIL_CHANCE,
    CURTAIL_EVERY,
    CURTAIL_FIRST,
    STATISTIC_LABELS,
    PermutationResult,
    combined_null,
    fisher_statistics,
    marginal_p_values,
    sequential_null,
)
from training.modifiers import modifier_matrix, modifier_statistic, parametric_bootstrap
from training.rate_tests import permutation_test

STATISTIC = STATISTIC_LABELS["bcf_spread"]
COMBINED_STATISTIC = STATISTIC_LABELS["bcf_spread_modifiers"]
BONFERRONI_STATISTIC = STATISTIC_LABELS["bcf_spread_or_modifiers"]
FISHER_OR_BOOTSTRAP_STATISTIC = STATISTIC_LABELS["bcf_spread_modifiers_or_bootstrap"]
HELD_OUT_STATISTIC = STATISTIC_LABELS["bcf_held_out"]
NULL = (
    "no effect modification beyond a constant treatment effect on the probit scale with a flexible prognosis: "
    "P(response | x, arm) = Phi(m(x) + c x arm)"
)
MODIFIER_STATISTIC = "probit likelihood-ratio statistic of arm x {names}, adjusted for a quadratic in the cross-fitted PATH risk score"
DIRECTED_MODIFIER_STATISTIC = (
    "signed root of the probit likelihood-ratio statistic of arm x {names} (one-sided: large when the effect {moves} with it), "
    "adjusted for a quadratic in the cross-fitted PATH risk score"
)


def modifier_label(names: list[str], direction: str = "any") -> str:
    """What the modifiers' statistic is, in words (the spec's names, joined features written as the mean of them)."""
    written = ", ".join(_written(name) for name in names)
    if direction == "any":
        return MODIFIER_STATISTIC.format(names=written)
    return DIRECTED_MODIFIER_STATISTIC.format(names=written, moves="rises" if direction == "increasing" else "falls")


def _written(name: str) -> str:
    parts = modifier_parts(name)
    return parts[0] if len(parts) == 1 else f"the mean of standardised {' and '.join(parts)}"


@dataclass(frozen=True)
class NullTrialTask:
    """What every null trial reads (sent to each worker once)."""

    F: pd.DataFrame
    t: np.ndarray
    y: np.ndarray
    eta0: np.ndarray  # the fitted prognosis at the midpoint of the arms (probit, posterior mean), per patient
    effect: float  # the fitted constant probit effect (the posterior mean of the average effect)
    config: TrainConfig
    e: float
    seed: int
    modifiers: np.ndarray | None = None  # the prespecified modifiers (patients x modifiers), or None: BCF's spread alone
    direction: str = "any"  # the spec's prespecified_direction (training.modifiers.modifier_lr_test)


def fit_statistic(F: pd.DataFrame, t: np.ndarray, y: np.ndarray, config: TrainConfig, e: float, seed: int) -> tuple[float, np.ndarray, np.ndarray]:
    """BCF fitted to (F, t, y): the statistic, and the posterior draws (patients x draws) of prognosis and effect (probit).

    BCF as cross-validation fits it, with ``evidence.warm_starts`` warm-start iterations.
    """
    bcf = config.candidates.bcf.model_copy(update={"cv_gfr": config.evidence.warm_starts})
    model = make_candidate(BCF, config.candidates.model_copy(update={"bcf": bcf}), e, seed).fit(F, t, y)
    mu, tau = model.midpoint_draws(F)
    return spread_beyond_prognosis(tau.mean(axis=1), (mu - tau / 2).mean(axis=1)), mu, tau


def spread_beyond_prognosis(tau: np.ndarray, mu: np.ndarray) -> float:
    """SD of ``tau`` after least-squares removal of a cubic in standardised ``mu`` (the statistic; ``mu``: prognosis on control)."""
    return float(np.std(beyond_prognosis(tau, mu)[1]))


def beyond_prognosis(tau: np.ndarray, prognosis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the cubic basis in standardised ``prognosis``, ``tau``'s least-squares residual on it): both tests' "beyond prognosis"."""
    z = (prognosis - prognosis.mean()) / (prognosis.std() or 1.0)
    basis = np.column_stack([np.ones_like(z), z, z**2, z**3])
    return basis, tau - basis @ np.linalg.lstsq(basis, tau, rcond=None)[0]


def null_trial(rng: np.random.Generator, t: np.ndarray, y: np.ndarray, eta0: np.ndarray, effect: float) -> tuple[np.ndarray, np.ndarray]:
    """One trial under the fitted null: arms re-randomised, outcomes imputed for the patients whose arm changed.

    Each patient's latent error is drawn given their real outcome (a normal
    truncated at the threshold of ``eta0 + effect (t - 1/2)``), and the outcome
    on the other arm is the same latent shifted by the constant effect. A
    patient who keeps their arm keeps their real outcome.
    """
    observed = eta0 + effect * (t - 0.5)
    below = norm.cdf(-observed)  # P(latent error < -observed)
    u = rng.random(len(t))
    eps = norm.ppf(np.where(y == 1, below + u * (1 - below), u * below).clip(1e-12, 1 - 1e-12))
    arms = rng.permutation(t)
    outcome = (eta0 + effect * (arms - 0.5) + eps > 0).astype(int)
    return arms, np.where(arms == t, y, outcome)


def _replicate(seed: int, task: NullTrialTask) -> float | tuple[float, float]:
    rng = np.random.default_rng(seed)
    t, y = null_trial(rng, task.t, task.y, task.eta0, task.effect)
    if y.min() == y.max():  # a simulated trial with one outcome class has no spread to estimate
        return 0.0 if task.modifiers is None else (0.0, float("inf"))  # the modifiers' fit fails: counted as reaching
    spread = fit_statistic(task.F, t, y, task.config, task.e, task.seed)[0]
    if task.modifiers is None:
        return spread
    return spread, modifier_statistic(task.F, task.modifiers, t, y, task.config, task.direction)


def test_rows(y: np.ndarray, max_patients: int, seed: int) -> np.ndarray | None:
    """The subsample the test runs on (stratified by outcome; the arms play no part), or None for every patient.

    Stratified by the outcome alone, not by arm x outcome: a subsample drawn in proportion to the arm x outcome
    table makes the other patients' table a scaled copy of the fit's, so the choice of patients depends on the
    arms and outcomes together, the arms of the patients left are no longer exchangeable given their outcomes,
    and the null trials (which re-randomise them) no longer describe the test's statistic. On the sharp null at
    10,000 patients (section 4 of the benchmarks) the held-out z had SD 1.16 over 300 outcome-runs with the
    arm x outcome subsample and 1.00 with a random one on the same trials.
    """
    if len(y) <= max_patients:
        return None
    return np.sort(stratified_subsample(np.asarray(y).astype(int), max_patients, seed))


def heterogeneity_test(data: OutcomeData, spec: DatasetSpec, config: TrainConfig, executor: Executor, desc: str = "heterogeneity test") -> PermutationResult:
    """The test ``evidence.method`` names, on one outcome's patients."""
    if config.evidence.method != "imputed_randomisation":
        return permutation_test(data, spec, config, executor, desc=desc)
    F = features_of(spec, with_parsed(data, spec).parsed)
    modifiers = spec.prespecified_modifiers if config.evidence.prespecified else []
    return imputed_randomisation_test(
        F, data.t, data.y, config, data.treated_fraction, executor, desc, modifiers, direction=spec.prespecified_direction
    )


def imputed_randomisation_test(
    F: pd.DataFrame,
    t: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    e: float,
    executor: Executor,
    desc: str = "heterogeneity test",
    modifiers: list[str] | tuple[str, ...] = (),
    min_hits: int = 0,
    direction: str = "any",
):
    """The test on one outcome's engineered features (see the module docstring); ``modifiers``: prespecified names.

    ``direction``: the spec's ``prespecified_direction`` (``any``: the modifiers' two-sided likelihood ratio;
    ``increasing`` or ``decreasing``: its signed root, one-sided; :mod:`training.modifiers`).

    ``min_hits`` (benchmarks only): with modifiers, keep running null trials until each statistic has been reached
    this many times, so each can be read alone from the same run; the test's own result does not change.
    """
    config = config.resolved(len(y))
    seed = config.seed + 77
    n_all = len(y)
    named = modifier_matrix(F, list(modifiers)) if modifiers else None  # a name the features lack: a clear error, first
    rows = test_rows(y, config.evidence.max_patients, seed)
    if rows is not None and n_all > 2 * config.evidence.max_patients and config.evidence.replicates > 0:  # 0: not tested
        return held_out_test(F, np.asarray(t).astype(int), np.asarray(y).astype(int), rows, config, e, seed)
    if rows is not None:
        F, t, y = F.iloc[rows].reset_index(drop=True), np.asarray(t)[rows], np.asarray(y)[rows]
        named = None if named is None else named[rows]
    t, y = np.asarray(t).astype(int), np.asarray(y).astype(int)
    observed, mu, tau = fit_statistic(F, t, y, config, e, seed)
    effect = float(tau.mean())  # the constant effect of the no-modification model
    details = {
        "null": NULL,
        "statistic": STATISTIC,
        "null_model": "the fitted BCF's posterior-mean prognosis mu(x) with its average probit effect; arms re-randomised, "
        "outcomes imputed for patients whose arm changed",
        "null_effect_probit": effect,
        "bcf_fit": f"{config.evidence.warm_starts} warm-start iterations, {config.candidates.bcf.cv_mcmc} draws, one chain",
        "n_tested": len(y),
        "n_patients": n_all,
    }
    B, h = config.evidence.replicates, config.evidence.sequential_h
    if B == 0:
        return PermutationResult(observed, {BCF: observed}, np.array([]), float("nan"), "bcf_spread", "imputed_randomisation", 0, False, details)
    seeds = [int(s) for s in np.random.SeedSequence([config.seed, 4242]).generate_state(B)]
    if named is not None and config.evidence.combination == "bonferroni":
        task = NullTrialTask(F, t, y, mu.mean(axis=1), effect, config, e, seed)
        return _bonferroni_test(observed, named, list(modifiers), direction, task, seeds, executor, desc, details)
    if named is not None:
        told = modifier_statistic(F, named, t, y, config, direction)
        if np.isfinite(told):
            task = NullTrialTask(F, t, y, mu.mean(axis=1), effect, config, e, seed, named, direction)
            fisher = _combined_test(observed, told, list(modifiers), task, seeds, executor, desc, details, min_hits)
            if config.evidence.combination != "fisher_or_bootstrap":
                return fisher
            boot = parametric_bootstrap(F, named, t, y, config, direction, B, h, seed)
            return fisher_or_bootstrap_result(fisher, boot, B, h)
        details["prespecified_modifiers"] = f"not tested: the probit fit of arm x {', '.join(modifiers)} failed on this trial"
    task = NullTrialTask(F, t, y, mu.mean(axis=1), effect, config, e, seed)
    label = f"{desc} (at most {B} null trials; stops once {h} reach the observed statistic)" if h else desc
    null, p_value, used = sequential_null(_replicate, seeds, observed, h, executor, task, label, "null trial", desc)
    return PermutationResult(observed, {BCF: observed}, null, p_value, "bcf_spread", "imputed_randomisation", used, used < B, details)


def _combined_test(
    spread: float, told: float, names: list[str], task: NullTrialTask, seeds: list[int], executor: Executor, desc: str, details: dict,
    min_hits: int = 0,
):
    """BCF's spread and the prespecified modifiers' statistic on the same null trials, joined by Fisher (module docstring)."""
    B, alpha = len(seeds), task.config.evidence.alpha
    observed = np.array([spread, told])
    label = f"{desc} (at most {B} null trials; stops once the test cannot, or can hardly still, reject at {alpha:g})"
    null, p_value, used = combined_null(_replicate, seeds, observed, alpha, executor, task, label, "null trial", desc, min_hits)
    rows = np.vstack([observed, null[:used]])
    marginal, combined = marginal_p_values(rows), fisher_statistics(rows)
    details.update(
        statistic=COMBINED_STATISTIC,
        combination="Fisher's combination over the same null trials: each statistic's Monte-Carlo p-value (its rank among "
        "the observed and the null trials), -sum of their logs, and that value's rank among every trial's",
        stopping=f"futility: stops once the observed p-values (which more null trials can only raise) would put the "
        f"combination above {alpha:g} even for independent statistics, or once the chance that all {B} null trials would "
        f"still reject is below {CURTAIL_CHANCE:.1%} (curtailment, looked at every {CURTAIL_EVERY} null trials from "
        f"{CURTAIL_FIRST}); a stopped test does not reject",
        components={
            "bcf_spread": {"label": STATISTIC, "observed": spread, "p_value": float(marginal[0, 0])},
            "prespecified_modifiers": {
                "label": modifier_label(names, task.direction),
                "modifiers": names,
                "direction": task.direction,
                "observed": told,
                "p_value": float(marginal[0, 1]),
            },
        },
    )
    return PermutationResult(
        float(combined[0]), {BCF: spread}, combined[1:], p_value, "bcf_spread_modifiers", "imputed_randomisation", used, used < B, details,
        null_components=null, observed_components=observed,
    )


def _bonferroni_test(
    spread: float, named: np.ndarray, names: list[str], direction: str, task: NullTrialTask, seeds: list[int],
    executor: Executor, desc: str, details: dict,
):
    """``evidence.combination: bonferroni``: BCF's spread on the null trials, the modifiers by a parametric bootstrap.

    Each statistic has its own p-value (Besag-Clifford, ``sequential_h``); the test's is the smaller one doubled, a
    union-intersection test that holds its level whatever the two statistics' dependence when each holds its own.
    """
    config = task.config
    B, h = len(seeds), config.evidence.sequential_h
    label = f"{desc}: BCF's spread (at most {B} null trials; stops once {h} reach the observed statistic)" if h else desc
    null, p_spread, used = sequential_null(_replicate, seeds, spread, h, executor, task, label, "null trial", desc)
    boot = parametric_bootstrap(task.F, named, task.t, task.y, config, direction, B, h, task.seed)
    return bonferroni_result(spread, null, p_spread, used, boot, names, direction, B, h, details)


def bonferroni_result(
    spread: float, null: np.ndarray, p_spread: float, used: int, boot: dict, names: list[str], direction: str, B: int, h: int,
    details: dict,
) -> PermutationResult:
    """The Bonferroni test's result from its two parts: BCF's spread with its null trials (Besag-Clifford ``p_spread``
    after ``used`` of at most ``B``) and the modifiers' parametric bootstrap (:func:`training.modifiers.parametric_bootstrap`).

    One builder for the job and for the benchmarks, which read the same two parts from their own runs.
    """
    details = dict(details)
    if "error" in boot:
        details["prespecified_modifiers"] = f"not tested: the probit fit of arm x {', '.join(names)} failed on this trial ({boot['error']})"
        return PermutationResult(spread, {BCF: spread}, null, p_spread, "bcf_spread", "imputed_randomisation", used, used < B, details)
    p_value = min(1.0, 2.0 * min(p_spread, boot["p"]))
    details.update(
        statistic=BONFERRONI_STATISTIC,
        combination="Bonferroni: each statistic's own p-value, the smaller one doubled (valid whatever their dependence)",
        stopping=f"each statistic's null values stop once {h} reach its observed value, at most {B}",
        components={
            "bcf_spread": {"label": STATISTIC, "observed": spread, "p_value": float(p_spread), "null_trials": used,
                           "calibration": "the imputed randomisation's null trials"},
            "prespecified_modifiers": {
                "label": modifier_label(names, direction),
                "modifiers": names,
                "direction": direction,
                "observed": float(boot["stat"]),
                "p_value": float(boot["p"]),
                "null_trials": int(boot["used"]),
                "calibration": "a parametric bootstrap: every outcome drawn from the statistic's own fitted no-modification "
                "probit model (a quadratic in the PATH risk score, the modifiers, the arm), the whole statistic recomputed",
            },
        },
    )
    return PermutationResult(spread, {BCF: spread}, null, p_value, "bcf_spread_or_modifiers", "imputed_randomisation", used, used < B, details)


def fisher_or_bootstrap_result(fisher: PermutationResult, boot: dict, B: int, h: int) -> PermutationResult:
    """``evidence.combination: fisher_or_bootstrap``: Fisher's combined test (``fisher``) or the modifiers' statistic
    calibrated by the parametric bootstrap (``boot``, :func:`training.modifiers.parametric_bootstrap`), the smaller
    p-value doubled.

    Fisher's test keeps the served model in the statistic and is exact under its null; the bootstrap draws every
    outcome from the modifiers' own no-modification model, so no bootstrap trial inherits part of a real modification
    (as the null trials that keep real outcomes do), and is exact only when that probit model is the truth. Each at
    half alpha, Bonferroni holds the level whatever their dependence when each holds its own. The statistic and
    null trials shown stay Fisher's. One builder for the job and for the benchmarks (which read both parts from their
    own rows). A bootstrap that cannot be computed leaves Fisher's test alone, and says so.
    """
    details = dict(fisher.details)
    named = details["components"]["prespecified_modifiers"]
    if "error" in boot:
        details["prespecified_modifiers_bootstrap"] = f"not computed on this trial ({boot['error']}): Fisher's test alone"
        return replace(fisher, details=details)
    details.update(
        statistic=FISHER_OR_BOOTSTRAP_STATISTIC,
        combination="Bonferroni of two tests: Fisher's combination over the null trials (" + details["combination"] + "), and "
        "the prespecified modifiers' statistic calibrated by a parametric bootstrap; the smaller p-value doubled (valid "
        "whatever their dependence)",
        components={
            **details["components"],
            "fisher_combination": {
                "label": COMBINED_STATISTIC,
                "observed": float(fisher.statistic),
                "p_value": float(fisher.p_value),
                "null_trials": int(fisher.permutations_run),
                "calibration": "the imputed randomisation's null trials",
            },
            "prespecified_modifiers_bootstrap": {
                "label": named["label"],
                "modifiers": named["modifiers"],
                "direction": named["direction"],
                "observed": float(boot["stat"]),
                "p_value": float(boot["p"]),
                "null_trials": int(boot["used"]),
                "calibration": "a parametric bootstrap: every outcome drawn from the statistic's own fitted no-modification "
                "probit model (a quadratic in the PATH risk score, the modifiers, the arm), the whole statistic recomputed; "
                f"Besag-Clifford, stops once {h} reach the observed value, at most {B}",
            },
        },
    )
    p_value = min(1.0, 2.0 * min(float(fisher.p_value), float(boot["p"])))
    return replace(fisher, p_value=p_value, kind="bcf_spread_modifiers_or_bootstrap", details=details)


def held_out_test(F: pd.DataFrame, t: np.ndarray, y: np.ndarray, fit_rows: np.ndarray, config: TrainConfig, e: float, seed: int) -> PermutationResult:
    """The large-trial test (module docstring): BCF fitted on ``fit_rows``, its effect beyond prognosis tested on the rest."""
    rest = np.setdiff1d(np.arange(len(y)), fit_rows)
    model = make_candidate(BCF, config.candidates, e, seed).fit(F.iloc[fit_rows].reset_index(drop=True), t[fit_rows], y[fit_rows])
    model.flat_forests()  # every held-out patient through the compiled walk the service uses (stochtree's own predict: ~3x the time)
    mu, tau = model.midpoint_draws(F.iloc[rest].reset_index(drop=True))
    treated, control = ndtr(mu + tau / 2).mean(axis=1), ndtr(mu - tau / 2).mean(axis=1)
    slope_of = BeyondPrognosisSlope(tau.mean(axis=1), (mu - tau / 2).mean(axis=1))
    tt, yt = t[rest], y[rest]
    slope, se = slope_of(M.dr_scores(yt, tt, treated, control, e))
    observed = slope / se if se > 0 else 0.0
    # Null trials of the held-out patients from BCF's no-modification model (its prognosis, its average effect), as
    # the imputed randomisation test builds them; BCF's fit does not change (it never saw these patients).
    eta0, effect = mu.mean(axis=1), float(tau.mean())
    B = config.evidence.replicates
    null = np.empty(B)
    for b, s in enumerate(np.random.SeedSequence([config.seed, 4243]).generate_state(B)):
        arms, outcome = null_trial(np.random.default_rng(int(s)), tt, yt, eta0, effect)
        slope_b, se_b = slope_of(M.dr_scores(outcome, arms, treated, control, e))
        null[b] = slope_b / se_b if se_b > 0 else 0.0
    p_value = float((1 + np.sum(null >= observed - 1e-12)) / (1 + B)) if se > 0 else 1.0
    details = {
        "null": NULL,
        "statistic": HELD_OUT_STATISTIC,
        "held_out": "BCF fitted on a random subsample stratified by outcome; on every other patient, doubly-robust benefit scores "
        "regressed on a cubic in BCF's prognosis on control and BCF's effect beyond it (z with an HC1 standard error); "
        "calibrated by null trials of the held-out patients from BCF's no-modification model",
        "slope": slope,
        "se": se,
        "p_normal": float(norm.sf(observed)),
        "n_fit": len(fit_rows),
        "n_test": len(rest),
        "n_tested": len(rest),
        "n_patients": len(y),
    }
    return PermutationResult(observed, {BCF: observed}, null, p_value, "bcf_held_out", "held_out", B, False, details)


class BeyondPrognosisSlope(M.HC1Slope):
    """OLS slope of a score on ``tau``'s part beyond a cubic in ``prognosis`` (with that cubic), and its HC1 standard error.

    The design is fixed once, so each null trial costs two passes over the patients.
    """

    def __init__(self, tau: np.ndarray, prognosis: np.ndarray):
        basis, beyond = beyond_prognosis(tau, prognosis)
        self.testable = bool(np.std(beyond) >= 1e-12)  # else BCF answers one common effect beyond prognosis
        super().__init__(np.column_stack([basis, beyond]))

    def __call__(self, psi: np.ndarray) -> tuple[float, float]:
        return super().__call__(psi) if self.testable else (0.0, 0.0)
