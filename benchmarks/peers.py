"""Peers of the recovery benchmark: their benefit models and their own heterogeneity tests.

- Models: EconML ``CausalForestDML`` and CausalML ``BaseXClassifier`` (the
  optional ``bench`` extra), with the same shallow LightGBM the product's
  learners use, on the same engineered features.
- :func:`grf_rate_test`: the test ``grf`` documents for "is there
  heterogeneity a ranking can find" (Yadlowsky et al., "Evaluating treatment
  prioritization rules via rank-weighted average treatment effects"; grf's
  ``rank_average_treatment_effect``), with EconML's causal forest standing in
  for grf's: a forest fitted on one half of the trial ranks the other half;
  the RATE of that ranking is computed with AIPW scores from a second forest
  fitted on the evaluation half (out-of-bag CATE, cross-fitted outcome mean,
  the randomisation ratio as propensity), ties in the ranking averaged as grf
  does, and its standard error is the SD of the RATE over half-samples drawn
  without replacement (grf's ``boot_grf(half.sample = TRUE)``, R = 200).
  One-sided p-value for RATE > 0, for AUTOC (grf's default target) and QINI.
- :func:`bcf_heterogeneity`: a statistic from the posterior of the product's
  Bayesian Causal Forest: the across-patient SD of the treatment-effect
  forest's ``tau(x)`` (probit scale) in each posterior draw, summarised as its
  5% posterior quantile, i.e. the largest ``c`` with ``P(SD > c | data) >=
  0.95``. It has no null distribution of its own; the benchmark calibrates its
  cut-off on null replicates.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm
from sklearn.model_selection import StratifiedKFold

PEERS = ("causal_forest", "x_learner")
RATE_TARGETS = ("AUTOC", "QINI")
BCF_SMALL_SD = 0.1  # probit units: about 3-4 pp of benefit at these response rates (the uncalibrated rule)


def lgbm_kwargs(config, seed: int) -> dict:
    """The product's learner settings: the comparison is about the meta-learner, not the tree settings."""
    return config.candidates.t_learner.lightgbm.kwargs(seed)


def causal_forest(kwargs: dict, trees: int, seed: int, known_propensity: bool = False, n_jobs: int = 1):
    """An unfitted EconML ``CausalForestDML`` with LightGBM nuisance models (discrete outcome and treatment).

    ``known_propensity``: the treatment model predicts each fold's treated share
    (the randomisation ratio) instead of learning it, as grf does with ``W.hat = 0.5``.
    ``n_jobs``: the forest's processes (1 where replicates are the parallel unit).
    """
    from econml.dml import CausalForestDML
    from lightgbm import LGBMClassifier
    from sklearn.dummy import DummyClassifier

    return CausalForestDML(
        model_y=LGBMClassifier(**kwargs),
        model_t=DummyClassifier(strategy="prior") if known_propensity else LGBMClassifier(**kwargs),
        discrete_outcome=True,
        discrete_treatment=True,
        n_estimators=trees,
        cv=2,
        random_state=seed,
        n_jobs=n_jobs,
    )


def fit_peer(
    name: str, F: np.ndarray, t: np.ndarray, y: np.ndarray, P: np.ndarray, e: float, config, seed: int, trees: int, n_jobs: int = 1
):
    """Fit one peer on the trial; return (benefit on the population ``P``, (lower, upper) or None)."""
    from lightgbm import LGBMClassifier, LGBMRegressor

    kwargs = lgbm_kwargs(config, seed)
    if name == "causal_forest":
        model = causal_forest(kwargs, trees, seed, n_jobs=n_jobs)
        model.fit(y, t, X=F)
        lower, upper = model.effect_interval(P, alpha=0.05)
        return np.ravel(model.effect(P)), (np.ravel(lower), np.ravel(upper))
    if name == "x_learner":
        import matplotlib

        # CausalML sets matplotlib's style for the whole process when imported (its plots use "fivethirtyeight"):
        # undone at once, so that figures drawn in this process afterwards look as in any other.
        with matplotlib.rc_context():
            from causalml.inference.meta import BaseXClassifier

        model = BaseXClassifier(outcome_learner=LGBMClassifier(**kwargs), effect_learner=LGBMRegressor(**kwargs), control_name=0)
        # The randomisation ratio is known: pass it as the propensity, as the product's DR-learner does.
        model.fit(F, treatment=t, y=y, p=np.full(len(y), e))
        return np.ravel(model.predict(P, p=np.full(len(P), e))), None
    raise ValueError(name)


def rate(priority: np.ndarray, scores: np.ndarray, target: str) -> float:
    """grf's RATE estimate: TOC from DR scores sorted by priority, ties averaged; AUTOC or QINI weighting."""
    order = np.argsort(-np.asarray(priority, float), kind="stable")
    p, g = np.asarray(priority, float)[order], np.asarray(scores, float)[order]
    group = np.cumsum(np.r_[True, p[1:] != p[:-1]]) - 1
    g = (np.bincount(group, g) / np.bincount(group))[group]  # a tied group shares its mean score
    k = np.arange(1, len(g) + 1)
    toc = np.cumsum(g) / k - g.mean()
    return float(np.mean(toc) if target == "AUTOC" else np.mean(k / len(g) * toc))


def half_sample_se(priority: np.ndarray, scores: np.ndarray, target: str, boots: int, rng: np.random.Generator) -> float:
    """SD of the RATE over half-samples drawn without replacement (grf's ``boot_grf(half.sample = TRUE)``)."""
    n = len(scores)
    draws = [rate(priority[rows], scores[rows], target) for rows in (rng.choice(n, n // 2, replace=False) for _ in range(boots))]
    return float(np.std(draws, ddof=1))


def grf_rate_test(F: np.ndarray, t: np.ndarray, y: np.ndarray, config, seed: int, trees: int, boots: int = 200) -> dict[str, float]:
    """The grf-style split-sample RATE test (module docstring); per target: estimate, SE, one-sided p."""
    strata = 2 * np.asarray(t, int) + np.asarray(y, int)
    counts = np.bincount(strata)
    on = strata if counts[counts > 0].min() >= 2 else np.asarray(t, int)
    rank_rows, eval_rows = next(StratifiedKFold(2, shuffle=True, random_state=seed).split(F, on))
    kwargs = lgbm_kwargs(config, seed)
    ranker = causal_forest(kwargs, trees, seed, known_propensity=True).fit(y[rank_rows], t[rank_rows], X=F[rank_rows])
    priority = np.ravel(ranker.effect(F[eval_rows]))
    Fe, te, ye = F[eval_rows], t[eval_rows], y[eval_rows]
    evaluator = causal_forest(kwargs, trees, seed + 1, known_propensity=True).fit(ye, te, X=Fe, cache_values=True)
    y_res, t_res, *_ = evaluator.residuals_
    y_res, t_res = np.ravel(y_res), np.ravel(t_res)
    tau = np.ravel(evaluator.model_final_.oob_predict(Fe))
    e_hat = te - t_res
    # grf's get_scores for a causal forest: tau + (W - e)/(e(1 - e)) * (Y - Y.hat - (W - e) tau).
    scores = tau + t_res / (e_hat * (1 - e_hat)) * (y_res - t_res * tau)
    rng = np.random.default_rng(seed)
    out = {}
    for target in RATE_TARGETS:
        estimate = rate(priority, scores, target)
        se = half_sample_se(priority, scores, target, boots, rng)
        out[f"{target.lower()}_estimate"] = estimate
        out[f"{target.lower()}_se"] = se
        out[f"{target.lower()}_p"] = float(norm.sf(estimate / se)) if se > 0 else 1.0
    return out


def bcf_heterogeneity(model, F) -> dict[str, float]:
    """Posterior summaries of the across-patient SD of BCF's ``tau(x)`` (probit scale) on the training patients.

    ``q05``: the 5% posterior quantile of the SD (the statistic); ``mean``:
    its posterior mean; ``p_small``: the posterior probability that it exceeds
    :data:`BCF_SMALL_SD`.
    """
    # The candidate's probit-scale draws; the served benefit draws are on the probability scale,
    # where a common effect on the probit scale already spreads with baseline risk.
    _, tau = model.probit_draws(F)
    sd = np.asarray(tau).std(axis=0)
    return {"q05": float(np.quantile(sd, 0.05)), "mean": float(sd.mean()), "p_small": float(np.mean(sd > BCF_SMALL_SD))}
