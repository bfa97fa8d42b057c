"""Headless matplotlib figures shared by training artifacts and the reports."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # headless: training jobs, servers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from core.spec import inline
from training import metrics as M  # noqa: E402

ARM_COLOURS = {"treated": "#1b6ca8", "control": "#c75b12"}


def calibration_figure(
    y: np.ndarray,
    t: np.ndarray,
    p1: np.ndarray,
    p0: np.ndarray,
    labels: tuple[str, str],
    title: str,
    stats: dict[str, tuple[float, float]] | None = None,
):
    """Observed vs predicted response by quantile group, one panel per arm (out-of-fold predictions).

    ``stats`` gives each arm's (intercept, slope) to print, normally the logged
    metrics (per-repeat calibration averaged over repeats), so the figure and
    the tables show one number; without it the panels carry no numbers.
    """
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), sharey=True)
    t = np.asarray(t).astype(bool)
    for ax, (arm, rows, p, label) in zip(axes, (("treated", t, p1, labels[0]), ("control", ~t, p0, labels[1])), strict=True):
        pr, yr = np.asarray(p)[rows], np.asarray(y)[rows]
        groups = max(2, min(5, len(pr) // 10))
        edges = np.unique(np.quantile(pr, np.linspace(0, 1, groups + 1)))
        idx = np.clip(np.searchsorted(edges, pr, side="right") - 1, 0, len(edges) - 2)
        mean_p = [pr[idx == g].mean() for g in range(len(edges) - 1) if (idx == g).any()]
        mean_y = [yr[idx == g].mean() for g in range(len(edges) - 1) if (idx == g).any()]
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="ideal")
        ax.plot(mean_p, mean_y, "o-", color=ARM_COLOURS[arm], label="grouped patients")
        ax.scatter(pr, yr + np.random.default_rng(0).uniform(-0.03, 0.03, len(yr)), s=6, alpha=0.3, color=ARM_COLOURS[arm])
        if stats is not None and arm in stats:
            intercept, slope = stats[arm]
            ax.set_title(f"{label}\nintercept {intercept:+.2f}, slope {slope:.2f}", fontsize=9)
        else:
            ax.set_title(label, fontsize=9)
        ax.set_xlabel("predicted P(response)")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.05, 1.05)
    axes[0].set_ylabel("observed response")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def uplift_figure(tau_hat: np.ndarray, t: np.ndarray, y: np.ndarray, title: str, n_boot: int = 200, seed: int = 0):
    """Qini curve of the benefit ranking with a bootstrap 95% band and the random-targeting line."""
    tau_hat, t, y = np.asarray(tau_hat, float), np.asarray(t, float), np.asarray(y, float)
    curves = M.uplift_curves(tau_hat, t, y)
    n = len(y)
    grid = np.linspace(0, 1, 51)
    draws = []
    for rows in M.bootstrap_orders(tau_hat, n_boot, seed):
        c = M.uplift_sorted(t[rows], y[rows])
        draws.append(np.interp(grid, np.r_[0, c["fraction"]], np.r_[0, c["qini"]]) / n)
    band = np.quantile(np.asarray(draws), [0.025, 0.975], axis=0) if draws else None
    fig, ax = plt.subplots(figsize=(5, 3.6))
    x = np.r_[0, curves["fraction"]]
    q = np.r_[0, curves["qini"]] / n
    if band is not None:
        ax.fill_between(grid, band[0], band[1], color="#1b6ca8", alpha=0.15, label="bootstrap 95% band")
    ax.plot(x, q, color="#1b6ca8", label="model ranking")
    ax.plot([0, 1], [0, q[-1]], color="0.5", ls="--", label="random targeting")
    ax.set_xlabel("fraction treated, highest predicted benefit first")
    ax.set_ylabel("incremental responders per patient")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def permutation_figure(null: np.ndarray, observed: float, p_value: float, title: str, xlabel: str = "best Qini-weighted RATE over candidates"):
    fig, ax = plt.subplots(figsize=(5, 3.2))
    if len(null):
        ax.hist(null, bins=30, color="0.7", label=f"permuted data (B = {len(null)})")
    ax.axvline(observed, color="#c0392b", lw=2, label=f"observed (p = {p_value:.3f})")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("count")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def toc_figure(curve: np.ndarray, band: np.ndarray | None, grid: np.ndarray, title: str):
    """The targeting operator characteristic behind RATE: extra benefit among the top q by predicted benefit."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    if band is not None:
        ax.fill_between(grid, 100 * band[0], 100 * band[1], color="#1b6ca8", alpha=0.15, label="bootstrap 95% band")
    ax.plot(grid, 100 * curve, color="#1b6ca8", label="TOC of the ranking")
    ax.axhline(0, color="0.5", ls="--", lw=1, label="no better than chance")
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction treated, highest predicted benefit first (q)")
    ax.set_ylabel("benefit among top q minus average (pp)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def benefit_calibration_figure(rows: list[dict], title: str, line: tuple[float, float, float] | None = None):
    """Observed benefit (responder risk difference with its score interval) against predicted benefit, by quantile group.

    ``line``: (slope, mean predicted benefit, mean DR score) of the calibration line
    (:func:`training.metrics.benefit_calibration_line`), drawn with the logged slope through the two means (each
    repeat's least-squares line passes through its own means; the logged slope is their median).
    """
    fig, ax = plt.subplots(figsize=(5, 3.6))
    usable = [r for r in rows if r["risk_difference"] is not None and r["predicted"] is not None]
    pred = np.array([100 * r["predicted"] for r in usable])
    obs = np.array([100 * r["risk_difference"] for r in usable])
    low = np.array([100 * r["lower"] for r in usable])
    high = np.array([100 * r["upper"] for r in usable])
    lo_lim = min([-20.0, *(low - 5)]) if len(usable) else -20.0
    hi_lim = max([40.0, *(high + 5)]) if len(usable) else 40.0
    ax.plot([lo_lim, hi_lim], [lo_lim, hi_lim], color="0.6", ls="--", lw=1, label="ideal (observed = predicted)")
    ax.axhline(0, color="0.8", lw=0.8)
    if len(usable):
        ax.errorbar(pred, obs, yerr=[obs - low, high - obs], fmt="o", color="#1b6ca8", capsize=3, label="quantile group (95% CI)")
        for x, yv, r in zip(pred, obs, usable, strict=True):
            ax.annotate(f"n={r['n']}", (x, yv), textcoords="offset points", xytext=(6, -10), fontsize=7, color="0.35")
    if line is not None and len(usable):
        slope, x0, y0 = line
        xs = np.array([pred.min(), pred.max()])
        ax.plot(xs, 100 * y0 + slope * (xs - 100 * x0), color="#c75b12", lw=1.5, label=f"calibration line (slope {slope:.2f})")
    ax.set_xlim(lo_lim, hi_lim)
    ax.set_ylim(lo_lim, hi_lim)
    ax.set_xlabel("predicted benefit, group mean (pp)")
    ax.set_ylabel("observed benefit: responder difference (pp)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def decision_curve_figure(curves: dict[str, np.ndarray], title: str, labels: tuple[str, str]):
    """Net benefit of treating by predicted benefit against treating everyone or no one, over thresholds (pp)."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    x = 100 * curves["threshold"]
    ax.plot(x, 100 * curves["model"], color="#1b6ca8", lw=2, label="treat if predicted benefit > threshold")
    ax.plot(x, 100 * curves["all"], color="#c75b12", ls="--", label=f"treat everyone ({inline(labels[0])})")
    ax.plot(x, 100 * curves["none"], color="0.4", ls=":", label=f"treat no one ({inline(labels[1])})")
    top = max(float(np.max(100 * curves["model"])), float(np.max(100 * curves["all"])), 1.0)
    ax.set_ylim(min(-5.0, -0.25 * top), top * 1.15 + 1)
    ax.set_xlim(x[0], x[-1])
    ax.set_xlabel("threshold: smallest benefit worth treating for (pp)")
    ax.set_ylabel("net benefit (extra responders per 100)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def forest_figure(subgroups: dict, title: str):
    """Responder risk difference (pp, 95% score CI) overall and in each level of the prespecified subgroups."""
    rows: list[tuple[str, dict | None, str]] = [("All patients", subgroups["overall"], "")]
    for group in subgroups["groups"]:
        p = group["interaction_p"]
        rows.append((group["label"], None, "interaction p " + ("n/a" if p is None else "< 0.001" if p < 0.001 else f"= {p:.3f}")))
        rows += [(f"  {level['label']}", level, "") for level in group["levels"]]
    fig, ax = plt.subplots(figsize=(7.2, 0.36 * len(rows) + 1.1))
    y = np.arange(len(rows))[::-1]
    overall = subgroups["overall"]["risk_difference"]
    values = [r for _, r, _ in rows if r is not None and r["risk_difference"] is not None]
    lo = min([-20.0, *(100 * r["lower"] - 5 for r in values)])
    hi = max([40.0, *(100 * r["upper"] + 5 for r in values)])
    left, right = lo - 0.95 * (hi - lo), hi + 0.5 * (hi - lo)  # label column left of the axis, estimates right of it
    ax.axvline(0, color="0.3", lw=1)
    if overall is not None:
        ax.axvline(100 * overall, color="#1b6ca8", ls="--", lw=1, alpha=0.6)
    for yi, (label, r, note) in zip(y, rows, strict=True):
        if r is None:
            ax.text(left, yi, label, fontsize=8.5, fontweight="bold", va="center")
            ax.text(right, yi, note, fontsize=7.5, va="center", ha="right", color="0.3")
            continue
        name = f"{label.strip()} (n = {r['n']})"
        ax.text(left + (0.04 * (hi - lo) if label.startswith("  ") else 0), yi, name, fontsize=8, va="center", ha="left")
        if r["risk_difference"] is None:
            ax.text((lo + hi) / 2, yi, "too few patients", fontsize=7.5, va="center", ha="center", color="0.4")
            continue
        ax.hlines(yi, 100 * r["lower"], 100 * r["upper"], color="#333333", lw=1.6)
        size = 4 + 6 * math.sqrt(r["n"] / max(subgroups["overall"]["n"], 1))
        ax.plot(100 * r["risk_difference"], yi, "s", color="#1b6ca8", ms=size)
        ax.text(right, yi, f"{100 * r['risk_difference']:+.0f} ({100 * r['lower']:+.0f} to {100 * r['upper']:+.0f})",
                fontsize=7.5, va="center", ha="right")
    ax.set_yticks([])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlim(left, right)
    ticks = np.arange(math.ceil(lo / 20) * 20, hi + 1e-9, 20)
    ax.set_xticks(ticks)
    ax.set_xlabel("responder risk difference, percentage points (95% CI)", fontsize=9)
    ax.set_title(title, fontsize=10)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.spines["bottom"].set_bounds(lo, hi)
    fig.tight_layout()
    return fig


def png_bytes(fig, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()
