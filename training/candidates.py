"""Benefit models: each predicts P(responder | naltrexone), P(responder | placebo) and their difference.

All candidates take the engineered feature frame ``X``, the arm indicator ``t``
(1 = treated) and the responder label ``y`` (0/1), and share one interface:

- ``predict_arms(X) -> (p1, p0)``;
- ``explain(X) -> Contributions``: additive contributions of each feature, in
  probability points, to P(responder | naltrexone) and to the benefit
  ``p1 - p0``, with base values such that ``base + sum(contributions)`` equals
  the model output exactly.

Explanation method (one for every candidate type): contributions are computed
exactly on the model's log-odds scale (TreeSHAP through LightGBM's
``pred_contrib`` for trees, coefficient x centred value for linear models),
then mapped to probability points by the ratio of the probability change to
the log-odds change (``(p - p_base) / (eta - eta_base)``), which keeps signs and
additivity. The DR-learner's final stage already predicts the benefit on the
probability scale; its TreeSHAP values are used directly.

Candidates (DESIGN section 5):

- ``arm_only``: the floor. Each arm's smoothed response rate; every patient
  gets the trial's average answer. Every served model must beat it out of fold.
- ``bcf``: Bayesian Causal Forest with a probit link (stochtree): a prognostic
  forest plus a treatment-effect forest whose prior shrinks towards one common
  effect; its posterior draws give the benefit interval.
- ``risk_model``: PATH's default. A penalised logistic prognostic model fitted
  blinded to treatment gives a risk score; ``logit P = a + b * score + g * t``
  adds a constant relative treatment effect. Benefit varies only with risk.
- ``interaction_logistic``: penalised logistic regression with
  treatment-by-feature interactions.
- ``t_learner``: one LightGBM classifier per arm.
- ``dr_learner``: doubly robust pseudo-outcomes from cross-fitted LightGBM
  outcome models and the known randomisation ratio, regressed on the features
  with LightGBM; P(responder | naltrexone) from the treated-arm outcome model.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass
from typing import ClassVar

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.special import expit, logit
from scipy.stats import norm
from sklearn.base import BaseEstimator, clone
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import _liblinear
from sklearn.svm._base import _get_liblinear_solver_type

from serving.runtime.intervals import bootstrap_interval
from training.config import CandidatesConfig, LightGBMParams

# Simplest first: the one-SE rules and ties prefer the earlier candidate.
CANDIDATE_ORDER = ("arm_only", "risk_model", "bcf", "interaction_logistic", "t_learner", "dr_learner")
PROB_CLIP = 1e-4


@dataclass
class Contributions:
    """Additive explanation of one output for each row: ``base + values.sum(1) == output``."""

    values: np.ndarray  # (n, d) probability points
    base: np.ndarray  # (n,)
    output: np.ndarray  # (n,)


@dataclass
class Explanation:
    features: list[str]
    p_treated: Contributions
    benefit: Contributions


def _rescale(phi: np.ndarray, base: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Scale contributions so that ``base + sum(phi') == target`` (used for the log-odds -> probability map)."""
    total = phi.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.abs(total) > 1e-12, (target - base) / total, 0.0)
    return phi * ratio[:, None]


def _logit_to_probability(phi_logit: np.ndarray, base_eta: np.ndarray) -> Contributions:
    eta = base_eta + phi_logit.sum(axis=1)
    p, p_base = expit(eta), expit(base_eta)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = eta - base_eta
        ratio = np.where(np.abs(diff) > 1e-9, (p - p_base) / diff, p * (1 - p))
    return Contributions(phi_logit * ratio[:, None], p_base, p)


def _difference(a: Contributions, b: Contributions) -> Contributions:
    return Contributions(a.values - b.values, a.base - b.base, a.output - b.output)


class _ConstantClassifier:
    """Stands in when an arm's training labels have one class (tiny folds): predicts the smoothed rate."""

    def __init__(self, y: np.ndarray):
        self.rate = (float(np.sum(y)) + 0.5) / (len(y) + 1.0)

    def predict_proba(self, X) -> np.ndarray:
        p = np.full(len(X), self.rate)
        return np.column_stack([1 - p, p])

    def raw_contributions(self, X) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((len(X), X.shape[1])), np.full(len(X), logit(self.rate))


def _matrix(X, features: list[str]) -> np.ndarray:
    """Features as a float matrix in training order (a DataFrame is reordered by name; an array is taken as is).

    Prediction works on plain arrays: per-call pandas and scikit-learn input
    checks cost more than the models themselves, and the interval ensemble
    calls a hundred models per request.
    """
    if isinstance(X, pd.DataFrame):
        # Already in training order (the usual case inside a job): skip pandas' reindexing. A copy: with
        # pandas' copy-on-write a single-block frame (a spec with only categorical covariates) gives a
        # read-only view, which stochtree refuses ("array is not writeable").
        same = len(X.columns) == len(features) and all(a == b for a, b in zip(X.columns, features, strict=True))
        return (X if same else X[features]).to_numpy(dtype=float, copy=True)
    return np.asarray(X, dtype=float)


def _scale(X: np.ndarray, scaler: StandardScaler) -> np.ndarray:
    return (X - scaler.mean_) / scaler.scale_


def _proba(model, X: np.ndarray) -> np.ndarray:
    """P(class 1) from a fitted LightGBM classifier (or the constant stand-in), on an array."""
    if isinstance(model, _ConstantClassifier):
        return model.predict_proba(X)[:, 1]
    return model.booster_.predict(X)


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


# What scikit-learn's ``_fit_liblinear`` hands liblinear for ``LogisticRegression(solver="liblinear")``
# with two classes: labels 0/1 as doubles (LabelEncoder's sorted classes), unit class and sample
# weights, the primal L2 logistic solver, bias = intercept_scaling = 1. That function's label
# encoding, class-weight and sample-weight checks cost three times the fit on 60 rows; the primal
# solver (trust-region Newton) draws no random numbers, so the seed it is passed does not matter.
_PRIMAL_L2_LOGISTIC = _get_liblinear_solver_type("ovr", "l2", "logistic_regression", False)
_UNIT_CLASS_WEIGHTS = np.ones(2, dtype=np.float64)


def _liblinear_fit(Z: np.ndarray, y: np.ndarray, C: float, max_iter: int, tol: float = 1e-4) -> tuple[np.ndarray, float]:
    y = np.asarray(y)
    classes = np.unique(y)
    if len(classes) != 2:
        raise ValueError(f"logistic fit needs two classes, got {classes.tolist()}")
    target = np.require((y == classes[1]).astype(np.float64), requirements="W")
    _liblinear.set_verbosity_wrap(0)  # liblinear prints its iterations unless told (scikit-learn does the same)
    raw, _ = _liblinear.train_wrap(
        Z, target, False, _PRIMAL_L2_LOGISTIC, tol, 1.0, C, _UNIT_CLASS_WEIGHTS, max_iter, 0, 0.1, np.ones(len(target), dtype=np.float64)
    )
    return raw[0, :-1], float(raw[0, -1])


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
        # Large n: scikit-learn's path warm-starts each C from the last; its validation is cheap here.
        model = LogisticRegressionCV(
            Cs=list(Cs), l1_ratios=(0.0,), cv=folds, scoring="neg_log_loss", solver=solver, max_iter=max_iter, use_legacy_attributes=False
        ).fit(np.ascontiguousarray(Z, dtype=np.float64), y)
        return model.coef_[0], float(model.intercept_[0]), float(np.ravel(model.C_)[0])
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


def fit_scaler(A: np.ndarray) -> StandardScaler:
    """A StandardScaler fitted on an array (the same mean_ and scale_ as on the frame)."""
    return StandardScaler().fit(A)


class LGBMModel:
    """A LightGBM Booster trained on an array, with the accessors the candidates use (``booster_``, ``predict_proba``)."""

    def __init__(self, booster: lgb.Booster):
        self.booster_ = booster

    def predict_proba(self, X) -> np.ndarray:
        p = self.booster_.predict(np.asarray(X, dtype=float))
        return np.column_stack([1 - p, p])


def _booster_params(params: LightGBMParams, seed: int, objective: str) -> tuple[dict, int]:
    """The parameters ``LGBMClassifier``/``LGBMRegressor`` pass to ``lightgbm.train``, in their order."""
    kw = params.kwargs(seed)
    out = {
        "boosting_type": "gbdt",
        "colsample_bytree": kw["colsample_bytree"],
        "learning_rate": kw["learning_rate"],
        "max_depth": kw["max_depth"],
        "min_child_samples": kw["min_child_samples"],
        "min_child_weight": 1e-3,
        "min_split_gain": 0.0,
        "num_leaves": kw["num_leaves"],
        "random_state": kw["random_state"],
        "reg_alpha": 0.0,
        "reg_lambda": kw["reg_lambda"],
        "subsample": kw["subsample"],
        "subsample_for_bin": 200000,
        "subsample_freq": kw["subsample_freq"],
        "deterministic": kw["deterministic"],
        "force_col_wise": kw["force_col_wise"],
        "verbose": kw["verbose"],
        "objective": objective,
        "metric": [objective],
        "num_threads": kw["n_jobs"],
    }
    return out, kw["n_estimators"]


KEEP_TRAINING_DATA_BELOW = 5_000  # rows


def fit_lgbm(A: np.ndarray, target: np.ndarray, params: LightGBMParams, seed: int, features: list[str], objective: str = "binary") -> LGBMModel:
    """``lightgbm.train`` on an array with the wrapper's parameters (the same trees as ``LGBMClassifier.fit``)."""
    booster_params, rounds = _booster_params(params, seed, objective)
    dataset = lgb.Dataset(A, label=target, feature_name=list(features), params=booster_params)
    # lightgbm.train ends by writing the model to text and reading it back, to free the binned training
    # data: a tenth of a small fit's cost, and the same trees either way. Small fits keep the data
    # (a few kB; pickling drops it); large ones free it, since bootstrap ensembles hold many boosters.
    keep = len(A) < KEEP_TRAINING_DATA_BELOW
    return LGBMModel(lgb.train(booster_params, dataset, num_boost_round=rounds, keep_training_booster=keep))


def _fit_lgbm_classifier(X, y: np.ndarray, params: LightGBMParams, seed: int, features: list[str] | None = None):
    if len(np.unique(y)) < 2 or len(y) < 4:
        return _ConstantClassifier(y)
    if isinstance(X, pd.DataFrame):
        features, X = list(X.columns), X.to_numpy(dtype=float)
    return fit_lgbm(X, np.asarray(y).astype(int), params, seed, features or [f"Column_{i}" for i in range(X.shape[1])])


def _lgbm_raw_contributions(model, X) -> tuple[np.ndarray, np.ndarray]:
    """TreeSHAP on the log-odds scale: (contributions (n, d), base (n,))."""
    if isinstance(model, _ConstantClassifier):
        return model.raw_contributions(X)
    contrib = model.booster_.predict(np.asarray(X, dtype=float), pred_contrib=True)
    return contrib[:, :-1], contrib[:, -1]


class BenefitCandidate(BaseEstimator):
    """Base class; subclasses implement ``fit``, ``predict_arms`` and ``_explain``.

    Candidates whose fit yields its own uncertainty (posterior draws) set
    ``has_draws`` and implement ``benefit_draws``; the others get intervals
    from a :class:`BootstrapEnsemble` of refits.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    has_draws: ClassVar[bool] = False

    def benefit_draws(self, X) -> np.ndarray:
        """(n, draws) benefit draws carrying the model's uncertainty (candidates with ``has_draws``)."""
        raise NotImplementedError(f"{self.name} has no posterior draws; use a BootstrapEnsemble")

    def predict_benefit(self, X: pd.DataFrame) -> np.ndarray:
        p1, p0 = self.predict_arms(X)
        return p1 - p0

    def explain(self, X: pd.DataFrame) -> Explanation:
        explanation = self._explain(X)
        p1, p0 = self.predict_arms(X)
        # The explained outputs must be the predictions the service returns.
        np.testing.assert_allclose(explanation.p_treated.output, p1, atol=1e-6)
        np.testing.assert_allclose(explanation.benefit.output, p1 - p0, atol=1e-6)
        return explanation


class ArmOnly(BenefitCandidate):
    """The floor: each arm's smoothed response rate, the same answer for every patient.

    ``p = (responders + 0.5) / (n + 1)`` per arm. Its draws are Jeffreys
    posterior draws of the two rates (Beta(r + 1/2, n - r + 1/2)), so its
    interval is the uncertainty of the trial's average difference.
    """

    name = "arm_only"
    label = "Arm-only floor (each arm's response rate; no patient differences)"
    has_draws = True

    def __init__(self, n_draws: int = 1000, random_state: int = 0):
        self.n_draws = n_draws
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray):
        self.features_ = list(X.columns)
        t, y = np.asarray(t).astype(int), np.asarray(y).astype(float)
        r1, n1 = float(y[t == 1].sum()), float((t == 1).sum())
        r0, n0 = float(y[t == 0].sum()), float((t == 0).sum())
        self.p_treated_ = (r1 + 0.5) / (n1 + 1.0)
        self.p_control_ = (r0 + 0.5) / (n0 + 1.0)
        rng = np.random.default_rng(self.random_state)
        self.draws_ = rng.beta(r1 + 0.5, n1 - r1 + 0.5, self.n_draws) - rng.beta(r0 + 0.5, n0 - r0 + 0.5, self.n_draws)
        return self

    def predict_arms(self, X) -> tuple[np.ndarray, np.ndarray]:
        n = len(X)
        return np.full(n, self.p_treated_), np.full(n, self.p_control_)

    def benefit_draws(self, X) -> np.ndarray:
        return np.broadcast_to(self.draws_, (len(X), len(self.draws_)))

    def _explain(self, X: pd.DataFrame) -> Explanation:
        n, d = len(X), len(self.features_)
        zeros = np.zeros((n, d))
        p1 = Contributions(zeros, np.full(n, self.p_treated_), np.full(n, self.p_treated_))
        benefit = np.full(n, self.p_treated_ - self.p_control_)
        return Explanation(self.features_, p1, Contributions(zeros.copy(), benefit, benefit))


class BayesianCausalForest(BenefitCandidate):
    """Bayesian Causal Forest (Hahn, Murray & Carvalho 2020) with a probit link, via stochtree.

    ``P(y = 1 | x, t) = Phi(mu(x) + (t - 1/2) * tau(x))`` with the known
    randomisation probability: the symmetric treatment coding of Hahn, Murray &
    Carvalho (section 5.2). With a 0/1 coding the effect forest sees only the
    treated patients' residuals, so prognosis that the ``mu`` forest misses in
    both arms leaks into it; with +-1/2 a shift common to both arms cannot be
    an effect. (Prototype runs on trials with a constant probit effect and a
    U-shaped prognosis, n = 200: with the 0/1 coding the heterogeneity test
    gave p <= 0.05 in 4 of 13 trials.) The treatment-effect forest ``tau`` has a prior that keeps its
    trees shallow and its leaves small, so on a small trial it answers close to
    one common effect with wide intervals, and with more patients it can find a
    subgroup. Point predictions are posterior means of each arm's probability;
    ``benefit_draws`` are the posterior draws of ``Phi(mu + tau/2) - Phi(mu - tau/2)``.

    The fitted stochtree model is kept as its JSON (stochtree objects do not
    pickle) and rebuilt on first use after loading. Explanations use TreeSHAP
    on the posterior-mean forests of ``explain_draws`` evenly spaced draws (on
    the probit scale; see the module docstring for the probability scale).
    """

    name = "bcf"
    label = "Bayesian Causal Forest (probit link; shrinks towards one common effect)"
    has_draws = True

    def __init__(
        self,
        num_gfr: int = 10,
        num_mcmc: int = 200,
        num_chains: int = 1,
        num_burnin: int = 0,
        mu_trees: int = 100,
        tau_trees: int = 50,
        explain_draws: int = 50,
        treated_fraction: float = 0.5,
        max_patients: int | None = None,
        random_state: int = 0,
    ):
        self.num_gfr = num_gfr
        self.num_mcmc = num_mcmc
        self.num_chains = num_chains
        self.num_burnin = num_burnin
        self.mu_trees = mu_trees
        self.tau_trees = tau_trees
        self.explain_draws = explain_draws
        self.treated_fraction = treated_fraction
        self.max_patients = max_patients
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray):
        from stochtree import BCFModel, OutcomeModel

        self.features_ = list(X.columns)
        F = _matrix(X, self.features_)
        t, y = np.asarray(t, dtype=float), np.asarray(y, dtype=float)
        if self.max_patients is not None and len(y) > self.max_patients:
            rows = stratified_subsample(2 * t.astype(int) + y.astype(int), self.max_patients, self.random_state)
            F, t, y = F[rows], t[rows], y[rows]
        self.n_fitted_ = len(y)
        self.control_code_, self.treated_code_ = -0.5, 0.5
        self.serve_index_ = None  # every retained draw, until thin_for_serving
        model = BCFModel()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "global error variance is fixed at 1 with a probit link"
            model.sample(
                F,
                t + self.control_code_,  # +-1/2: stochtree takes it as a continuous treatment basis
                y,
                np.full(len(y), self.treated_fraction),
                num_gfr=self.num_gfr,
                num_burnin=self.num_burnin,
                num_mcmc=self.draws_per_chain(),  # per chain: stochtree stores the chains one after another
                general_params={
                    "num_chains": self.num_chains,
                    "outcome_model": OutcomeModel(outcome="binary", link="probit"),
                    "random_seed": int(self.random_state) % (2**31 - 1),
                    "num_threads": 1,
                    "propensity_covariate": "none",
                },
                prognostic_forest_params={"num_trees": self.mu_trees},
                treatment_effect_forest_params={"num_trees": self.tau_trees},
            )
        self._live = model
        self._train_F = F  # only until pickling: node covers for the explainer (see __getstate__)
        self.model_json_ = self.explain_trees_ = self.explain_packed_ = self._explainer = self.flat_ = None  # of an earlier fit
        return self

    # stochtree model plumbing -------------------------------------------------------------
    def _model(self):
        live = getattr(self, "_live", None)
        if live is None:
            from stochtree import BCFModel

            live = BCFModel()
            live.from_json(zlib.decompress(self.model_json_).decode())
            self._live = live
        return live

    def __getstate__(self):
        if getattr(self, "_live", None) is not None:
            if getattr(self, "model_json_", None) is None:
                self.model_json_ = zlib.compress(self._live.to_json().encode(), 6)
            self.flat_forests()
        if getattr(self, "_live", None) is not None or getattr(self, "flat_", None) is not None:  # forests to explain with
            if getattr(self, "explain_trees_", None) is None and getattr(self, "explain_packed_", None) is None:
                if getattr(self, "_train_F", None) is not None:
                    self.explain_trees_ = self._explain_trees(self._train_F)
        state = dict(self.__dict__)
        trees = state.pop("explain_trees_", None)
        if trees is not None:  # thousands of small tree dictionaries pickle slowly: a few arrays instead
            from serving.runtime.forests import pack_shap_trees

            state["explain_packed_"] = {**trees, "mu": pack_shap_trees(trees["mu"]), "tau": pack_shap_trees(trees["tau"])}
        for key in ("_live", "_train_F", "_explainer"):
            state.pop(key, None)
        return state

    def _trees(self) -> dict:
        """The explanation trees: kept, unpacked from the pickled arrays, or computed from the training rows."""
        trees = getattr(self, "explain_trees_", None)
        if trees is None:
            packed = getattr(self, "explain_packed_", None)
            if packed is not None:
                from serving.runtime.forests import unpack_shap_trees

                trees = {**packed, "mu": unpack_shap_trees(packed["mu"]), "tau": unpack_shap_trees(packed["tau"])}
            else:
                trees = self._explain_trees(self._train_F)
            self.explain_trees_ = trees
        return trees

    def flat_forests(self) -> dict:
        """Both posterior forests flattened (:class:`serving.runtime.forests.TreeArrays`) with their offsets.

        Computed once from the live model and pickled with the candidate, so a
        loaded model scores a few patients without parsing stochtree's JSON.
        """
        flat = getattr(self, "flat_", None)
        if flat is None:
            from serving.runtime.forests import flatten_stochtree

            live = self._model()
            index = getattr(self, "serve_index_", None)
            mu, tau = flatten_stochtree(live.forest_container_mu, index), flatten_stochtree(live.forest_container_tau, index)
            tau0 = _tau0(live)
            flat = self.flat_ = {
                "mu": mu,
                "tau": tau,
                "mu_offset": float(live.y_bar),
                "tau_offset": tau0 if index is None else tau0[index],
            }
        return flat

    def _explain_trees(self, F: np.ndarray) -> dict:
        flat = self.flat_forests()
        mu, tau = flat["mu"], flat["tau"]
        k = max(1, min(self.explain_draws, mu.n_draws))
        draws = np.unique(np.linspace(0, mu.n_draws - 1, k).round().astype(int))
        return {
            "mu": mu.shap_trees(F, draws, 1.0 / len(draws)),
            "tau": tau.shap_trees(F, draws, 1.0 / len(draws)),
            "mu_offset": flat["mu_offset"],
            "tau_offset": float(np.mean(flat["tau_offset"][draws])),
        }

    def draws_per_chain(self) -> int:
        return -(-self.num_mcmc // max(1, self.num_chains))

    def chains(self) -> int:
        """Chains of this fit (1 for models fitted before several chains were run)."""
        return getattr(self, "num_chains", 1)

    def coding(self) -> tuple[float, float]:
        """The treatment basis of control and treated patients (+-1/2; 0 and 1 in models fitted before the change)."""
        return getattr(self, "control_code_", 0.0), getattr(self, "treated_code_", 1.0)

    def _forest_draws(self, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The forests' own posterior draws: ``mu`` (the prognosis at the coding's midpoint) and ``tau``."""
        n = len(F)
        flat = getattr(self, "flat_", None)  # a loaded model: the flat forests' compiled walk, as the served plan does
        if flat is not None:
            return flat["mu"].predict_compiled(F) + flat["mu_offset"], flat["tau"].predict_compiled(F) + flat["tau_offset"][None, :]
        out = self._model().predict(F, np.ones(n), np.full(n, self.treated_fraction), terms=["mu", "tau"], type="posterior")
        mu, tau = np.asarray(out["mu_hat"]).reshape(n, -1), np.asarray(out["tau_hat"]).reshape(n, -1)
        index = getattr(self, "serve_index_", None)
        return (mu, tau) if index is None else (mu[:, index], tau[:, index])

    def thin_for_serving(self, draws: int, X: pd.DataFrame) -> BayesianCausalForest:
        """Serve ``draws`` of the retained draws, evenly spaced over all chains (every chain contributes alike).

        Each served prediction evaluates every draw's trees; the full posterior
        (all retained draws) is what the convergence diagnostics read, before
        thinning. The difference thinning makes to the interval limits is
        measured by the training job (:func:`training.diagnostics.thin_and_measure`). ``X``: the training rows.
        """
        flat = getattr(self, "flat_", None) if getattr(self, "serve_index_", None) is None else None  # every retained draw
        total = flat["mu"].n_draws if flat is not None else self._model().num_samples
        self.serve_index_ = None if draws >= total else np.unique(np.linspace(0, total - 1, draws).round().astype(int))
        self.explain_trees_ = self.explain_packed_ = self._explainer = None
        if flat is not None and self.serve_index_ is not None:  # a fit sent back from a worker: no stochtree JSON to parse
            index = self.serve_index_
            flat = {"mu": flat["mu"].take_draws(index), "tau": flat["tau"].take_draws(index), "mu_offset": flat["mu_offset"],
                    "tau_offset": np.asarray(flat["tau_offset"])[index]}  # fmt: skip
        self.flat_ = flat
        self._train_F = _matrix(X, self.features_)  # the explanation trees' node covers, rebuilt for the served draws
        return self

    def _probit_draws(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Posterior draws of the control arm's probit ``mu + c0 tau`` and of the effect ``tau`` (treated: ``+ tau``)."""
        mu, tau = self._forest_draws(_matrix(X, self.features_))
        return mu + self.coding()[0] * tau, tau

    def probit_draws(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Posterior draws (patients x draws), probit scale: the control arm's prognosis and the treatment effect."""
        return self._probit_draws(X)

    def midpoint_draws(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Posterior draws of the prognosis at the coding's midpoint (the ``mu`` forest) and of the effect."""
        return self._forest_draws(_matrix(X, self.features_))

    # BenefitCandidate ---------------------------------------------------------------------
    def predict_arms(self, X) -> tuple[np.ndarray, np.ndarray]:
        mu, tau = self._probit_draws(X)
        return norm.cdf(mu + tau).mean(axis=1), norm.cdf(mu).mean(axis=1)

    def benefit_draws(self, X) -> np.ndarray:
        mu, tau = self._probit_draws(X)
        return norm.cdf(mu + tau) - norm.cdf(mu)

    def _shap(self, part: str, F: np.ndarray) -> tuple[np.ndarray, float]:
        import shap

        explainers = getattr(self, "_explainer", None)
        if explainers is None:
            trees = self._trees()
            explainers = {
                key: shap.TreeExplainer({"trees": trees[key], "base_offset": 0.0, "tree_output": "raw_value", "objective": "squared_error"})
                for key in ("mu", "tau")
            }
            self._explainer = explainers
        explainer = explainers[part]
        values = np.asarray(explainer.shap_values(F, check_additivity=False)).reshape(len(F), -1)
        return values, float(np.ravel(explainer.expected_value)[0])

    def _explain(self, X: pd.DataFrame) -> Explanation:
        F = _matrix(X, self.features_)
        trees = self._trees()
        phi_mu, base_mu = self._shap("mu", F)
        phi_tau, base_tau = self._shap("tau", F)
        p1, p0 = self.predict_arms(X)
        c0, c1 = self.coding()
        mid, effect = base_mu + trees["mu_offset"], base_tau + trees["tau_offset"]
        treated = _probit_to_probability(phi_mu + c1 * phi_tau, np.full(len(F), mid + c1 * effect), p1)
        control = _probit_to_probability(phi_mu + c0 * phi_tau, np.full(len(F), mid + c0 * effect), p0)
        return Explanation(self.features_, treated, _difference(treated, control))


def stratified_subsample(strata: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted row indices of a random subsample of ``size`` rows, each stratum in proportion (largest remainders)."""
    strata = np.asarray(strata)
    rng = np.random.default_rng([int(seed) % 2**32, size])
    levels, counts = np.unique(strata, return_counts=True)
    quota = counts * size / len(strata)
    take = np.floor(quota).astype(int)
    take[np.argsort(-(quota - take), kind="stable")[: size - take.sum()]] += 1
    rows = [rng.choice(np.nonzero(strata == level)[0], k, replace=False) for level, k in zip(levels, take, strict=True)]
    return np.sort(np.concatenate(rows))




def _tau0(model) -> np.ndarray:
    samples = getattr(model, "tau_0_samples", None)
    if samples is None:
        return np.zeros(model.num_samples)
    return np.asarray(samples, dtype=float).reshape(-1)


def _probit_to_probability(phi: np.ndarray, base_eta: np.ndarray, output: np.ndarray) -> Contributions:
    """Probit-scale contributions mapped to probability points, adding up to ``output`` exactly.

    The ratio ``(output - Phi(base)) / (eta - base)`` keeps each contribution's
    sign; ``output`` is the posterior mean probability the model serves.
    """
    eta = base_eta + phi.sum(axis=1)
    p_base = norm.cdf(base_eta)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = eta - base_eta
        ratio = np.where(np.abs(diff) > 1e-9, (output - p_base) / diff, norm.pdf(eta))
    values = phi * ratio[:, None]
    # Where the probit-scale contributions cancel, put the (tiny) remainder on the base.
    return Contributions(values, output - values.sum(axis=1), output)


class RiskModel(BenefitCandidate):
    """Prognostic risk score (blinded to treatment) plus a constant relative treatment effect (PATH).

    The effect model ``logit P = a + b * score + g * t`` is fitted on a
    cross-fitted score, so ``b`` shrinks an over-fitted score towards the
    average (on 100 patients an in-sample score would look far better than it is).
    """

    name = "risk_model"
    label = "Risk model (prognostic score + constant relative effect)"

    def __init__(self, C: float = 0.1, score_folds: int = 5, solver: str = "liblinear", random_state: int = 0):
        self.C = C
        self.score_folds = score_folds
        self.solver = solver
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray):
        self.features_ = list(X.columns)
        t, y = np.asarray(t).astype(int), np.asarray(y).astype(int)
        A = _matrix(X, self.features_)
        self.scaler_ = fit_scaler(A)
        Z = _scale(A, self.scaler_)
        if len(np.unique(y)) < 2 or min(np.bincount(y)) < self.score_folds:
            self.coef_, self.intercept_ = np.zeros(Z.shape[1]), 0.0
            self.a_, self.b_ = float(logit((y.sum() + 0.5) / (len(y) + 1))), 0.0
            self.gamma_ = _log_odds_ratio(t, y)
            return self
        solver = logistic_solver(self.solver, len(y))
        self.coef_, self.intercept_ = fit_logistic(Z, y, self.C, solver)
        score = crossfit_score(Z, y, self.C, self.score_folds, self.random_state, solver)
        effect = LogisticRegression(C=1e6, max_iter=2000).fit(np.column_stack([score, t]), y)  # 3 parameters, unpenalised
        self.a_ = float(effect.intercept_[0])
        self.b_, self.gamma_ = (float(v) for v in effect.coef_[0])
        return self

    def _eta(self, X) -> np.ndarray:
        score = _scale(_matrix(X, self.features_), self.scaler_) @ self.coef_ + self.intercept_
        return self.a_ + self.b_ * score

    def predict_arms(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        eta0 = self._eta(X)
        return expit(eta0 + self.gamma_), expit(eta0)

    def _explain(self, X: pd.DataFrame) -> Explanation:
        Z = _scale(_matrix(X, self.features_), self.scaler_)  # training mean is 0 after scaling
        phi = self.b_ * Z * self.coef_[None, :]
        base0 = np.full(len(X), self.a_ + self.b_ * self.intercept_)
        p1 = _logit_to_probability(phi, base0 + self.gamma_)
        p0 = _logit_to_probability(phi, base0)
        return Explanation(self.features_, p1, _difference(p1, p0))


def crossfit_score(Z: np.ndarray, y: np.ndarray, C: float, folds: int, seed: int, solver: str = "liblinear") -> np.ndarray:
    """The prognostic linear predictor of each patient from a penalised logistic fitted without them (blind to arm).

    The risk model's effect fit and the PATH analysis (:mod:`training.path`)
    both use it, so a patient's risk quarter never comes from a model that saw
    their outcome.
    """
    score = np.zeros(len(y))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(Z, y):
        score[test] = _decision(Z[test], *fit_logistic(Z[train], y[train], C, solver))
    return score


def _log_odds_ratio(t: np.ndarray, y: np.ndarray) -> float:
    """Treatment log odds ratio with a 0.5 continuity correction."""
    a, b = y[t == 1].sum() + 0.5, (1 - y[t == 1]).sum() + 0.5
    c, d = y[t == 0].sum() + 0.5, (1 - y[t == 0]).sum() + 0.5
    return float(np.log(a / b) - np.log(c / d))


class InteractionLogistic(BenefitCandidate):
    """Penalised logistic regression with treatment-by-feature interactions.

    The L2 strength is chosen from ``Cs`` by an internal stratified CV on log
    loss (``LogisticRegressionCV``); the treatment column is multiplied by
    ``treatment_scale`` so that the main treatment effect is barely penalised.
    """

    name = "interaction_logistic"
    label = "Penalised logistic regression with treatment interactions"

    def __init__(
        self, Cs=(0.001, 0.003, 0.01, 0.03, 0.1), cv: int = 3, treatment_scale: float = 10.0, solver: str = "liblinear", random_state: int = 0
    ):
        self.Cs = Cs
        self.cv = cv
        self.treatment_scale = treatment_scale
        self.solver = solver
        self.random_state = random_state

    def _design(self, Z: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.column_stack([Z, self.treatment_scale * t, Z * t[:, None]])

    def fit(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray):
        self.features_ = list(X.columns)
        t, y = np.asarray(t, float), np.asarray(y).astype(int)
        A = _matrix(X, self.features_)
        self.scaler_ = fit_scaler(A)
        Z = _scale(A, self.scaler_)
        d = Z.shape[1]
        if len(np.unique(y)) < 2 or min(np.bincount(y)) < self.cv:
            self.main_, self.inter_ = np.zeros(d), np.zeros(d)
            self.intercept_ = float(logit((y[t == 0].sum() + 0.5) / ((t == 0).sum() + 1)))
            self.gamma_ = _log_odds_ratio(t.astype(int), y)
            self.C_ = float("nan")
            return self
        solver = logistic_solver(self.solver, len(y))
        coef, intercept, self.C_ = fit_logistic_cv(self._design(Z, t), y, list(self.Cs), self.cv, solver)
        self.main_, self.gamma_, self.inter_ = coef[:d], float(coef[d] * self.treatment_scale), coef[d + 1:]
        self.intercept_ = intercept
        return self

    def predict_arms(self, X) -> tuple[np.ndarray, np.ndarray]:
        Z = _scale(_matrix(X, self.features_), self.scaler_)
        eta0 = self.intercept_ + Z @ self.main_
        eta1 = eta0 + self.gamma_ + Z @ self.inter_
        return expit(eta1), expit(eta0)

    def _explain(self, X: pd.DataFrame) -> Explanation:
        Z = _scale(_matrix(X, self.features_), self.scaler_)
        p1 = _logit_to_probability(Z * (self.main_ + self.inter_)[None, :], np.full(len(X), self.intercept_ + self.gamma_))
        p0 = _logit_to_probability(Z * self.main_[None, :], np.full(len(X), self.intercept_))
        return Explanation(self.features_, p1, _difference(p1, p0))


class TLearner(BenefitCandidate):
    """One LightGBM classifier per arm."""

    name = "t_learner"
    label = "T-learner (LightGBM per arm)"

    def __init__(self, lightgbm: LightGBMParams | None = None, random_state: int = 0):
        self.lightgbm = lightgbm
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray):
        params = self.lightgbm or LightGBMParams()
        self.features_ = list(X.columns)
        A = _matrix(X, self.features_)
        t, y = np.asarray(t).astype(bool), np.asarray(y)
        self.treated_ = _fit_lgbm_classifier(A[t], y[t], params, self.random_state, self.features_)
        self.control_ = _fit_lgbm_classifier(A[~t], y[~t], params, self.random_state + 1, self.features_)
        return self

    def predict_arms(self, X) -> tuple[np.ndarray, np.ndarray]:
        A = _matrix(X, self.features_)
        return _proba(self.treated_, A), _proba(self.control_, A)

    def _explain(self, X: pd.DataFrame) -> Explanation:
        X = _matrix(X, self.features_)
        p1 = _logit_to_probability(*_lgbm_raw_contributions(self.treated_, X))
        p0 = _logit_to_probability(*_lgbm_raw_contributions(self.control_, X))
        return Explanation(self.features_, p1, _difference(p1, p0))


class DRLearner(BenefitCandidate):
    """Doubly robust learner: cross-fitted outcome models, known randomisation ratio, LightGBM final stage."""

    name = "dr_learner"
    label = "DR-learner (cross-fitted, known randomisation, LightGBM final stage)"

    def __init__(
        self,
        nuisance: LightGBMParams | None = None,
        final: LightGBMParams | None = None,
        crossfit_folds: int = 2,
        treated_fraction: float = 0.5,
        random_state: int = 0,
    ):
        self.nuisance = nuisance
        self.final = final
        self.crossfit_folds = crossfit_folds
        self.treated_fraction = treated_fraction
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray):
        nuisance = self.nuisance or LightGBMParams()
        final = self.final or LightGBMParams(n_estimators=40, min_child_samples=20, num_leaves=3)
        self.features_ = features = list(X.columns)
        A = _matrix(X, features)
        t = np.asarray(t).astype(int)
        y = np.asarray(y).astype(float)
        e = self.treated_fraction
        mu1, mu0 = np.zeros(len(y)), np.zeros(len(y))
        strata = 2 * t + y.astype(int)
        counts = np.bincount(strata)
        split_on = strata if counts[counts > 0].min() >= self.crossfit_folds else t
        folds = StratifiedKFold(n_splits=self.crossfit_folds, shuffle=True, random_state=self.random_state)
        for k, (train, test) in enumerate(folds.split(A, split_on)):
            Atr, ttr, ytr = A[train], t[train], y[train]
            m1 = _fit_lgbm_classifier(Atr[ttr == 1], ytr[ttr == 1], nuisance, self.random_state + 10 + k, features)
            m0 = _fit_lgbm_classifier(Atr[ttr == 0], ytr[ttr == 0], nuisance, self.random_state + 20 + k, features)
            mu1[test] = m1.predict_proba(A[test])[:, 1]
            mu0[test] = m0.predict_proba(A[test])[:, 1]
        self.pseudo_outcome_ = mu1 - mu0 + t * (y - mu1) / e - (1 - t) * (y - mu0) / (1 - e)
        self.final_ = fit_lgbm(A, self.pseudo_outcome_, final, self.random_state + 30, features, objective="regression")
        self.treated_ = _fit_lgbm_classifier(A[t == 1], y[t == 1].astype(int), nuisance, self.random_state + 40, features)
        return self

    def _tau(self, X: np.ndarray) -> np.ndarray:
        return self.final_.booster_.predict(X)

    def predict_arms(self, X) -> tuple[np.ndarray, np.ndarray]:
        X = _matrix(X, self.features_)
        p1 = _proba(self.treated_, X)
        p0 = np.clip(p1 - self._tau(X), 0.0, 1.0)
        return p1, p0

    def _explain(self, X: pd.DataFrame) -> Explanation:
        X = _matrix(X, self.features_)
        p1 = _logit_to_probability(*_lgbm_raw_contributions(self.treated_, X))
        contrib = self.final_.booster_.predict(X, pred_contrib=True)
        phi, base = contrib[:, :-1], contrib[:, -1]
        p1_pred, p0_pred = self.predict_arms(X)
        benefit = p1_pred - p0_pred  # equals tau unless p0 was clipped into [0, 1]
        return Explanation(self.features_, p1, Contributions(_rescale(phi, base, benefit), base, benefit))


def make_candidate(name: str, config: CandidatesConfig, treated_fraction: float, seed: int, final: bool = False) -> BenefitCandidate:
    """A fresh candidate; ``final`` asks for the served model's settings (e.g. all posterior draws).

    ``config`` should be resolved for the trial's size (``TrainConfig.resolved``); an ``auto`` left
    in it gets the small-trial value.
    """
    if name == "arm_only":
        return ArmOnly(random_state=seed)
    if name == "bcf":
        params = config.bcf

        def small(value, default):  # an unresolved ``auto`` (see TrainConfig.resolved) gets the small-trial value
            return default if value == "auto" else value

        return BayesianCausalForest(
            num_gfr=params.num_gfr if final else params.cv_gfr,
            num_mcmc=small(params.num_mcmc, 1000) if final else small(params.cv_mcmc, 50),
            # CV fits use posterior means only; each chain starts from its own warm start (stochtree)
            num_chains=(min(params.num_chains, params.num_gfr) if params.num_gfr else params.num_chains) if final else 1,
            num_burnin=params.num_burnin if final else 0,
            mu_trees=params.mu_trees,
            tau_trees=params.tau_trees,
            explain_draws=params.explain_draws,
            treated_fraction=treated_fraction,
            max_patients=small(params.max_patients, None),
            random_state=seed,
        )
    if name == "risk_model":
        return RiskModel(C=config.risk_model.C, score_folds=config.risk_model.score_folds, solver=config.solver, random_state=seed)
    if name == "interaction_logistic":
        params = config.interaction_logistic
        return InteractionLogistic(
            Cs=tuple(params.Cs), cv=params.cv, treatment_scale=params.treatment_scale, solver=config.solver, random_state=seed
        )
    if name == "t_learner":
        return TLearner(lightgbm=config.t_learner.lightgbm, random_state=seed)
    if name == "dr_learner":
        params = config.dr_learner
        return DRLearner(
            nuisance=params.nuisance,
            final=params.final,
            crossfit_folds=params.crossfit_folds,
            treated_fraction=treated_fraction,
            random_state=seed,
        )
    raise ValueError(f"unknown candidate {name!r}")


def candidate_label(name: str) -> str:
    return {c.name: c.label for c in (ArmOnly, RiskModel, BayesianCausalForest, InteractionLogistic, TLearner, DRLearner)}[name]


class BootstrapEnsemble:
    """Benefit intervals: the candidate refitted on bootstrap resamples (stratified by arm).

    The point estimate stays the full-data fit's; the interval reflects
    model-fitting uncertainty given the fitted feature pipeline.
    """

    def __init__(self, candidate: BenefitCandidate, n_models: int = 100, level: float = 0.95, seed: int = 0, penalty: str = "reselect"):
        self.candidate = candidate
        self.n_models = n_models
        self.level = level
        self.seed = seed
        self.penalty = penalty

    def template(self) -> BenefitCandidate:
        """The settings every refit starts from: the candidate's, or with ``penalty="keep"`` its chosen penalty only."""
        chosen = getattr(self.candidate, "C_", None)
        if self.penalty == "keep" and hasattr(self.candidate, "Cs") and chosen is not None and np.isfinite(chosen):
            return clone(self.candidate).set_params(Cs=(float(chosen),))
        return self.candidate

    def resamples(self, t: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """(rows, random_state) of every refit, in order: the resamples are drawn here, the refits anywhere."""
        rng = np.random.default_rng(self.seed)
        t = np.asarray(t).astype(int)
        arms = [np.nonzero(t == a)[0] for a in (0, 1)]
        return [
            (np.concatenate([rng.choice(idx, size=len(idx), replace=True) for idx in arms]), self.seed + 1000 + b)
            for b in range(self.n_models)
        ]

    @staticmethod
    def refit(candidate: BenefitCandidate, X: pd.DataFrame, t: np.ndarray, y: np.ndarray, rows: np.ndarray, seed: int) -> BenefitCandidate:
        """One refit of ``candidate``'s settings on ``rows`` (a resample) with ``random_state=seed``."""
        model = clone(candidate).set_params(random_state=seed)
        return model.fit(X.iloc[rows].reset_index(drop=True), np.asarray(t).astype(int)[rows], np.asarray(y)[rows])

    def fit(self, X: pd.DataFrame, t: np.ndarray, y: np.ndarray, models: list[BenefitCandidate] | None = None):
        """Refit on every resample; ``models`` are refits already made elsewhere (e.g. in the worker pool) from :meth:`resamples`."""
        if models is not None:
            if len(models) != self.n_models:
                raise ValueError(f"expected {self.n_models} refits, got {len(models)}")
            self.models_ = list(models)
            return self
        template = self.template()
        self.models_ = [self.refit(template, X, t, y, rows, seed) for rows, seed in self.resamples(t)]
        return self

    def interval(self, X: pd.DataFrame, point: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Median-centred percentile interval of the refits around the point estimate (``serving.runtime.intervals``)."""
        A = _matrix(X, self.candidate.features_)  # once, not once per refit
        return bootstrap_interval(np.column_stack([m.predict_benefit(A) for m in self.models_]), point, self.level)
