"""Lean LightGBM fits shared by the tree candidates (the Booster API with the wrappers' parameters)."""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from core.candidates.base import _ConstantClassifier
from core.config import LightGBMParams


class LGBMModel:
    """A LightGBM Booster trained on an array, with the accessors the candidates use (``booster_``, ``predict_proba``)."""

    def __init__(self, booster: lgb.Booster):
        self.booster_ = booster

    def predict_proba(self, X) -> np.ndarray:
        p = self.booster_.predict(np.asarray(X, dtype=float))
        return np.column_stack([1 - p, p])


def _scoring_part(model) -> Any:
    """One LightGBM part of a tree candidate for the runtime: its Booster, or the rate of a constant arm."""
    if isinstance(model, _ConstantClassifier):  # training's stand-in for an arm with one class
        return float(model.rate)
    return model.booster_


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
