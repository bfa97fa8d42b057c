"""Headless matplotlib figures shared by training artifacts and the reports."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # headless: training jobs, servers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from training import metrics as M  # noqa: E402

ARM_COLOURS = {"treated": "#1b6ca8", "control": "#c75b12"}


def calibration_figure(y: np.ndarray, t: np.ndarray, p1: np.ndarray, p0: np.ndarray, labels: tuple[str, str], title: str):
    """Observed vs predicted response by quantile group, one panel per arm (out-of-fold predictions)."""
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
        intercept, slope = M.calibration(yr, pr)
        ax.set_title(f"{label}\nintercept {intercept:+.2f}, slope {slope:.2f}", fontsize=9)
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
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        rows = rng.integers(0, n, n)
        c = M.uplift_curves(tau_hat[rows], t[rows], y[rows])
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


def png_bytes(fig, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()
