"""MCMC convergence diagnostics of the served Bayesian Causal Forest: split R-hat and effective sample size.

Definitions as in Gelman et al., *Bayesian Data Analysis* (3rd ed., section
11.4-11.5): each chain is split in half; ``R-hat`` compares the between- and
within-half-chain variances (values near 1 say the chains agree; 1.01 is the
usual threshold, 1.1 a loose one); the effective sample size combines the
chains' autocorrelations, summed over lags in pairs until a pair's sum turns
negative (Geyer's initial positive sequence).

Reported for the quantities a reader relies on: the average benefit over the
training patients (the posterior of the trial-average CATE), the average
probit effect, the spread of benefit across patients, and the worst R-hat and
smallest ESS over the per-patient benefits of up to 200 patients.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from core.runtime.intervals import posterior_interval

MAX_PATIENTS = 200
RHAT_OK = 1.05


def _split(draws: np.ndarray) -> np.ndarray:
    """(chains, draws) -> (2 x chains, draws // 2): every chain cut in half."""
    half = draws.shape[1] // 2
    return np.concatenate([draws[:, :half], draws[:, half : 2 * half]], axis=0)


def _variances(chains: np.ndarray) -> tuple[float, float, float]:
    """(within-chain variance W, between-chain variance B, the pooled estimate var+) of split chains (BDA3 11.4)."""
    n = chains.shape[1]
    within = float(chains.var(axis=1, ddof=1).mean())
    between = float(n * chains.mean(axis=1).var(ddof=1))
    return within, between, (n - 1) / n * within + between / n


def split_rhat(draws: np.ndarray) -> float:
    """Split R-hat of one quantity's (chains, draws) posterior draws."""
    chains = _split(np.asarray(draws, dtype=float))
    if chains.shape[1] < 2:
        return float("nan")
    within, between, var_plus = _variances(chains)
    if within <= 0:
        return 1.0 if between <= 0 else float("inf")
    return float(np.sqrt(var_plus / within))


def effective_sample_size(draws: np.ndarray) -> float:
    """Effective sample size of one quantity's (chains, draws) posterior draws (BDA3, equation 11.8)."""
    chains = _split(np.asarray(draws, dtype=float))
    m, n = chains.shape
    if n < 4:
        return float("nan")
    within, _, var_plus = _variances(chains)
    if var_plus <= 0:
        return float(m * n)
    centred = chains - chains.mean(axis=1, keepdims=True)
    spectrum = np.fft.rfft(centred, n=2 * n, axis=1)
    autocov = np.fft.irfft(spectrum * np.conj(spectrum), axis=1)[:, :n] / n  # biased autocovariance per chain
    variogram = within - autocov.mean(axis=0) * n / (n - 1)  # within-chain, as BDA3's V_t / 2 for lags >= 0
    rho = 1.0 - variogram / var_plus
    total = 0.0
    for t in range(1, n - 1, 2):
        pair = rho[t] + rho[t + 1]
        if pair < 0:
            break
        total += pair
    return float(m * n / (1.0 + 2.0 * total))


def _by_chain(values: np.ndarray, chains: int) -> np.ndarray:
    per = len(values) // chains
    return np.asarray(values[: per * chains], dtype=float).reshape(chains, per)


def bcf_diagnostics(model: Any, F: pd.DataFrame, seed: int = 0) -> dict[str, Any]:
    """R-hat and ESS of the served BCF's key posterior quantities on its training patients (see the module docstring)."""
    chains = model.chains()
    rows = _rows(F, seed)
    benefit = model.benefit_draws(rows)  # (patients, draws), chains one after another
    _, tau = model.probit_draws(rows)
    quantities = {
        "average_benefit": benefit.mean(axis=0),
        "average_probit_effect": tau.mean(axis=0),
        "benefit_spread": benefit.std(axis=0),
    }
    out: dict[str, Any] = {"chains": chains, "draws": int(benefit.shape[1]), "burnin_per_chain": getattr(model, "num_burnin", 0)}
    if chains < 2:
        out["note"] = "one chain: R-hat needs several chains"
    for name, values in quantities.items():
        split = _by_chain(values, chains)
        out[name] = {"rhat": split_rhat(split), "ess": effective_sample_size(split), "mean": float(values.mean())}
    per_patient = [(split_rhat(_by_chain(b, chains)), effective_sample_size(_by_chain(b, chains))) for b in benefit]
    out["patients"] = {
        "n": len(per_patient),
        "max_rhat": float(np.nanmax([r for r, _ in per_patient])),
        "min_ess": float(np.nanmin([e for _, e in per_patient])),
        "median_ess": float(np.nanmedian([e for _, e in per_patient])),
    }
    worst = max(out[q]["rhat"] for q in quantities)
    out["converged"] = bool(chains >= 2 and np.isfinite(worst) and worst < RHAT_OK and out["patients"]["max_rhat"] < RHAT_OK)
    return out


def describe(diagnostics: dict[str, Any] | None) -> str:
    """One sentence for the summary and the model card."""
    if not diagnostics:
        return "BCF does not serve this outcome: no MCMC diagnostics."
    average = diagnostics["average_benefit"]
    patients = diagnostics["patients"]
    verdict = "the chains agree" if diagnostics["converged"] else f"WARNING: the chains disagree (R-hat >= {RHAT_OK})"
    text = (
        f"BCF: {diagnostics['chains']} chains, {diagnostics['draws']} retained draws; average benefit R-hat "
        f"{average['rhat']:.3f}, ESS {average['ess']:.0f}; per-patient benefit worst R-hat {patients['max_rhat']:.3f}, "
        f"smallest ESS {patients['min_ess']:.0f} ({verdict})."
    )
    thinning = diagnostics.get("thinning")
    if thinning and thinning["served_draws"] < thinning["retained_draws"]:
        text += (
            f" Served from {thinning['served_draws']} of them, evenly spaced over the chains: interval limits move by at "
            f"most {100 * thinning['max_limit_change']:.1f} pp (mean {100 * thinning['mean_limit_change']:.2f} pp)."
        )
    return text


def _rows(F: pd.DataFrame, seed: int) -> pd.DataFrame:
    if len(F) <= MAX_PATIENTS:
        return F
    return F.iloc[np.sort(np.random.default_rng(seed).choice(len(F), MAX_PATIENTS, replace=False))]


def thin_and_measure(model: Any, F: pd.DataFrame, draws: int, level: float, seed: int = 0) -> dict[str, Any]:
    """Thin the served BCF to ``draws`` posterior draws and measure what that changes in the served interval.

    Returns the number of served draws and the largest and mean absolute change
    of the interval limits over (up to 200 of) the training patients, in
    probability points: the Monte-Carlo price of serving a subset.
    """
    rows = _rows(F, seed)
    full = model.benefit_draws(rows)
    lower, upper = posterior_interval(full, full.mean(axis=1), level)
    model.thin_for_serving(draws, F)
    served = model.benefit_draws(rows)
    lower_s, upper_s = posterior_interval(served, served.mean(axis=1), level)
    change = np.abs(np.concatenate([lower_s - lower, upper_s - upper, served.mean(axis=1) - full.mean(axis=1)]))
    return {
        "retained_draws": int(full.shape[1]),
        "served_draws": int(served.shape[1]),
        "max_limit_change": float(change.max()),
        "mean_limit_change": float(change.mean()),
    }
