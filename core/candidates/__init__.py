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

The package: :mod:`~core.candidates.base` (the interface every model implements),
one module per model, :mod:`~core.candidates.registry` (names to classes, in the
order the selection rules prefer), :mod:`~core.candidates.ensemble` (bootstrap
intervals) and the shared lean fits (:mod:`~core.candidates.logistic`,
:mod:`~core.candidates.boosting`). A model exports what the scoring runtime
evaluates through :meth:`BenefitCandidate.scoring` (one of the runtime's forms:
``constant``, ``linear``, ``trees``, ``posterior_forest``), so
:mod:`core.runtime.arms` reads no fitted attribute of any model.

Adding a model (worked example: a plain logistic model with one treatment term)
is one new module and one registry line::

    # core/candidates/main_effects.py
    class MainEffectsLogistic(BenefitCandidate):
        # logit P = intercept + z @ coef + gamma * t: a constant relative effect on the log-odds scale

        name = "main_effects"
        label = "Main-effects logistic (one treatment term)"

        def __init__(self, C: float = 1.0, random_state: int = 0):
            self.C, self.random_state = C, random_state

        @classmethod
        def from_config(cls, config, treated_fraction, seed, final=False):
            return cls(random_state=seed)

        def fit(self, X, t, y):
            A = _matrix(X, list(X.columns))
            self.features_, self.scaler_ = list(X.columns), fit_scaler(A)
            design = np.column_stack([_scale(A, self.scaler_), t])
            coef, self.intercept_ = fit_logistic(design, y, self.C)
            self.coef_, self.gamma_ = coef[:-1], float(coef[-1])
            return self

        def predict_arms(self, X):
            eta0 = row_dot(_scale(_matrix(X, self.features_), self.scaler_), self.coef_) + self.intercept_
            return expit(eta0 + self.gamma_), expit(eta0)

        def _explain(self, X, arms=None): ...  # contributions: coefficient x centred value, as RiskModel

        def scoring(self):
            w = np.asarray(self.coef_, dtype=float)
            return Scoring("linear", {"mean": self.scaler_.mean_, "scale": self.scaler_.scale_, "w1": w, "w0": w,
                                      "c1": self.intercept_ + self.gamma_, "c0": self.intercept_})

    # core/candidates/registry.py: one line in MODELS
        MainEffectsLogistic,

To run it, a config lists its name in ``candidates.enabled``; today that list is
checked against ``CandidateName`` in :mod:`core.config`, so the name is added
there too, and settings beyond the seed are a field of ``CandidatesConfig`` with
their default in ``core/configs/default.yaml`` (the one source of defaults).
"""

from core.candidates.arm_only import (  # noqa: F401
    ArmOnly,
)
from core.candidates.base import (  # noqa: F401
    PROB_CLIP,
    BenefitCandidate,
    Contributions,
    Explanation,
    Scoring,
    _ConstantClassifier,
    _difference,
    _logit_to_probability,
    _matrix,
    _proba,
    _rescale,
    _scale,
    row_dot,
    stratified_subsample,
)
from core.candidates.bcf import (  # noqa: F401
    BayesianCausalForest,
    _probit_to_probability,
    _tau0,
)
from core.candidates.boosting import (  # noqa: F401
    KEEP_TRAINING_DATA_BELOW,
    LGBMModel,
    _booster_params,
    _fit_lgbm_classifier,
    _lgbm_raw_contributions,
    _scoring_part,
    fit_lgbm,
)
from core.candidates.dr_learner import (  # noqa: F401
    DRLearner,
)
from core.candidates.ensemble import (  # noqa: F401
    BootstrapEnsemble,
)
from core.candidates.interaction_logistic import (  # noqa: F401
    InteractionLogistic,
)
from core.candidates.logistic import (  # noqa: F401
    LIBLINEAR_MAX_N,
    _decision,
    _liblinear_fit,
    _log_odds_ratio,
    fit_logistic,
    fit_logistic_cv,
    fit_scaler,
    logistic_solver,
)
from core.candidates.registry import (  # noqa: F401
    BCF,
    CANDIDATE_ORDER,
    CANDIDATES,
    FLOOR,
    MODELS,
    candidate_label,
    make_candidate,
)
from core.candidates.risk_model import (  # noqa: F401
    RiskModel,
    crossfit_score,
)
from core.candidates.t_learner import (  # noqa: F401
    TLearner,
)

__all__ = ["ArmOnly", "BCF", "BayesianCausalForest", "BenefitCandidate", "BootstrapEnsemble", "CANDIDATES", "CANDIDATE_ORDER", "Contributions", "DRLearner", "Explanation", "FLOOR", "InteractionLogistic", "KEEP_TRAINING_DATA_BELOW", "LGBMModel", "LIBLINEAR_MAX_N", "MODELS", "PROB_CLIP", "RiskModel", "Scoring", "TLearner", "candidate_label", "crossfit_score", "fit_lgbm", "fit_logistic", "fit_logistic_cv", "fit_scaler", "logistic_solver", "make_candidate", "stratified_subsample"]
