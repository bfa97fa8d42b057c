"""Lean L2-logistic fits shared by the linear candidates (scikit-learn's liblinear driver, lbfgs for large trials)."""

from __future__ import annotations

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from core.compat.sklearn import liblinear_logistic

# Lean fits -------------------------------------------------------------------------------------------
# A training job makes thousands of small fits. The estimator wrappers' input validation cost more
# than the fits themselves on a trial of 100 patients, so the candidates fit on float arrays through
# the libraries' own engines: LightGBM's Booster API and scikit-learn's liblinear driver, with exactly
# the parameters the wrappers pass (tests/test_scale.py checks the models are the same).
# Solvers are chosen by n: liblinear is exact and fast for small trials but grows about 40x for 10x
# patients; from LIBLINEAR_MAX_N training rows the L2 logistic fits use lbfgs (warm-started along the
# C path in the internal CV), whose objective differs only in not penalising the intercept. Measured
# on 80,000 x 129 standardised rows, one thread: one fit 0.11 s (newton-cholesky 0.42 s), the 3-fold
# x 5-C internal CV 1.0 s (newton-cholesky 3.0 s).
LIBLINEAR_MAX_N = 5_000


def logistic_solver(solver: str, n: int) -> str:
    """The solver an ``auto`` setting resolves to for ``n`` training rows (see LIBLINEAR_MAX_N)."""
    if solver != "auto":
        return solver
    return "liblinear" if n < LIBLINEAR_MAX_N else "lbfgs"


def fit_logistic(Z: np.ndarray, y: np.ndarray, C: float, solver: str = "liblinear", max_iter: int = 2000) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression on a float array: (coefficients, intercept).

    ``liblinear`` calls scikit-learn's liblinear driver with the arguments
    ``LogisticRegression(C=C, solver="liblinear").fit`` passes (same numbers,
    without the per-call validation); other solvers go through ``LogisticRegression``.
    """
    Z = np.ascontiguousarray(Z, dtype=np.float64)
    if solver == "liblinear":
        return _liblinear_fit(Z, y, C, max_iter)
    model = LogisticRegression(C=C, solver=solver, max_iter=max_iter).fit(Z, y)
    return model.coef_[0], float(model.intercept_[0])


def _liblinear_fit(Z: np.ndarray, y: np.ndarray, C: float, max_iter: int, tol: float = 1e-4) -> tuple[np.ndarray, float]:
    y = np.asarray(y)
    classes = np.unique(y)
    if len(classes) != 2:
        raise ValueError(f"logistic fit needs two classes, got {classes.tolist()}")
    # LabelEncoder's sorted classes as 0/1, then scikit-learn's liblinear driver (core.compat.sklearn)
    return liblinear_logistic(Z, (y == classes[1]).astype(np.float64), C, max_iter, tol)


def _decision(Z: np.ndarray, coef: np.ndarray, intercept: float) -> np.ndarray:
    # The same product as scikit-learn's decision_function (a (d, 1) matrix, not a vector).
    return (Z @ coef[None, :].T).reshape(-1) + intercept


def fit_logistic_cv(
    Z: np.ndarray, y: np.ndarray, Cs, folds: int, solver: str = "liblinear", max_iter: int = 5000
) -> tuple[np.ndarray, float, float]:
    """``LogisticRegressionCV(Cs, cv=folds, scoring="neg_log_loss", refit=True)`` for a binary label, lean.

    Unshuffled stratified folds; for each C the mean held-out log-loss (summed
    over folds as scikit-learn does, first best on ties); then a refit on all
    rows with the best C. Returns (coefficients, intercept, C).
    """
    y = np.asarray(y).astype(int)
    if len(Cs) == 1:
        # One candidate penalty: the internal CV could only choose it, and the refit is this fit.
        coef, intercept = fit_logistic(Z, y, float(Cs[0]), solver, max_iter)
        return coef, intercept, float(Cs[0])
    if solver != "liblinear":
        return _weighted_folds_cv(np.ascontiguousarray(Z, dtype=np.float64), y, Cs, folds, solver, max_iter)
    splits = list(StratifiedKFold(n_splits=folds).split(Z, y))
    scores = np.zeros((len(splits), len(Cs)))
    eps = np.finfo(np.float64).eps
    for i, (train, test) in enumerate(splits):
        for j, C in enumerate(Cs):
            coef, intercept = fit_logistic(Z[train], y[train], C, solver, max_iter)
            p = expit(_decision(Z[test], coef, intercept))
            proba = np.clip(np.stack([1 - p, p], axis=1), eps, 1 - eps)
            scores[i, j] = -float(np.mean(-np.log(proba[np.arange(len(test)), y[test]])))
    best = float(Cs[int(np.argmax(scores.sum(axis=0)))])
    coef, intercept = fit_logistic(Z, y, best, solver, max_iter)
    return coef, intercept, best


def _weighted_folds_cv(Z: np.ndarray, y: np.ndarray, Cs, folds: int, solver: str, max_iter: int) -> tuple[np.ndarray, float, float]:
    """The large-n choice of C: the same folds and score as ``LogisticRegressionCV``, without copying the rows.

    Each fold is a fit on every row with the held-out rows weighted 0: scikit-learn's
    objective (mean weighted loss plus a penalty scaled by the weights' sum) is then the
    training rows' own, and no fold copies the design (``LogisticRegressionCV`` copies
    each fold's rows: 1 GB a fold for the interaction design at 10^6 patients, which
    broke a 4 GB worker). Along ``Cs`` each fit starts from the last, as scikit-learn's
    path does.
    """
    splits = list(StratifiedKFold(n_splits=folds).split(np.zeros((len(y), 1)), y))
    scores = np.zeros((len(splits), len(Cs)))
    eps = np.finfo(np.float64).eps
    for i, (train, test) in enumerate(splits):
        weight = np.zeros(len(y))
        weight[train] = 1.0
        model = LogisticRegression(solver=solver, max_iter=max_iter, warm_start=True)
        for j, C in enumerate(Cs):
            model.set_params(C=C).fit(Z, y, sample_weight=weight)
            p = np.clip(expit(_decision(Z, model.coef_[0], float(model.intercept_[0]))[test]), eps, 1 - eps)
            scores[i, j] = float(np.mean(np.where(y[test] == 1, np.log(p), np.log1p(-p))))
    best = float(Cs[int(np.argmax(scores.sum(axis=0)))])
    coef, intercept = fit_logistic(Z, y, best, solver, max_iter)
    return coef, intercept, best


def fit_scaler(A: np.ndarray) -> StandardScaler:
    """A StandardScaler fitted on an array (the same mean_ and scale_ as on the frame)."""
    return StandardScaler().fit(A)



def _log_odds_ratio(t: np.ndarray, y: np.ndarray) -> float:
    """Treatment log odds ratio with a 0.5 continuity correction."""
    a, b = y[t == 1].sum() + 0.5, (1 - y[t == 1]).sum() + 0.5
    c, d = y[t == 0].sum() + 0.5, (1 - y[t == 0]).sum() + 0.5
    return float(np.log(a / b) - np.log(c / d))
