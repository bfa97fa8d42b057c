"""Report figures: shap's own plots fed with :func:`training.explain.explain_patients` numbers, and small pictures.

Every figure is a headless matplotlib figure turned into an embedded PNG
(``data:`` URI), so a report is one file that opens without a server or the
network. SHAP values are shown in percentage points (probability x 100): the
unit clinicians read the predictions in.
"""

from __future__ import annotations

import base64
import io
import threading

import matplotlib

matplotlib.use("Agg")  # headless: training jobs, servers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# pyplot keeps one current figure per process; shap's waterfall draws on it, and the
# REST API renders reports from several threads at once.
PLOT_LOCK = threading.RLock()

DPI = 100
TREATED = "#1b6ca8"
CONTROL = "#c75b12"


def data_uri(fig, dpi: int = DPI, tight: bool = True) -> str:
    """PNG ``data:`` URI of a figure (closes it); no metadata chunks, so nothing but pixels is embedded.

    ``tight`` crops to the drawn content (shap's plots place labels outside the
    figure box); it draws the figure twice, so laid-out figures skip it.
    """
    buffer = io.BytesIO()
    with PLOT_LOCK:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight" if tight else None, metadata={"Software": None})
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _shorten(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def explanation(values: np.ndarray, base: np.ndarray | float, data: np.ndarray | None, names: list[str]):
    """A ``shap.Explanation`` in percentage points from explain_patients' probability-point contributions."""
    import shap

    return shap.Explanation(
        values=np.asarray(values, float) * 100,
        base_values=np.asarray(base, float) * 100,
        data=None if data is None else np.asarray(data, float),
        feature_names=[_shorten(n) for n in names],
    )


def beeswarm_figure(expl, title: str, max_display: int = 12):
    """SHAP summary (beeswarm) of a cohort explanation: the top features only, no pooled remainder row."""
    import shap

    with PLOT_LOCK:
        n_rows = min(max_display, expl.values.shape[1])
        fig, ax = plt.subplots(figsize=(9, 0.42 * n_rows + 1.3))
        shap.plots.beeswarm(
            expl, max_display=max_display, ax=ax, show=False, plot_size=None, s=12, group_remaining_features=False
        )
        ax.set_xlabel("contribution (percentage points)", fontsize=11)
        ax.set_title(title, fontsize=12)
        return fig


def bar_figure(expl, title: str, max_display: int = 10):
    """Mean absolute SHAP contribution of the top features.

    Sliced to the top features first: shap's own remainder bar ("Sum of N other
    features") pools dozens of features and would dwarf the ones shown.
    """
    import shap

    with PLOT_LOCK:
        top = np.argsort(-np.abs(expl.values).mean(axis=0), kind="stable")[:max_display]
        fig, ax = plt.subplots(figsize=(9, 0.38 * len(top) + 1.2))
        shap.plots.bar(expl[:, top], max_display=max_display, ax=ax, show=False)
        ax.set_xlabel("mean |contribution| (percentage points)", fontsize=11)
        ax.set_title(title, fontsize=12)
        return fig


def dependence_figure(expl_column, title: str, xlabel: str):
    """SHAP dependence (scatter) plot of one feature's contribution against its value."""
    import shap

    with PLOT_LOCK:
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        shap.plots.scatter(expl_column, ax=ax, show=False, dot_size=12)
        ax.axhline(0, color="0.6", lw=0.8, ls="--")
        ax.set_ylabel("contribution to benefit (pp)", fontsize=9)
        ax.set_xlabel(_shorten(xlabel, 60), fontsize=9)
        ax.set_title(title, fontsize=10)
        return fig


def waterfall_figure(expl_row, max_display: int = 8):
    """SHAP waterfall of one patient's prediction (shap draws on the current pyplot figure)."""
    import shap

    with PLOT_LOCK:
        fig = plt.figure()  # now the current figure, which the waterfall draws on
        shap.plots.waterfall(expl_row, max_display=max_display, show=False)
        for text in fig.axes[0].get_yticklabels():
            text.set_fontsize(10)
        return fig


def probability_figure(p_treated: float, p_control: float, labels: tuple[str, str]):
    """Both arms' chance of a meaningful response as bars (percent)."""
    with PLOT_LOCK:
        fig, ax = plt.subplots(figsize=(4.4, 1.7))
        values = [100 * p_treated, 100 * p_control]
        bars = ax.barh([0, 1], values, color=[TREATED, CONTROL], height=0.6)
        for bar, value in zip(bars, values, strict=True):
            ax.text(min(value + 2, 86), bar.get_y() + bar.get_height() / 2, f"{value:.0f}%", va="center", fontsize=10)
        ax.set_yticks([0, 1], [_shorten(labels[0], 22), _shorten(labels[1], 22)], fontsize=10)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("chance of a meaningful response (%)", fontsize=9)
        ax.tick_params(axis="x", labelsize=9)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        fig.tight_layout()
        return fig


def benefit_figure(benefit: float, lower: float, upper: float, labels: tuple[str, str], level: float):
    """The benefit as a point with its interval on a percentage-point axis centred on no difference."""
    with PLOT_LOCK:
        fig, ax = plt.subplots(figsize=(4.4, 1.7))
        lo, mid, hi = 100 * lower, 100 * benefit, 100 * upper
        span = max(30.0, abs(lo) + 5, abs(hi) + 5)
        ax.axvline(0, color="0.4", lw=1)
        ax.hlines(0, lo, hi, color="#333333", lw=3)
        ax.plot([mid], [0], "o", color=TREATED if mid >= 0 else CONTROL, ms=11, zorder=3)
        ax.set_xlim(-span, span)
        ax.set_ylim(-1, 1)
        ax.set_yticks([])
        ax.set_xlabel(f"benefit, percentage points ({level:.0%} interval)", fontsize=9)
        ax.tick_params(axis="x", labelsize=9)
        ax.text(-span * 0.97, 0.62, f"favours {_shorten(labels[1].lower(), 20)}", fontsize=8, color="0.35")
        ax.text(span * 0.97, 0.62, f"favours {_shorten(labels[0].lower(), 20)}", fontsize=8, color="0.35", ha="right")
        ax.text(mid, -0.62, f"{mid:+.0f} ({lo:+.0f} to {hi:+.0f})", ha="center", fontsize=10)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        fig.tight_layout()
        return fig
