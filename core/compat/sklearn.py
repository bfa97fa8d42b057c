"""scikit-learn's private liblinear driver (``sklearn.svm._liblinear``), checked with scikit-learn 1.9.

A training job makes thousands of L2-logistic fits on about 100 rows;
``LogisticRegression(solver="liblinear").fit`` spends three times the fit in
label encoding and weight checks. :func:`liblinear_logistic` calls the same
driver with what ``sklearn.svm._base._fit_liblinear`` passes for two classes:
labels 0/1 as doubles, unit class and sample weights, the primal L2 logistic
solver, bias = intercept_scaling = 1. The primal solver (trust-region Newton)
draws no random numbers, so the seed it is passed does not matter.
"""

from __future__ import annotations

import numpy as np
from sklearn.svm import _liblinear
from sklearn.svm._base import _get_liblinear_solver_type

CHECKED_WITH = "1.9"  # the scikit-learn minor version these calls were checked with (tests/test_compat.py)

PRIMAL_L2_LOGISTIC = _get_liblinear_solver_type("ovr", "l2", "logistic_regression", False)
_UNIT_CLASS_WEIGHTS = np.ones(2, dtype=np.float64)


def liblinear_logistic(Z: np.ndarray, target: np.ndarray, C: float, max_iter: int, tol: float = 1e-4) -> tuple[np.ndarray, float]:
    """(coef, intercept) of ``LogisticRegression(C=C, solver="liblinear", tol=tol, max_iter=max_iter)`` on 0/1 ``target``."""
    Z = np.ascontiguousarray(Z, dtype=np.float64)
    target = np.require(np.asarray(target, dtype=np.float64), requirements="W")
    _liblinear.set_verbosity_wrap(0)  # liblinear prints its iterations unless told (scikit-learn does the same)
    raw, _ = _liblinear.train_wrap(
        Z, target, False, PRIMAL_L2_LOGISTIC, tol, 1.0, C, _UNIT_CLASS_WEIGHTS, max_iter, 0, 0.1, np.ones(len(target), dtype=np.float64)
    )
    return raw[0, :-1], float(raw[0, -1])
