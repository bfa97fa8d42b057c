"""Bayesian Causal Forest with a probit link (stochtree): the shrinkage candidate with posterior draws."""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pandas as pd
from scipy.special import ndtr  # scipy.stats.norm.cdf's own kernel, without its per-call argument handling

from core.candidates.base import (
    BenefitCandidate,
    Contributions,
    Explanation,
    Scoring,
    _difference,
    _matrix,
    stratified_subsample,
)
from core.config import CandidatesConfig, small_value


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

    @classmethod
    def from_config(cls, config: CandidatesConfig, treated_fraction: float, seed: int, final: bool = False) -> BayesianCausalForest:
        params = config.bcf
        # An unresolved ``auto`` (see TrainConfig.resolved) gets the small-trial value of its rule.
        return cls(
            num_gfr=params.num_gfr if final else small_value("candidates.bcf.cv_gfr", params.cv_gfr),
            num_mcmc=params.num_mcmc if final else small_value("candidates.bcf.cv_mcmc", params.cv_mcmc),
            # CV fits use posterior means only; each chain starts from its own warm start (stochtree)
            num_chains=(min(params.num_chains, params.num_gfr) if params.num_gfr else params.num_chains) if final else 1,
            num_burnin=params.num_burnin if final else 0,
            mu_trees=params.mu_trees,
            tau_trees=params.tau_trees,
            explain_draws=params.explain_draws,
            treated_fraction=treated_fraction,
            max_patients=small_value("candidates.bcf.max_patients", params.max_patients),
            random_state=seed,
        )

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
            if getattr(self, "model_json_", None) is None:
                raise RuntimeError("this BCF was pickled without its stochtree model: only its flat forests (the served draws) are kept")
            from stochtree import BCFModel

            live = BCFModel()
            live.from_json(zlib.decompress(self.model_json_).decode())
            self._live = live
        return live

    def __getstate__(self):
        if getattr(self, "_live", None) is not None:
            # The flat forests are what a loaded model reads; stochtree's own JSON (about 100 MB for 1,000 draws at
            # n = 99, seconds to write) is not kept.
            self.flat_forests()
        if getattr(self, "_live", None) is not None or getattr(self, "flat_", None) is not None:  # forests to explain with
            if getattr(self, "explain_trees_", None) is None and getattr(self, "explain_packed_", None) is None:
                if getattr(self, "_train_F", None) is not None:
                    self.explain_trees_ = self._explain_trees(self._train_F)
        state = dict(self.__dict__)
        trees = state.pop("explain_trees_", None)
        if trees is not None:  # thousands of small tree dictionaries pickle slowly: a few arrays instead
            from core.runtime.forests import pack_shap_trees

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
                from core.runtime.forests import unpack_shap_trees

                trees = {**packed, "mu": unpack_shap_trees(packed["mu"]), "tau": unpack_shap_trees(packed["tau"])}
            else:
                trees = self._explain_trees(self._train_F)
            self.explain_trees_ = trees
        return trees

    def flat_forests(self) -> dict:
        """Both posterior forests flattened (:class:`core.runtime.forests.TreeArrays`) with their offsets.

        Computed once from the live model and pickled with the candidate, so a
        loaded model scores a few patients without parsing stochtree's JSON.
        """
        flat = getattr(self, "flat_", None)
        if flat is None:
            from core.runtime.forests import flatten_stochtree

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
        """Chains of this fit."""
        return self.num_chains

    def coding(self) -> tuple[float, float]:
        """The treatment basis of control and treated patients (+-1/2)."""
        return self.control_code_, self.treated_code_

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
        # The explanation trees' node covers, rebuilt for the served draws: the trial's patients, or above the number
        # the forests were fitted on a seeded random sample of that many (covers are proportions; every patient of a
        # 10^6 trial through 7,500 trees took minutes of the job's MLflow logging).
        rows = len(X)
        fitted = getattr(self, "n_fitted_", rows)
        if rows > fitted:
            keep = np.sort(np.random.default_rng([int(self.random_state) % (2**31 - 1), 1414]).choice(rows, fitted, replace=False))
            X = X.iloc[keep] if isinstance(X, pd.DataFrame) else np.asarray(X)[keep]
        self._train_F = _matrix(X, self.features_)
        return self

    def probit_draws(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Posterior draws (patients x draws), probit scale: the control arm's prognosis ``mu + c0 tau`` and the effect ``tau``."""
        mu, tau = self._forest_draws(_matrix(X, self.features_))
        return mu + self.coding()[0] * tau, tau

    def scoring(self) -> Scoring:
        flat = self.flat_forests()  # pickled with the model: no stochtree JSON parsed at load
        return Scoring("posterior_forest", {
            "mu": flat["mu"],
            "tau": flat["tau"],
            "mu_offset": float(flat["mu_offset"]),
            "tau_offset": np.asarray(flat["tau_offset"], dtype=float),
            "control_code": float(self.coding()[0]),
            "probit_draws": self.probit_draws,
        })

    def midpoint_draws(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Posterior draws of the prognosis at the coding's midpoint (the ``mu`` forest) and of the effect."""
        return self._forest_draws(_matrix(X, self.features_))

    # BenefitCandidate ---------------------------------------------------------------------
    def predict_arms(self, X) -> tuple[np.ndarray, np.ndarray]:
        mu, tau = self.probit_draws(X)
        return ndtr(mu + tau).mean(axis=1), ndtr(mu).mean(axis=1)

    def benefit_draws(self, X) -> np.ndarray:
        mu, tau = self.probit_draws(X)
        return ndtr(mu + tau) - ndtr(mu)

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

    def _explain(self, X: pd.DataFrame, arms: tuple[np.ndarray, np.ndarray] | None = None) -> Explanation:
        F = _matrix(X, self.features_)
        trees = self._trees()
        phi_mu, base_mu = self._shap("mu", F)
        phi_tau, base_tau = self._shap("tau", F)
        p1, p0 = self.predict_arms(X) if arms is None else arms
        c0, c1 = self.coding()
        mid, effect = base_mu + trees["mu_offset"], base_tau + trees["tau_offset"]
        treated = _probit_to_probability(phi_mu + c1 * phi_tau, np.full(len(F), mid + c1 * effect), p1)
        control = _probit_to_probability(phi_mu + c0 * phi_tau, np.full(len(F), mid + c0 * effect), p0)
        return Explanation(self.features_, treated, _difference(treated, control))





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
    p_base = ndtr(base_eta)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = eta - base_eta
        ratio = np.where(np.abs(diff) > 1e-9, (output - p_base) / diff, np.exp(-(eta**2) / 2.0) / np.sqrt(2 * np.pi))  # the normal density (scipy's formula)
    values = phi * ratio[:, None]
    # Where the probit-scale contributions cancel, put the (tiny) remainder on the base.
    return Contributions(values, output - values.sum(axis=1), output)
