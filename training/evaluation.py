"""Honest small-sample evaluation: nested repeated cross-validation and the arm-only floor.

- **Outer loop**: repeated stratified K-fold (strata: arm x responder). In each
  outer fold the feature pipeline and every candidate are fitted on the
  training part only; an inner stratified K-fold on that part runs the whole
  selection procedure (floor eligibility, then the criterion), so model choice
  is nested. Every metric is computed on out-of-fold predictions.
- **The floor**: the arm-only model (each arm's response rate) is always
  evaluated. A candidate is *eligible* when its out-of-fold log-loss is not
  worse than the floor's by more than ``selection.floor_margin_se`` standard
  errors of the paired per-patient difference; when only the floor is
  eligible, the floor is the choice.
- **Criterion** among eligible candidates (``selection.criterion``): by
  default (``auto``) ``bcf_when_eligible`` below 2,000 patients, the
  prespecified shrinkage model (BCF) when it is eligible and the floor
  otherwise, and ``dr_tau_risk`` from there, tau-risk against doubly robust
  (DR) scores; or tau-risk with the one-SE rule towards the simpler model, the
  R-learner loss, or the Qini-weighted RATE of the held-out ranking (see
  :func:`criterion_scores`). The recovery benchmark compares them by the
  fresh-patient ranking of what each picks (benchmarks/RESULTS.md): on trials
  of 100-1,000 patients, data-driven choice among six candidates is noisy,
  and BCF, whose effect forest is shrunk towards one common effect, lost the
  least. From 2,000 patients BCF is fitted on a subsample of 1,000 while the
  other candidates use every patient, and thousands of out-of-fold patients
  separate the candidates' losses: there the data choose (section 6 of
  RESULTS.md measures the served ranking at 3,000, 10^4 and 10^5 patients).

The heterogeneity tests live in :mod:`training.heterogeneity` (the default) and
:mod:`training.rate_tests` (the RATE-based permutation and split-sample tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline

from core.candidates import (
    BCF,
    CANDIDATE_ORDER,
    CANDIDATES,
    FLOOR,
    _decision,
    _scale,
    fit_logistic,
    fit_scaler,
    logistic_solver,
    make_candidate,
)
from core.config import AUTO, AUTO_RULES, TrainConfig
from core.spec import DatasetSpec
from features.pipeline import build_feature_pipeline
from training import metrics as M
from training.executor import Executor

SELECTED = "selected"


@dataclass(frozen=True)
class OutcomeData:
    """One outcome's modelling data: raw model inputs, arm (1 = treated) and responder label.

    ``parsed`` optionally holds ``X`` after the feature pipeline's first step
    (lab parsing), computed once: see :func:`parsed_inputs`.
    """

    X: pd.DataFrame
    t: np.ndarray
    y: np.ndarray
    treated_fraction: float
    parsed: pd.DataFrame | None = None

    @property
    def strata(self) -> np.ndarray:
        return 2 * self.t.astype(int) + self.y.astype(int)


# Feature pipeline, parsed once ---------------------------------------------------------------------------
# The pipeline's first step parses lab text row by row: its output for a row does not depend on the
# other rows (its fit records the catalog and column names, and nothing its transform uses), so parsing
# every patient once and fitting the remaining steps on any subset of parsed rows gives the same
# features as fitting the whole pipeline on that subset of raw rows; at 10^5 patients parsing is most
# of the pipeline's cost. The served pipeline's first step is still fitted on its own raw rows.
def parsed_inputs(spec: DatasetSpec, X: pd.DataFrame) -> pd.DataFrame:
    """``X`` after the feature pipeline's stateless first step (lab parsing)."""
    _, parse = build_feature_pipeline(spec).steps[0]
    return parse.fit(X).transform(X)


def with_parsed(data: OutcomeData, spec: DatasetSpec) -> OutcomeData:
    """``data`` with its parsed inputs (computed here unless already there)."""
    if data.parsed is not None:
        return data
    return OutcomeData(data.X, data.t, data.y, data.treated_fraction, parsed_inputs(spec, data.X))


def fit_pipeline(spec: DatasetSpec, X: pd.DataFrame, parsed: pd.DataFrame) -> tuple[Pipeline, pd.DataFrame]:
    """The whole feature pipeline fitted on raw rows ``X`` whose parsed form is ``parsed``; returns it and its features.

    The same fitted pipeline and features as ``pipeline.fit(X)`` then ``pipeline.transform(X)``.
    """
    pipeline = build_feature_pipeline(spec)
    pipeline.steps[0][1].fit(X)  # cheap (no parsing), and whatever it records about the rows is the served model's
    rest = Pipeline(pipeline.steps[1:])  # the same step objects: fitting rest fits the pipeline
    rest.fit(parsed)
    return pipeline, rest.transform(parsed).reset_index(drop=True)


def features_of(spec: DatasetSpec, parsed: pd.DataFrame) -> pd.DataFrame:
    """``build_feature_pipeline(spec).fit_transform(X)`` from the parsed rows of ``X``."""
    return Pipeline(build_feature_pipeline(spec).steps[1:]).fit_transform(parsed).reset_index(drop=True)


def _folds(strata: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    counts = np.bincount(strata)
    on = strata if counts[counts > 0].min() >= n_splits else (strata >= 2).astype(int)
    return list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(strata)), on))


def outcome_models(F: pd.DataFrame, t: np.ndarray, y: np.ndarray, solver: str = "auto") -> tuple:
    """Penalised logistic outcome models per arm, used only for the DR scores (any model keeps them unbiased).

    Returns the scaler and, per arm, ``(coefficients, intercept)`` or the smoothed rate when the arm has one class.
    """
    A = np.asarray(F, dtype=float)
    scaler = fit_scaler(A)
    Z = _scale(A, scaler)
    models: list = []
    for arm in (1, 0):
        rows = t == arm
        if len(np.unique(y[rows])) < 2:
            models.append((y[rows].sum() + 0.5) / (rows.sum() + 1.0))
        else:
            models.append(fit_logistic(Z[rows], y[rows], 0.1, logistic_solver(solver, int(rows.sum())), max_iter=100))
    return scaler, *models


def predict_outcome_models(fitted, F: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    scaler, m1, m0 = fitted
    Z = _scale(np.asarray(F, dtype=float), scaler)
    out = []
    for m in (m1, m0):
        out.append(np.full(len(Z), m) if isinstance(m, float) else expit(_decision(Z, *m)))
    return out[0], out[1]


# Out-of-fold predictions -----------------------------------------------------------------------------
@dataclass
class FoldPredictions:
    """Out-of-fold predictions of several candidates on one set of patients."""

    arms: dict[str, tuple[np.ndarray, np.ndarray]]  # candidate -> (p1, p0)
    mu1: np.ndarray  # outcome model of the treated arm (DR scores)
    mu0: np.ndarray

    def benefit(self, name: str) -> np.ndarray:
        p1, p0 = self.arms[name]
        return p1 - p0


def oof_predictions(
    F: pd.DataFrame, t: np.ndarray, y: np.ndarray, config: TrainConfig, e: float, names: list[str], n_splits: int, seed: int
) -> FoldPredictions:
    """Out-of-fold arm probabilities of ``names`` and of the DR outcome models, from one stratified K-fold pass."""
    arms = {name: oof_arms(F, t, y, config, e, name, n_splits, seed) for name in names}
    return FoldPredictions(arms, *oof_arms(F, t, y, config, e, OUTCOME_MODELS, n_splits, seed))


OUTCOME_MODELS = "outcome models"  # the DR scores' outcome models, fitted like a candidate in oof_arms


def oof_arms(
    F: pd.DataFrame, t: np.ndarray, y: np.ndarray, config: TrainConfig, e: float, name: str, n_splits: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """One candidate's (or the DR outcome models') out-of-fold (p1, p0) from the stratified K-fold pass of ``seed``.

    Each fit depends only on its own fold and seed, so candidates can be fitted
    separately (in parallel) and give the numbers of one joint pass.
    """
    strata = 2 * t.astype(int) + y.astype(int)
    n = len(y)
    p1, p0 = np.zeros(n), np.zeros(n)
    for k, (train, test) in enumerate(_folds(strata, n_splits, seed)):
        Ftr, Fte = F.iloc[train], F.iloc[test]
        if name == OUTCOME_MODELS:
            p1[test], p0[test] = predict_outcome_models(outcome_models(Ftr, t[train], y[train], config.candidates.solver), Fte)
        else:
            model = make_candidate(name, config.candidates, e, seed + 7 * k).fit(Ftr, t[train], y[train])
            p1[test], p0[test] = model.predict_arms(Fte)
    return p1, p0


# The selection procedure -------------------------------------------------------------------------------
def log_loss_per_patient(y: np.ndarray, t: np.ndarray, p1: np.ndarray, p0: np.ndarray) -> np.ndarray:
    """Each patient's log-loss for the probability of the arm they were randomised to."""
    p = np.clip(np.where(np.asarray(t) == 1, p1, p0), M.EPS, 1 - M.EPS)
    y = np.asarray(y, float)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def floor_comparison(losses: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """Per candidate: (mean paired log-loss difference to the floor, its standard error); negative is better."""
    base = losses[FLOOR]
    out = {}
    for name, loss in losses.items():
        d = loss - base
        se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        out[name] = (float(np.mean(d)), se)
    return out


def eligible(comparison: dict[str, tuple[float, float]], margin_se: float) -> list[str]:
    """Candidates whose log-loss is not worse than the floor's beyond ``margin_se`` standard errors (floor always)."""
    names = [FLOOR]
    for name, (diff, se) in comparison.items():
        if name != FLOOR and np.isfinite(diff) and diff <= margin_se * (se if np.isfinite(se) else 0.0):
            names.append(name)
    return names


def criterion_losses(
    criterion: str, tau: dict[str, np.ndarray], y: np.ndarray, t: np.ndarray, psi: np.ndarray, m: np.ndarray, e: float
) -> dict[str, np.ndarray]:
    """Per-patient losses of a selection criterion, per candidate (lower is better).

    - ``dr_tau_risk*``: ``(psi - tau)^2`` against doubly robust scores ``psi``;
    - ``r_loss*``: Nie & Wager's R-loss ``((y - m) - (t - e) tau)^2`` with ``m`` the
      out-of-fold outcome mean and ``e`` the known randomisation probability;
    - ``rate``: minus the Qini-weighted RATE of the ranking, the same value for
      every patient (0 for a constant prediction).
    """
    base = criterion.removesuffix("_1se")
    out = {}
    for name, values in tau.items():
        if base == "dr_tau_risk":
            out[name] = (psi - values) ** 2
        elif base == "r_loss":
            out[name] = ((y - m) - (t - e) * values) ** 2
        elif base == "rate":
            rate = 0.0 if np.ptp(values) < 1e-12 else M.rate_qini(values, psi)
            out[name] = np.full(len(psi), -rate)
        else:
            raise ValueError(f"unknown selection criterion {criterion!r}")
    return out


def criterion_scores(losses: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """(mean loss, paired standard error of its difference to the best candidate) per candidate."""
    means = {name: float(loss.mean()) for name, loss in losses.items()}
    best = min(means, key=means.get)
    out = {}
    for name, loss in losses.items():
        d = loss - losses[best]
        out[name] = (means[name], float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0)
    return out


def choose(scores: dict[str, tuple[float, float]], criterion: str) -> str:
    """The criterion's choice.

    ``*_1se``: the simplest candidate (``CANDIDATE_ORDER``) whose mean loss is
    within one standard error of the best, where the standard error is that of
    the *paired* per-patient difference to the best: candidates are compared
    on the same patients, so the noise the DR scores share cancels (a marginal
    SE made the rule blind to real differences). Otherwise: the lowest mean
    loss, the simpler candidate on ties.
    """
    best = min(v[0] for v in scores.values())
    if criterion.endswith("_1se"):
        for name in CANDIDATE_ORDER:
            if name in scores and scores[name][0] <= best + scores[name][1] + 1e-12:
                return name
    return next(name for name in CANDIDATE_ORDER if name in scores and scores[name][0] <= best + 1e-12)


@dataclass
class Selection:
    choice: str
    eligible: list[str]
    floor: dict[str, tuple[float, float]]  # paired log-loss difference to the floor (mean, se)
    scores: dict[str, tuple[float, float]]  # criterion (loss, se) among the eligible


def select(
    preds: FoldPredictions, y: np.ndarray, t: np.ndarray, e: float, config: TrainConfig, psi: np.ndarray | None = None
) -> Selection:
    """The whole selection procedure on out-of-fold predictions: floor eligibility, then the criterion."""
    names = list(preds.arms)
    losses = {name: log_loss_per_patient(y, t, *preds.arms[name]) for name in names}
    floor = floor_comparison(losses)
    candidates = eligible(floor, config.selection.floor_margin_se)
    if psi is None:
        psi = M.dr_scores(y, t, preds.mu1, preds.mu0, e)
    m = e * preds.mu1 + (1 - e) * preds.mu0
    criterion = config.selection.criterion
    if criterion == AUTO:  # cross_validate resolves it for the whole trial; a direct call resolves it for these patients
        criterion = AUTO_RULES["selection.criterion"].value(len(y))
    shown = "dr_tau_risk" if criterion == PRESPECIFIED else criterion  # the scores reported next to a prespecified choice
    losses = criterion_losses(shown, {n: preds.benefit(n) for n in candidates}, np.asarray(y, float), np.asarray(t, float), psi, m, e)
    scores = criterion_scores(losses)
    if criterion == PRESPECIFIED:
        return Selection(BCF if BCF in candidates else FLOOR, candidates, floor, scores)
    return Selection(choose(scores, criterion), candidates, floor, scores)


PRESPECIFIED = "bcf_when_eligible"  # the criterion that names its model in advance (BCF, else the floor)


# Nested cross-validation ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CVShared:
    """What every outer fold of one cross-validation reads: sent to each worker once (``Executor.map(shared=...)``)."""

    parsed: pd.DataFrame  # the raw inputs after lab parsing (see parsed_inputs)
    t: np.ndarray
    y: np.ndarray
    treated_fraction: float
    spec: DatasetSpec
    config: TrainConfig


@dataclass(frozen=True)
class OuterTask:
    """One outer fold: its rows and seed (the data come with ``CVShared``)."""

    repeat: int
    fold: int
    train: np.ndarray
    test: np.ndarray
    seed: int


def _fold_features(shared: CVShared, task: OuterTask) -> tuple[pd.DataFrame, pd.DataFrame]:
    rest = Pipeline(build_feature_pipeline(shared.spec).steps[1:])
    rest.fit(shared.parsed.iloc[task.train])
    Ftr = rest.transform(shared.parsed.iloc[task.train]).reset_index(drop=True)
    Fte = rest.transform(shared.parsed.iloc[task.test]).reset_index(drop=True)
    return Ftr, Fte


@dataclass(frozen=True)
class FitShared:
    """Large trials: every outer fold's features, sent to each worker once; tasks are (fold, candidate) pairs."""

    folds: list[tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray, int]]  # (Ftr, Fte, t train, y train, seed)
    config: TrainConfig
    treated_fraction: float


def _fold_candidate(task: tuple[int, str], shared: FitShared) -> dict:
    """One candidate (or the outcome models) in one outer fold: its inner out-of-fold and its outer predictions."""
    k, name = task
    Ftr, Fte, ttr, ytr, seed = shared.folds[k]
    config, e = shared.config, shared.treated_fraction
    needed = name == OUTCOME_MODELS or name in inner_candidates(config)
    inner = oof_arms(Ftr, ttr, ytr, config, e, name, config.cv.inner_folds, seed) if needed else None
    if name == OUTCOME_MODELS:
        outer = predict_outcome_models(outcome_models(Ftr, ttr, ytr, config.candidates.solver), Fte)
    else:
        outer = make_candidate(name, config.candidates, e, seed).fit(Ftr, ttr, ytr).predict_arms(Fte)
    return {"inner": inner, "outer": outer}


def outer_folds_by_candidate(tasks: list[OuterTask], shared: CVShared, executor: Executor, desc: str) -> list[dict]:
    """The outer folds' results (as :func:`run_outer_fold` gives them), with one task per fold and candidate.

    For large trials: a few outer folds would leave workers idle, while folds x
    candidates tasks keep them busy. The same fits and seeds, so the same numbers.
    """
    config, e = shared.config, shared.treated_fraction
    names = list(config.candidates.enabled)
    folds = []
    for task in tasks:
        Ftr, Fte = _fold_features(shared, task)
        folds.append((Ftr, Fte, shared.t[task.train], shared.y[task.train], task.seed))
    jobs = [(k, name) for k in range(len(tasks)) for name in [*names, OUTCOME_MODELS]]
    answers = dict(zip(jobs, executor.map(_fold_candidate, jobs, desc=desc, shared=FitShared(folds, config, e)), strict=True))
    results = []
    for k, task in enumerate(tasks):
        _, _, ttr, ytr, _ = folds[k]
        inner = FoldPredictions({name: answers[k, name]["inner"] for name in inner_candidates(config)}, *answers[k, OUTCOME_MODELS]["inner"])
        selection = select(inner, ytr, ttr, e, config)
        predictions = {name: answers[k, name]["outer"] for name in names}
        predictions[SELECTED] = predictions[selection.choice]
        mu1, mu0 = answers[k, OUTCOME_MODELS]["outer"]
        results.append(
            {
                "repeat": task.repeat, "fold": task.fold, "test": task.test, "predictions": predictions,
                "selected": selection.choice, "inner_scores": selection.scores, "mu1": mu1, "mu0": mu0,
            }
        )
    return results


def inner_candidates(config: TrainConfig) -> list[str]:
    """The candidates the inner loop fits: all of them, except under the prespecified criterion.

    ``bcf_when_eligible`` takes BCF when BCF is eligible, and eligibility compares a
    candidate with the floor alone, so the other candidates' inner fits could not
    change its choice (the same choice, seeds and numbers, without their cost).
    """
    names = list(config.candidates.enabled)
    if config.selection.criterion == PRESPECIFIED:
        return [name for name in names if name in (FLOOR, BCF)]
    return names


def run_outer_fold(task: OuterTask, shared: CVShared) -> dict:
    config, t, y = shared.config, shared.t, shared.y
    Ftr, Fte = _fold_features(shared, task)
    ttr, ytr = t[task.train], y[task.train]
    data = shared
    names = list(config.candidates.enabled)
    inner = oof_predictions(Ftr, ttr, ytr, config, data.treated_fraction, inner_candidates(config), config.cv.inner_folds, task.seed)
    selection = select(inner, ytr, ttr, data.treated_fraction, config)
    predictions = {}
    for name in names:
        model = make_candidate(name, config.candidates, data.treated_fraction, task.seed).fit(Ftr, ttr, ytr)
        predictions[name] = model.predict_arms(Fte)
    predictions[SELECTED] = predictions[selection.choice]
    mu1, mu0 = predict_outcome_models(outcome_models(Ftr, ttr, ytr, config.candidates.solver), Fte)
    return {
        "repeat": task.repeat,
        "fold": task.fold,
        "test": task.test,
        "predictions": predictions,
        "selected": selection.choice,
        "inner_scores": selection.scores,
        "mu1": mu1,
        "mu0": mu0,
    }


LARGE_N = 10_000  # from here: CV tasks per (fold, candidate)


def same_for_everyone(name: str, selections: dict[str, int]) -> bool:
    """Whether a row's out-of-fold predictions are one benefit for everybody (up to fold-to-fold noise).

    The floor, and the nested selection procedure when its inner loop chose the floor in every outer fold.
    """
    if name in CANDIDATES:
        return CANDIDATES[name].same_for_everyone
    total = sum(selections.values())
    return name == SELECTED and total > 0 and sum(n for c, n in selections.items() if CANDIDATES[c].same_for_everyone) == total


@dataclass
class CVResult:
    """Out-of-fold predictions per repeat and the metrics computed from them."""

    n: int
    repeats: int
    oof: dict[str, np.ndarray]  # name -> (repeats, n, 2) [p1, p0]
    psi: np.ndarray  # (repeats, n) DR scores
    per_repeat: pd.DataFrame  # one row per (candidate, repeat)
    summary: pd.DataFrame  # one row per candidate: mean and sd over repeats, AUTOC of the averaged ranking, floor comparison
    selections: dict[str, int]  # how often the inner loop chose each candidate
    final_choice: str  # the selection procedure applied to the outer out-of-fold predictions
    eligible: list[str] = field(default_factory=list)  # candidates not worse than the floor (outer out of fold)
    extras: dict = field(default_factory=dict)

    def metric(self, candidate: str, name: str) -> float:
        return float(self.summary.loc[candidate, name])

    def mean_benefit(self, candidate: str) -> np.ndarray:
        p = self.oof[candidate]
        return (p[:, :, 0] - p[:, :, 1]).mean(axis=0)


def cross_validate(
    data: OutcomeData, spec: DatasetSpec, config: TrainConfig, executor: Executor, desc: str = "cross-validation"
) -> CVResult:
    """Nested repeated cross-validation of every enabled candidate (``auto`` settings resolved for this n)."""
    n = len(data.y)
    config = config.resolved(n)
    data = with_parsed(data, spec)
    tasks = []
    for r in range(config.cv.repeats):
        for k, (train, test) in enumerate(_folds(data.strata, config.cv.folds, config.seed + 1000 * r)):
            tasks.append(OuterTask(r, k, train, test, config.seed + 100 * r + k))
    shared = CVShared(data.parsed, data.t, data.y, data.treated_fraction, spec, config)
    if n >= LARGE_N:
        results = outer_folds_by_candidate(tasks, shared, executor, desc)
    else:
        results = executor.map(run_outer_fold, tasks, desc=desc, shared=shared)

    names = [*config.candidates.enabled, SELECTED]
    oof = {name: np.full((config.cv.repeats, n, 2), np.nan) for name in names}
    mu = np.full((config.cv.repeats, n, 2), np.nan)
    selections = {name: 0 for name in config.candidates.enabled}
    for res in results:
        for name in names:
            p1, p0 = res["predictions"][name]
            oof[name][res["repeat"], res["test"], 0] = p1
            oof[name][res["repeat"], res["test"], 1] = p0
        mu[res["repeat"], res["test"], 0], mu[res["repeat"], res["test"], 1] = res["mu1"], res["mu0"]
        selections[res["selected"]] += 1
    psi = np.stack([M.dr_scores(data.y, data.t, mu[r, :, 0], mu[r, :, 1], data.treated_fraction) for r in range(config.cv.repeats)])

    rows = []
    for name in names:
        for r in range(config.cv.repeats):
            p1, p0 = oof[name][r, :, 0], oof[name][r, :, 1]
            rows.append(
                {
                    "candidate": name,
                    "repeat": r,
                    **M.arm_metrics(data.y, data.t, p1, p0),
                    "log_loss": float(log_loss_per_patient(data.y, data.t, p1, p0).mean()),
                    **M.benefit_metrics(data.y, data.t, p1 - p0, psi[r]),
                }
            )
    per_repeat = pd.DataFrame(rows)
    summary = per_repeat.drop(columns="repeat").groupby("candidate", sort=False).mean()
    spread = per_repeat.drop(columns="repeat").groupby("candidate", sort=False).std(ddof=1)
    for column in ["auc_treated", "auc_control", "brier_mean", "log_loss", "autoc", "qini", "c_for_benefit", "tau_risk"]:
        summary[f"{column}_sd"] = spread[column] if config.cv.repeats > 1 else np.nan
    psi_mean = psi.mean(axis=0)
    # The AUTOC of the repeat-averaged ranking, a description without an interval: a bootstrap of fixed out-of-fold
    # predictions excluded 0 in 15% of sharp-null trials. The one inferential statement is the heterogeneity test.
    for name in names:
        averaged_benefit = (oof[name][:, :, 0] - oof[name][:, :, 1]).mean(axis=0)
        summary.loc[name, "autoc_averaged"] = M.autoc(averaged_benefit, psi_mean)
        # Calibration for benefit (training.metrics): in the large on the averaged predictions and DR scores; the slope in
        # each repeat, aggregated over repeats.
        # The floor's benefit is one number for everybody: its out-of-fold values vary only from fold to fold, so it
        # has no slope (no ranking to calibrate).
        line = M.benefit_calibration_line(oof[name][:, :, 0] - oof[name][:, :, 1], psi)  # per repeat (training.metrics)
        if same_for_everyone(name, selections):
            line.update(dict.fromkeys(M.BENEFIT_CALIBRATION[3:], np.nan))
        for key, value in line.items():
            summary.loc[name, key] = value

    # The procedure on the outer out-of-fold predictions (averaged over repeats) gives the champion.
    averaged = FoldPredictions(
        {name: (oof[name][:, :, 0].mean(axis=0), oof[name][:, :, 1].mean(axis=0)) for name in config.candidates.enabled},
        mu[:, :, 0].mean(axis=0),
        mu[:, :, 1].mean(axis=0),
    )
    final = select(averaged, data.y, data.t, data.treated_fraction, config, psi=psi_mean)
    losses = {
        name: np.mean([log_loss_per_patient(data.y, data.t, oof[name][r, :, 0], oof[name][r, :, 1]) for r in range(config.cv.repeats)], axis=0)
        for name in names
    }
    vs_floor = floor_comparison(losses)
    for name in names:
        summary.loc[name, "log_loss_vs_floor"], summary.loc[name, "log_loss_vs_floor_se"] = vs_floor[name]
    return CVResult(n, config.cv.repeats, oof, psi, per_repeat, summary, selections, final.choice, final.eligible, {"final_scores": final.scores})
