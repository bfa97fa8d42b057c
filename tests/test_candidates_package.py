"""The candidates package: a registry of models, each exporting its own scoring arrays to the runtime."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import fast_config
from scipy.special import expit

from core.candidates import CANDIDATES, MODELS, BenefitCandidate, Scoring, make_candidate
from core.candidates.base import _matrix, _scale
from core.candidates.logistic import fit_logistic, fit_scaler
from core.runtime.arms import compile_arms


def trial(n: int = 160, d: int = 4, seed: int = 5) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, d)), columns=[f"x{i}" for i in range(d)])
    t = rng.integers(0, 2, n)
    y = (rng.random(n) < expit(-0.3 + 0.8 * X["x0"] + 0.6 * t * (X["x1"] > 0))).astype(int)
    return X, t, y


@pytest.mark.parametrize("name", list(CANDIDATES))
def test_every_registered_model_exports_scoring_arrays_the_runtime_evaluates_as_the_model(name):
    """compile_arms knows no model by name: each model's Scoring gives the same p1, p0 as the model."""
    X, t, y = trial()
    config = fast_config().resolved(len(y))
    model = make_candidate(name, config.candidates, 0.5, 3, final=True).fit(X, t, y)
    assert type(model) is CANDIDATES[name] and model.name == name
    scoring = model.scoring()
    assert isinstance(scoring, Scoring) and scoring.kind in {"constant", "linear", "trees", "posterior_forest"}
    arms = compile_arms(model, None, 0.95)
    F = X.head(7).to_numpy(float)
    np.testing.assert_allclose(np.column_stack(arms.point(F)), np.column_stack(model.predict_arms(X.head(7))), atol=1e-9)


class MainEffectsLogistic(BenefitCandidate):
    """The worked example of core/candidates/__init__.py: a new model is a module and a registry line."""

    name = "main_effects"
    label = "Main-effects logistic (one treatment term)"

    def __init__(self, C: float = 1.0, random_state: int = 0):
        self.C, self.random_state = C, random_state

    def fit(self, X, t, y):
        A = _matrix(X, list(X.columns))
        self.features_, self.scaler_ = list(X.columns), fit_scaler(A)
        coef, self.intercept_ = fit_logistic(np.column_stack([_scale(A, self.scaler_), t]), np.asarray(y), self.C)
        self.coef_, self.gamma_ = np.asarray(coef[:-1]), float(coef[-1])
        return self

    def _eta0(self, X):
        return _scale(_matrix(X, self.features_), self.scaler_) @ self.coef_ + self.intercept_

    def predict_arms(self, X):
        eta0 = self._eta0(X)
        return expit(eta0 + self.gamma_), expit(eta0)

    def scoring(self) -> Scoring:
        w = np.asarray(self.coef_, dtype=float)
        return Scoring("linear", {"mean": self.scaler_.mean_, "scale": self.scaler_.scale_, "w1": w, "w0": w,
                                  "c1": self.intercept_ + self.gamma_, "c0": self.intercept_})


def test_a_new_model_needs_only_its_module_and_a_registry_line(monkeypatch):
    from core.candidates import registry

    monkeypatch.setitem(registry.CANDIDATES, MainEffectsLogistic.name, MainEffectsLogistic)  # the registry line
    X, t, y = trial()
    model = make_candidate("main_effects", fast_config().candidates, 0.5, 1).fit(X, t, y)
    assert isinstance(model, MainEffectsLogistic) and registry.candidate_label("main_effects").startswith("Main-effects")
    refits = [make_candidate("main_effects", fast_config().candidates, 0.5, s).fit(X.iloc[r], t[r], y[r])
              for s, r in enumerate(np.random.default_rng(0).integers(0, len(y), (5, len(y))))]
    ensemble = type("Ensemble", (), {"models_": refits, "level": 0.9})()
    arms = compile_arms(model, ensemble, 0.9)  # the runtime's linear form, untouched
    p1, p0, lower, upper = arms.predict(X.head(9).to_numpy(float))
    np.testing.assert_allclose(np.column_stack([p1, p0]), np.column_stack(model.predict_arms(X.head(9))), atol=1e-9)
    assert np.all(lower <= p1 - p0 + 1e-12) and np.all(p1 - p0 <= upper + 1e-12)


def test_the_registry_is_the_order_the_selection_rules_prefer_and_unknown_names_are_named():
    assert [m.name for m in MODELS] == list(CANDIDATES) == ["arm_only", "risk_model", "bcf", "interaction_logistic", "t_learner", "dr_learner"]
    with pytest.raises(ValueError, match="unknown candidate 'ridge'"):
        make_candidate("ridge", fast_config().candidates, 0.5, 0)
