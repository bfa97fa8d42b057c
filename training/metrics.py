"""Metrics for responder probabilities and benefit rankings, all computed on out-of-fold predictions.

Definitions (documented because small-sample readers will check them):

- ``calibration_intercept``: calibration-in-the-large, the intercept ``a`` of
  ``logit P(y) = a + logit(p)`` (0 is ideal); ``calibration_slope``: ``b`` of
  ``logit P(y) = a + b logit(p)`` (1 is ideal; < 1 means over-fitted).
- ``dr_scores``: doubly robust scores ``psi = mu1 - mu0 + t (y - mu1) / e -
  (1 - t)(y - mu0) / (1 - e)`` with the known randomisation probability ``e``;
  ``E[psi | x] = tau(x)`` whatever the outcome models ``mu``.
- ``autoc`` (RATE, Yadlowsky et al. 2021): the area under the targeting
  operator characteristic ``TOC(q) = mean(psi | top q by predicted benefit) -
  mean(psi)``, averaged over q = 1/n ... 1; 0 for a ranking no better than chance.
- ``rate_qini``: the Qini-weighted RATE, the mean of ``q * TOC(q)``; it
  weights the whole ranking rather than its top and so has more power when
  the benefit signal is weak and diffuse (Yadlowsky et al.).
- ``qini``: area between the Qini curve ``Q(k) = Y_t(k) - Y_c(k) N_t(k) / N_c(k)``
  and the random-targeting line, per patient squared (n^2); ``auuc``: the
  mean of the uplift curve ``(ybar_t(k) - ybar_c(k)) k / n`` over k.
- ``c_for_benefit`` (van Klaveren et al. 2018): treated and control patients
  matched 1:1 on rank of predicted benefit; the concordance between the pairs'
  mean predicted benefit and their observed benefit ``y_t - y_c``.
- ``tau_risk``: mean squared error of predicted benefit against DR scores, the
  selection criterion (lower is better).
- ``benefit_calibration_*`` (calibration for benefit, on the risk-difference
  scale, in the manner of grf's ``test_calibration``): the DR scores against
  the predicted benefit. ``intercept``: calibration in the large,
  ``mean(psi - tau_hat)``, the observed minus the predicted average benefit
  (0 is ideal); ``slope``: least-squares slope of ``psi`` on ``tau_hat`` (1 is
  ideal: differences in predicted benefit between patients are the size the
  randomised comparison shows; below 1 the predictions are too spread out,
  above 1 too cautious, 0 or less: they carry no information on who benefits
  more). Both with 95% Wald intervals. The intercept's is that of a mean of
  the repeat-averaged scores. The slope is estimated in each repeat of the
  cross-fitting (that repeat's predictions and DR scores, HC1 standard error)
  and aggregated as double/debiased machine learning aggregates repeated
  cross-fitting (Chernozhukov et al. 2018, section 3.4): the median of the
  repeats' slopes, with variance the median of ``se_r^2 + (slope_r -
  median)^2``. The spread between repeats carries what one repeat's standard
  error misses: each patient's prediction was fitted on other patients'
  outcomes, which also enter their DR scores. Undefined (NaN) slope for a
  benefit that is the same for every patient.
- ``calibration_error`` (the allowance added to a conditional answer's interval
  on large trials): patients in ``groups`` equal-sized groups of out-of-fold
  predicted benefit; in each group ``d_g = mean(psi - tau_hat)``, the observed
  minus the predicted benefit of the group, and ``v_g`` its squared standard
  error. The mean of ``d_g^2 - v_g`` (weighted by group size, 0 when negative)
  is a moment estimate of the squared calibration error, in the manner of
  DerSimonian and Laird's between-study variance but around 0, so an error
  common to every group counts. Its square root is the SD in risk-difference
  units. It sees only the error that varies with the predicted benefit (a
  lower bound on the model's approximation error), and it needs large groups:
  ``v_g`` is about ``4 p (1 - p) / n_g``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats
from scipy.optimize import brentq
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

EPS = 1e-6


def auc(y: np.ndarray, p: np.ndarray) -> float:
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, p))


def auc_interval(y: np.ndarray, p: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """AUC with DeLong's interval (DeLong, DeLong & Clarke-Pearson 1988), on the logit scale so it stays in (0, 1).

    Returns (auc, lower, upper); NaN when one class is absent or the
    predictions are constant (a constant prediction has no ranking to judge).
    """
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=float)
    pos, neg = p[y], p[~y]
    m, n = len(pos), len(neg)
    if m < 2 or n < 2 or np.ptp(p) < 1e-12:
        return float("nan"), float("nan"), float("nan")
    # Structural components: V10[i] = P(neg < pos_i) (+ ties / 2), V01[j] = P(pos > neg_j).
    rank_all = stats.rankdata(np.concatenate([pos, neg]))
    rank_pos, rank_neg = stats.rankdata(pos), stats.rankdata(neg)
    v10 = (rank_all[:m] - rank_pos) / n
    v01 = 1.0 - (rank_all[m:] - rank_neg) / m
    a = float(v10.mean())
    var = float(np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n)
    z = float(stats.norm.ppf(0.5 + level / 2))
    if var <= 0 or a in (0.0, 1.0):
        return a, a, a
    centre = float(logit(a))
    half = z * np.sqrt(var) / (a * (1 - a))
    return a, float(expit(centre - half)), float(expit(centre + half))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, float) - np.asarray(y, float)) ** 2))


def calibration(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(calibration-in-the-large intercept, calibration slope); NaN when undefined."""
    y = np.asarray(y, float)
    lp = logit(np.clip(np.asarray(p, float), EPS, 1 - EPS))
    if len(np.unique(y)) < 2:
        return float("nan"), float("nan")

    def score(a: float) -> float:
        return float(np.sum(expit(a + lp) - y))

    try:
        intercept = brentq(score, -20, 20)
    except ValueError:
        intercept = float("nan")
    return float(intercept), calibration_slope_interval(y, p)[0]


def calibration_slope_interval(y: np.ndarray, p: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """The calibration slope (logistic regression of ``y`` on logit(p) with an intercept) and its Wald interval.

    Returns (slope, lower, upper); NaN when undefined (one class, constant predictions). The slope's standard
    error comes from the fitted model's Fisher information. :func:`calibration` reports the same slope.
    """
    y = np.asarray(y, float)
    lp = logit(np.clip(np.asarray(p, float), EPS, 1 - EPS))
    if len(np.unique(y)) < 2 or np.std(lp) < 1e-8:
        return float("nan"), float("nan"), float("nan")
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(lp[:, None], y)
    slope, intercept = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    fitted = expit(intercept + slope * lp)
    w = fitted * (1 - fitted)
    information = np.array([[w.sum(), (w * lp).sum()], [(w * lp).sum(), (w * lp * lp).sum()]])
    try:
        variance = float(np.linalg.inv(information)[1, 1])
    except np.linalg.LinAlgError:
        return slope, float("nan"), float("nan")
    half = float(stats.norm.ppf(0.5 + level / 2)) * np.sqrt(max(variance, 0.0))
    return slope, slope - half, slope + half


BENEFIT_CALIBRATION = (
    "benefit_calibration_intercept", "benefit_calibration_intercept_low", "benefit_calibration_intercept_high",
    "benefit_calibration_slope", "benefit_calibration_slope_low", "benefit_calibration_slope_high",
)


def benefit_calibration_line(tau_hat: np.ndarray, psi: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Calibration for benefit: intercept (calibration in the large) and slope of DR scores on predicted benefit, with intervals.

    Keys :data:`BENEFIT_CALIBRATION` (module docstring). ``tau_hat`` and ``psi``: one row per repeat of the
    cross-fitting (repeats x patients), or one vector. The intercept is ``mean(psi - tau_hat)`` of the
    repeat-averaged values with the normal interval of a mean; the slope is each repeat's OLS slope of ``psi`` on
    ``tau_hat`` (with an intercept; HC1 standard error), aggregated over repeats by their median with the
    double/debiased-ML variance (module docstring); one repeat: its own. The slope is NaN when ``tau_hat`` has no
    spread in some repeat.
    """
    taus, psis = np.atleast_2d(np.asarray(tau_hat, float)), np.atleast_2d(np.asarray(psi, float))
    if taus.shape != psis.shape:
        raise ValueError(f"predicted benefit {taus.shape} and DR scores {psis.shape} differ in shape")
    tau_mean, psi_mean = taus.mean(axis=0), psis.mean(axis=0)
    n = psis.shape[1]
    z = float(stats.norm.ppf(0.5 + level / 2))
    gap = psi_mean - tau_mean
    intercept = float(gap.mean())
    half = z * float(gap.std(ddof=1)) / np.sqrt(n) if n > 1 else float("nan")
    out = dict(zip(BENEFIT_CALIBRATION[:3], (intercept, intercept - half, intercept + half), strict=True))
    slopes, ses = [], []
    for tau_r, psi_r in zip(taus, psis, strict=True):
        centred = tau_r - tau_r.mean()
        if n < 3 or float(np.sum(centred**2)) < 1e-12 * n:  # the same benefit for everyone (the floor, an average answer): no slope
            return {**out, **dict.fromkeys(BENEFIT_CALIBRATION[3:], float("nan"))}
        slope_r, se_r = HC1Slope(np.column_stack([np.ones(n), centred]))(psi_r)
        slopes.append(slope_r)
        ses.append(se_r)
    slopes_a, ses_a = np.asarray(slopes), np.asarray(ses)
    slope = float(np.median(slopes_a))
    se = float(np.sqrt(np.median(ses_a**2 + (slopes_a - slope) ** 2)))
    return {**out, **dict(zip(BENEFIT_CALIBRATION[3:], (slope, slope - z * se, slope + z * se), strict=True))}


def calibration_error(tau_hat: np.ndarray, psi: np.ndarray, groups: int) -> dict[str, float]:
    """The out-of-fold calibration error of predicted benefit across ``groups`` groups (module docstring).

    Keys: ``sd`` (risk difference; the allowance), ``variance`` (the moment estimate before the positive part: it
    may be negative), ``groups``, ``smallest_group`` (patients) and ``largest_gap`` (the largest ``|d_g|``).
    """
    tau_hat, psi = np.asarray(tau_hat, float), np.asarray(psi, float)
    n = len(psi)
    if groups < 1 or n < 2 * groups:
        raise ValueError(f"{n} patients cannot make {groups} groups of at least 2")
    if not (np.isfinite(tau_hat).all() and np.isfinite(psi).all()):
        raise ValueError("the predicted benefit or the DR scores are not finite for every patient")
    group = np.empty(n, dtype=int)
    group[np.argsort(tau_hat, kind="stable")] = np.arange(n) * groups // n  # equal counts, ties by position
    gap = psi - tau_hat
    sizes = np.bincount(group, minlength=groups).astype(float)
    means = np.bincount(group, weights=gap, minlength=groups) / sizes
    squares = np.bincount(group, weights=gap**2, minlength=groups)
    se2 = (squares - sizes * means**2) / (sizes - 1) / sizes  # the squared standard error of each group's mean gap
    variance = float(np.sum(sizes * (means**2 - se2)) / n)
    return {
        "sd": float(np.sqrt(max(variance, 0.0))),
        "variance": variance,
        "groups": int(groups),
        "smallest_group": int(sizes.min()),
        "largest_gap": float(np.abs(means).max()),
    }


def candidate_disagreement(served: np.ndarray, others: dict[str, np.ndarray]) -> dict[str, Any]:
    """How far the other candidates' predicted benefit lies from the served model's, patient by patient.

    Per other candidate the root-mean-square difference of the two out-of-fold predictions; ``variance`` is the mean of
    their squares (0 without others), ``sd`` its square root. This is the between-model part of a model-averaged
    variance (Buckland, Burnham & Augustin 1997), taken around the served model instead of the average: an error of
    the served model that the data cannot tell from the others' (the trial does not identify each patient's benefit,
    so no candidate can be checked patient by patient). It counts the others' own errors too, so where they are much
    worse than the served model it overstates; where every candidate shares one error it understates.
    """
    served = np.asarray(served, float)
    if not np.isfinite(served).all():
        raise ValueError("the served model's predicted benefit is not finite for every patient")
    per = {}
    for name, values in others.items():
        values = np.asarray(values, float)
        if values.shape != served.shape or not np.isfinite(values).all():
            raise ValueError(f"{name}'s predicted benefit is not finite for every patient")
        per[name] = float(np.sqrt(np.mean((values - served) ** 2)))
    variance = float(np.mean([v**2 for v in per.values()])) if per else 0.0
    return {"sd": float(np.sqrt(variance)), "variance": variance, "candidates": per}


class HC1Slope:
    """OLS coefficient of the design's last column, and its HC1 heteroskedasticity-consistent standard error.

    White's sandwich with the n / (n - k) small-sample factor (MacKinnon & White 1985). The design is fixed once,
    so each response costs two passes over the rows: the calibration line's slope here, and the held-out
    heterogeneity test's slope beyond prognosis on every null trial (:class:`training.heterogeneity.BeyondPrognosisSlope`).
    """

    def __init__(self, X: np.ndarray):
        self.X = np.asarray(X, dtype=float)
        self.W = np.linalg.pinv(self.X.T @ self.X) @ self.X.T  # coefficients = W @ response

    def __call__(self, y: np.ndarray) -> tuple[float, float]:
        coef = self.W @ y
        residual = y - self.X @ coef
        n, k = self.X.shape
        variance = float(np.sum((self.W[-1] * residual) ** 2)) * n / (n - k)
        return float(coef[-1]), float(np.sqrt(variance))


def describe_benefit_calibration(metrics: dict) -> str:
    """The calibration-for-benefit line in words (the CLI summary, the outcome run's description, the cohort report)."""

    def number(key: str) -> float:
        value = metrics.get(key)
        return float("nan") if value is None else float(value)

    a, a_low, a_high, b, b_low, b_high = (number(k) for k in BENEFIT_CALIBRATION)
    if not np.isfinite(a):
        return "calibration for benefit: n/a"
    large = f"observed minus predicted average benefit {100 * a:+.1f} pp (95% interval {100 * a_low:+.1f} to {100 * a_high:+.1f} pp)"
    if not np.isfinite(b):
        return f"calibration for benefit: no slope (the same benefit for every patient); {large}"
    if b_high < 1:
        reading = "the predicted differences between patients are larger than the randomised comparison shows"
    elif b_low > 1:
        reading = "the predicted differences between patients are smaller than the randomised comparison shows"
    elif b_low <= 0:
        reading = "the interval holds both 0 and 1: too imprecise to tell whether the predicted differences are real"
    else:
        reading = "consistent with 1"
    return (
        f"calibration for benefit: slope {b:.2f} (nominal 95% interval {b_low:.2f} to {b_high:.2f}, its coverage in simulations "
        f"in benchmarks/RESULTS.md section 5; 1 is ideal: {reading}); {large}"
    )


def dr_scores(y: np.ndarray, t: np.ndarray, mu1: np.ndarray, mu0: np.ndarray, e: float) -> np.ndarray:
    y, t = np.asarray(y, float), np.asarray(t, float)
    return mu1 - mu0 + t * (y - mu1) / e - (1 - t) * (y - mu0) / (1 - e)


def _order(tau_hat: np.ndarray) -> np.ndarray:
    # Descending by predicted benefit; ties keep the original order (stable).
    return np.argsort(-np.asarray(tau_hat, float), kind="stable")


def bootstrap_orders(tau_hat: np.ndarray, n_boot: int, seed: int):
    """Per bootstrap resample (patients drawn with replacement, ``default_rng(seed).integers(0, n, n)`` each): its
    rows ordered by descending ``tau_hat``, from one sort of all patients (a resample's copies of a patient are
    adjacent, and patients tied on ``tau_hat`` keep their index order). Re-sorting each resample cost 62 s per
    outcome at 10^6 patients for the report's two bootstrap bands."""
    order = _order(tau_hat)
    rng = np.random.default_rng(seed)
    n = len(order)
    for _ in range(n_boot):
        copies = np.bincount(rng.integers(0, n, n), minlength=n)
        yield np.repeat(order, copies[order])


def toc_curve(tau_hat: np.ndarray, psi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return toc_sorted(np.asarray(psi, float)[_order(tau_hat)])


def toc_sorted(psi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The TOC curve of scores already in descending order of predicted benefit."""
    n = len(psi)
    k = np.arange(1, n + 1)
    return k / n, np.cumsum(psi) / k - psi.mean()


def autoc(tau_hat: np.ndarray, psi: np.ndarray) -> float:
    _, toc = toc_curve(tau_hat, psi)
    return float(np.mean(toc))


def rate_qini(tau_hat: np.ndarray, psi: np.ndarray) -> float:
    """RATE with Qini weighting: the mean of ``q * TOC(q)``; more powerful than AUTOC when benefit is diffuse."""
    q, toc = toc_curve(tau_hat, psi)
    return float(np.mean(q * toc))


def uplift_curves(tau_hat: np.ndarray, t: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Cumulative Qini and uplift curves by predicted benefit (descending)."""
    order = _order(tau_hat)
    return uplift_sorted(np.asarray(t, float)[order], np.asarray(y, float)[order])


def uplift_sorted(t: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`uplift_curves` of arms and outcomes already in descending order of predicted benefit."""
    n_t, n_c = np.cumsum(t), np.cumsum(1 - t)
    y_t, y_c = np.cumsum(y * t), np.cumsum(y * (1 - t))
    with np.errstate(divide="ignore", invalid="ignore"):
        qini_curve = y_t - np.where(n_c > 0, y_c * n_t / n_c, 0.0)
        rate_t = np.where(n_t > 0, y_t / n_t, 0.0)
        rate_c = np.where(n_c > 0, y_c / n_c, 0.0)
    n = len(t)
    k = np.arange(1, n + 1)
    return {"fraction": k / n, "qini": qini_curve, "uplift": (rate_t - rate_c) * k / n}


def qini(tau_hat: np.ndarray, t: np.ndarray, y: np.ndarray) -> float:
    curves = uplift_curves(tau_hat, t, y)
    n = len(curves["qini"])
    random_line = curves["fraction"] * curves["qini"][-1]
    return float(np.sum(curves["qini"] - random_line) / n**2)


def auuc(tau_hat: np.ndarray, t: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(uplift_curves(tau_hat, t, y)["uplift"]))


def c_for_benefit(tau_hat: np.ndarray, t: np.ndarray, y: np.ndarray) -> float:
    tau_hat, t, y = np.asarray(tau_hat, float), np.asarray(t).astype(bool), np.asarray(y, float)
    treated, control = np.nonzero(t)[0], np.nonzero(~t)[0]
    if len(treated) < 2 or len(control) < 2:
        return float("nan")
    treated = treated[_order(tau_hat[treated])]
    control = control[_order(tau_hat[control])]
    m = min(len(treated), len(control))
    pick_t = treated[np.round(np.linspace(0, len(treated) - 1, m)).astype(int)]
    pick_c = control[np.round(np.linspace(0, len(control) - 1, m)).astype(int)]
    predicted = (tau_hat[pick_t] + tau_hat[pick_c]) / 2
    observed = y[pick_t] - y[pick_c]
    # Pairs (i, j) with observed_i > observed_j, counted by sorting instead of an m x m matrix (which
    # needs 20 GB at 10^5 patients): the same integer counts, so the same value.
    usable = concordant = tied = 0
    levels = np.unique(observed)
    for hi in levels:
        upper = predicted[observed == hi]
        for lo in levels[levels < hi]:
            lower = np.sort(predicted[observed == lo])
            below = np.searchsorted(lower, upper, side="left")
            usable += len(upper) * len(lower)
            concordant += int(below.sum())
            tied += int((np.searchsorted(lower, upper, side="right") - below).sum())
    if not usable:
        return float("nan")
    return float((concordant + 0.5 * tied) / usable)


def tau_risk(tau_hat: np.ndarray, psi: np.ndarray) -> tuple[float, float]:
    """(mean, standard error) of (psi - tau_hat)^2."""
    loss = (np.asarray(psi, float) - np.asarray(tau_hat, float)) ** 2
    return float(loss.mean()), float(loss.std(ddof=1) / np.sqrt(len(loss)))


def arm_metrics(y: np.ndarray, t: np.ndarray, p1: np.ndarray, p0: np.ndarray) -> dict[str, float]:
    """Per-arm AUC, Brier, calibration of each arm's own probability on that arm's patients."""
    t = np.asarray(t).astype(bool)
    out: dict[str, float] = {}
    for arm, rows, p in (("treated", t, p1), ("control", ~t, p0)):
        intercept, slope = calibration(y[rows], p[rows])
        out[f"auc_{arm}"] = auc(y[rows], p[rows])
        out[f"brier_{arm}"] = brier(y[rows], p[rows])
        out[f"brier_null_{arm}"] = brier(y[rows], np.full(rows.sum(), y[rows].mean()))
        out[f"calibration_intercept_{arm}"] = intercept
        out[f"calibration_slope_{arm}"] = slope
    out["brier_mean"] = (out["brier_treated"] + out["brier_control"]) / 2
    out["brier_null_mean"] = (out["brier_null_treated"] + out["brier_null_control"]) / 2
    return out


def benefit_metrics(y: np.ndarray, t: np.ndarray, tau_hat: np.ndarray, psi: np.ndarray) -> dict[str, float]:
    risk, risk_se = tau_risk(tau_hat, psi)
    return {
        "qini": qini(tau_hat, t, y),
        "auuc": auuc(tau_hat, t, y),
        "autoc": autoc(tau_hat, psi),
        "rate_qini": rate_qini(tau_hat, psi),
        "c_for_benefit": c_for_benefit(tau_hat, t, y),
        "tau_risk": risk,
        "tau_risk_se": risk_se,
    }
