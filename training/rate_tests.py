"""The RATE-based heterogeneity tests (``evidence.method: permutation``, ``split_rate``, ``auto``).

Is the benefit ranking better than chance? The
statistic is the best Qini-weighted RATE, with DR scores, of the
effect-modelling candidates in ``evidence.candidates`` from one stratified
K-fold pass; by default (``evidence.statistic: beyond_risk``) for the benefit
beyond what baseline risk explains: on the probability scale even a constant
treatment effect gives patients with different baseline risk different
benefits, so the risk model's out-of-fold benefit is subtracted from both the
DR scores and each candidate's ranking.

- ``permutation`` (small trials): covariate rows permuted against (arm,
  outcome), the statistic's candidates refitted on each; the p-value is Besag & Clifford's
  sequential Monte-Carlo p-value (Biometrika 1991;78:301-304): permutations
  run in a fixed order and stop once ``h`` permuted statistics reach the
  observed one (``p = h / L`` after ``L`` permutations), otherwise after
  ``B`` (``p = (1 + #{T_perm >= T_obs}) / (1 + B)``). It is valid at every
  stopping point and needs about ``h / p`` permutations, so clearly null
  outcomes stop early. The feature pipeline never sees arm or outcome, so
  it is fitted once on all covariates for this test.
- ``split_rate`` (large trials; the grf approach): the candidates are
  fitted on one half of the patients, rank the other half, and the RATE of
  that ranking with DR scores cross-fitted within the held-out half is
  divided by its bootstrap standard error; one-sided p-values of the
  candidates are combined by Bonferroni. Nothing is refitted per replicate.
- ``auto``: permutation up to ``evidence.auto_max_n`` patients, split RATE above.

The default test, the imputed randomisation test with the served BCF as its
statistic, is :mod:`training.heterogeneity`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from core.candidates import FLOOR, make_candidate
from core.config import TrainConfig
from core.spec import DatasetSpec
from training import metrics as M
from training.evaluation import OutcomeData, _folds, features_of, oof_predictions, with_parsed
from training.executor import Executor
from training.inference import PermutationResult, sequential_null


def statistic_kind(config: TrainConfig) -> str:
    """The statistic actually used: ``beyond_risk`` needs at least one effect-modelling candidate besides the risk model."""
    others = [c for c in config.evidence.candidates if c not in {"risk_model", FLOOR}]
    return "beyond_risk" if config.evidence.statistic == "beyond_risk" and others else "rate"


def statistic_candidates(config: TrainConfig) -> list[str]:
    """Candidates fitted for the statistic: the listed effect models, plus the risk model for ``beyond_risk``."""
    names = [c for c in config.evidence.candidates if c != FLOOR]
    if statistic_kind(config) == "beyond_risk" and "risk_model" not in names:
        names = ["risk_model", *names]
    return names or ["risk_model"]


def _statistic(tau: dict[str, np.ndarray], psi: np.ndarray, kind: str) -> tuple[float, dict[str, float]]:
    """The test statistic and its value per candidate (see the module docstring)."""
    if kind == "beyond_risk":
        base = tau["risk_model"]
        per_candidate = {name: M.rate_qini(values - base, psi - base) for name, values in tau.items() if name != "risk_model"}
    else:
        per_candidate = {name: M.rate_qini(values, psi) for name, values in tau.items()}
    return max(per_candidate.values()), per_candidate


@dataclass(frozen=True)
class PermutationTask:
    """The permutation test's data, the same for every permutation: sent to each worker once."""

    F: pd.DataFrame
    t: np.ndarray
    y: np.ndarray
    config: TrainConfig
    e: float
    fold_seed: int
    permutation_seed: int | None = None  # None: the observed data


def heterogeneity_statistic(task: PermutationTask, permutation_seed: int | None = None) -> tuple[float, dict[str, float]]:
    """The statistic on the observed data, or with covariate rows permuted by ``permutation_seed``."""
    F = task.F
    seed = permutation_seed if permutation_seed is not None else task.permutation_seed
    if seed is not None:
        order = np.random.default_rng(seed).permutation(len(F))
        F = F.iloc[order].reset_index(drop=True)
    names = statistic_candidates(task.config)
    preds = oof_predictions(F, task.t, task.y, task.config, task.e, names, task.config.cv.folds, task.fold_seed)
    psi = M.dr_scores(task.y, task.t, preds.mu1, preds.mu0, task.e)
    return _statistic({name: preds.benefit(name) for name in names}, psi, statistic_kind(task.config))


def _permuted_statistic(seed: int, task: PermutationTask) -> float:
    return heterogeneity_statistic(task, seed)[0]



def permutation_test(
    data: OutcomeData, spec: DatasetSpec, config: TrainConfig, executor: Executor, desc: str = "permutation test"
) -> PermutationResult:
    """The heterogeneity test chosen by ``evidence.method`` (``auto``: permutation for small, split RATE for large trials)."""
    config = config.resolved(len(data.y))
    method = config.evidence.method
    if method in ("auto", "imputed_randomisation"):  # the calibrated test lives in training.heterogeneity
        method = "permutation" if len(data.y) <= config.evidence.auto_max_n else "split_rate"
    F = features_of(spec, with_parsed(data, spec).parsed)
    if method == "split_rate":
        return split_rate_test(F, data.t, data.y, config, data.treated_fraction, config.seed + 77, executor)
    fold_seed = config.seed + 77
    kind = statistic_kind(config)
    shared = PermutationTask(F, data.t, data.y, config, data.treated_fraction, fold_seed)
    observed, per_candidate = heterogeneity_statistic(shared)
    B, h = config.evidence.permutations, config.evidence.sequential_h
    if B == 0:
        return PermutationResult(observed, per_candidate, np.array([]), float("nan"), kind)
    seeds = [int(s) for s in np.random.SeedSequence(config.seed).generate_state(B)]
    label = f"{desc} (at most {B}; stops once {h} reach the observed statistic)" if h else desc
    null, p_value, used = sequential_null(_permuted_statistic, seeds, observed, h, executor, shared, label, "permutation", desc)
    return PermutationResult(observed, per_candidate, null, p_value, kind, "permutation", used, used < B)


@dataclass(frozen=True)
class SplitShared:
    """The split RATE test's halves, sent to each worker once."""

    F: pd.DataFrame
    t: np.ndarray
    y: np.ndarray
    fit_rows: np.ndarray
    test_rows: np.ndarray
    config: TrainConfig
    e: float
    seed: int


def _split_benefit(name: str, shared: SplitShared) -> np.ndarray:
    """One candidate fitted on the fitting half, its benefit on the testing half."""
    F, fit_rows = shared.F, shared.fit_rows
    model = make_candidate(name, shared.config.candidates, shared.e, shared.seed).fit(
        F.iloc[fit_rows], shared.t[fit_rows], shared.y[fit_rows]
    )
    return model.predict_benefit(F.iloc[shared.test_rows].reset_index(drop=True))


def split_rate_test(
    F: pd.DataFrame, t: np.ndarray, y: np.ndarray, config: TrainConfig, e: float, seed: int, executor: Executor | None = None
) -> PermutationResult:
    """Sample-split RATE test (see the module docstring): fit on one half, test the ranking of the other.

    The candidates are fitted in parallel on ``executor`` when one is given (the same numbers either way).
    """
    config = config.resolved(len(y))
    strata = 2 * t.astype(int) + y.astype(int)
    fit_rows, test_rows = _folds(strata, 2, seed)[0]
    names = statistic_candidates(config)
    kind = statistic_kind(config)
    Ftest = F.iloc[test_rows].reset_index(drop=True)
    shared = SplitShared(F, t, y, fit_rows, test_rows, config, e, seed)
    if executor is None:
        benefits = [_split_benefit(name, shared) for name in names]
    else:
        benefits = executor.map(_split_benefit, names, desc="split-sample RATE test: candidate fits", shared=shared)
    tau = dict(zip(names, benefits, strict=True))
    tt, yt = t[test_rows], y[test_rows]
    preds = oof_predictions(Ftest, tt, yt, config, e, [], 2, seed + 1)
    psi = M.dr_scores(yt, tt, preds.mu1, preds.mu0, e)
    base = tau.get("risk_model") if kind == "beyond_risk" else None
    tested = [n for n in names if not (kind == "beyond_risk" and n == "risk_model")]
    rng = np.random.default_rng(seed)
    boots = max(50, config.evidence.rate_bootstrap)
    draws = [rng.integers(0, len(yt), len(yt)) for _ in range(boots)]
    per_candidate, z_values = {}, {}
    for name in tested:
        ranking = tau[name] - base if base is not None else tau[name]
        scores = psi - base if base is not None else psi
        rate = M.rate_qini(ranking, scores)
        se = float(np.std([M.rate_qini(ranking[d], scores[d]) for d in draws], ddof=1))
        per_candidate[name] = rate
        z_values[name] = rate / se if se > 0 else 0.0
    z_best = max(z_values.values())
    p_value = min(1.0, len(tested) * float(stats.norm.sf(z_best)))
    return PermutationResult(
        max(per_candidate.values()), per_candidate, np.array([]), p_value, kind, "split_rate", 0, False,
        {"z": z_values, "n_fit": len(fit_rows), "n_test": len(test_rows), "bootstrap": boots, "combination": "Bonferroni"},
    )
