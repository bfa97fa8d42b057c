"""Report figures: shap's own plots fed with :func:`core.runtime.explain.explain_patients` numbers, and small pictures.

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

from core.spec import inline

# pyplot keeps one current figure per process; shap's plots draw on it, and the
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
        # shap draws the feature's distribution as grey bars behind the points: say what they are.
        ax.text(0.99, 0.02, "grey bars: how many patients have each value", transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="0.4")
        return fig


PHONE_WIDTH = 3.7  # inches: 370 CSS px at 100 px per inch, the width of a 390 px phone screen less margins
PATIENT_DPI = 200  # drawn at twice the displayed size, so the picture stays sharp on a phone's dense screen
DISPLAY_WIDTH = int(PHONE_WIDTH * 100)  # the <img width> the patient report gives its pictures


def _wrap(text: str, width: int = 24) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:3]) or text


def drivers_figure(drivers: list[tuple[str, float]], remainder: tuple[int, float] | None = None):
    """The patient's drivers of the benefit as bars from zero, in percentage points (a bar list, not a waterfall).

    The axis is the benefit's own scale centred on no change and at least
    +-5 percentage points wide, so a bar's length is what it is on the scale
    the clinician reads the benefit in: small contributions look small.
    ``remainder`` pools the inputs not shown (count, total contribution).
    """
    rows = [(_wrap(label), 100 * value) for label, value in drivers]
    if remainder is not None and remainder[0] > 0:
        count, total = remainder
        rows.append((f"{count} other input{'s' * (count != 1)}", 100 * total))
    with PLOT_LOCK:
        height = 0.5 + 0.42 * len(rows) + 0.16 * sum(label.count("\n") for label, _ in rows)
        fig, ax = plt.subplots(figsize=(PHONE_WIDTH, height))
        values = [v for _, v in rows]
        span = max(5.0, 1.25 * max(abs(v) for v in values))
        y = np.arange(len(rows))
        ax.barh(y, values, color=[TREATED if v >= 0 else CONTROL for v in values], height=0.62)
        ax.axvline(0, color="0.3", lw=1)
        for yi, v in zip(y, values, strict=True):
            ax.text(v + (0.02 if v >= 0 else -0.02) * span, yi, f"{v:+.1f}", va="center", ha="left" if v >= 0 else "right", fontsize=8.5)
        ax.set_yticks(y, [label for label, _ in rows], fontsize=8.5)
        ax.invert_yaxis()
        ax.set_xlim(-span * 1.18, span * 1.18)
        ax.set_xlabel("percentage points", fontsize=8.5)
        ax.tick_params(axis="x", labelsize=8)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        ax.tick_params(axis="y", length=0)
        fig.tight_layout(pad=0.4)
        return fig


def probability_figure(p_treated: float, p_control: float, labels: tuple[str, str], quantity: str = "chance of a meaningful response"):
    """Both arms' numbers as bars (percent), sized for a phone: the chance of response, or an event's risk (``quantity``)."""
    with PLOT_LOCK:
        fig, ax = plt.subplots(figsize=(PHONE_WIDTH, 1.45))
        values = [100 * p_treated, 100 * p_control]
        bars = ax.barh([0, 1], values, color=[TREATED, CONTROL], height=0.6)
        for bar, value in zip(bars, values, strict=True):
            ax.text(min(value + 2, 84), bar.get_y() + bar.get_height() / 2, f"{value:.0f}%", va="center", fontsize=9)
        ax.set_yticks([0, 1], [_wrap(labels[0], 16), _wrap(labels[1], 16)], fontsize=8.5)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel(_shorten(f"{quantity} (%)", 60), fontsize=8.5)
        ax.tick_params(axis="x", labelsize=8)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        fig.tight_layout(pad=0.4)
        return fig


def benefit_figure(benefit: float, lower: float, upper: float, labels: tuple[str, str], level: float, difference: str = "benefit"):
    """The benefit as a point with its interval on a percentage-point axis centred on no difference, sized for a phone."""
    with PLOT_LOCK:
        fig, ax = plt.subplots(figsize=(PHONE_WIDTH, 1.45))
        lo, mid, hi = 100 * lower, 100 * benefit, 100 * upper
        span = max(30.0, abs(lo) + 5, abs(hi) + 5)
        ax.axvline(0, color="0.4", lw=1)
        ax.hlines(0, lo, hi, color="#333333", lw=3)
        ax.plot([mid], [0], "o", color=TREATED if mid >= 0 else CONTROL, ms=10, zorder=3)
        ax.set_xlim(-span, span)
        ax.set_ylim(-1, 1)
        ax.set_yticks([])
        ax.set_xlabel(f"{difference}, percentage points ({level:.0%} interval)", fontsize=8.5)
        ax.tick_params(axis="x", labelsize=8)
        ax.text(-span * 0.97, 0.62, f"favours {_shorten(inline(labels[1]), 18)}", fontsize=7.5, color="0.35")
        ax.text(span * 0.97, 0.62, f"favours {_shorten(inline(labels[0]), 18)}", fontsize=7.5, color="0.35", ha="right")
        ax.text(mid, -0.66, f"{mid:+.0f} ({lo:+.0f} to {hi:+.0f})", ha="center", fontsize=9)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        fig.tight_layout(pad=0.4)
        return fig
