"""The out-of-fold evaluation figures of one outcome: calibration, Qini, TOC, calibration for benefit, decision curve, the test's null.

The training job draws them once, in its executor's workers (one task per
figure, :func:`draw_evaluation_figures`), logs them as each outcome run's
``plots/<key>.png`` and embeds the same images in the cohort report; the
report re-draws them from MLflow alone with the same builders. This module
imports matplotlib, NumPy and pandas only (no MLflow, no report templates),
so a worker that draws a figure loads little.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.reports import figures
from training import plots
from training.reports import analysis

DECISION_THRESHOLDS = np.linspace(0.0, 0.30, 61)  # smallest benefit worth treating for: 0 to 30 percentage points


def evaluation_steps(
    outcome: str, oof, evidence: dict, labels: tuple[str, str], seed: int, metrics: dict | None = None
) -> list[tuple[str, Callable]]:
    """(figure key, builder) for the out-of-fold evaluation figures of one outcome.

    The training job draws these once, logs them as the outcome run's
    ``plots/<key>.png`` and embeds the same images in the report. ``metrics``
    (the logged out-of-fold metrics of the champion procedure) puts the logged
    calibration intercepts and slopes on the calibration figure.
    """
    t, y = oof["t"].to_numpy(), oof["y"].to_numpy()
    benefit, psi = oof["benefit"].to_numpy(), oof["psi"].to_numpy()
    stats = None
    if metrics is not None:
        stats = {}
        for arm in ("treated", "control"):
            pair = (metrics.get(f"calibration_intercept_{arm}"), metrics.get(f"calibration_slope_{arm}"))
            if all(v is not None and math.isfinite(float(v)) for v in pair):
                stats[arm] = (float(pair[0]), float(pair[1]))

    def calibration():
        return plots.calibration_figure(
            y,
            t,
            oof["p1"].to_numpy(),
            oof["p0"].to_numpy(),
            labels,
            f"{outcome}: calibration of the served model (out of fold)",
            stats,
        )

    def qini():
        return plots.uplift_figure(benefit, t, y, f"{outcome}: Qini curve (out of fold)", seed=seed)

    def toc():
        grid = np.linspace(max(0.05, 1 / len(psi)), 1, 60)
        curve, band = analysis.toc_band(benefit, psi, grid, seed=seed)
        return plots.toc_figure(curve, band, grid, f"{outcome}: TOC curve (out of fold)")

    line = None  # the logged calibration line (training.metrics.benefit_calibration_line), drawn where it has a slope
    slope = (metrics or {}).get("benefit_calibration_slope")
    if slope is not None and math.isfinite(float(slope)):
        line = (float(slope), float(np.mean(benefit)), float(np.mean(psi)))

    def benefit_calibration():
        rows = analysis.benefit_calibration(benefit, t, y)
        return plots.benefit_calibration_figure(rows, f"{outcome}: calibration for benefit (out of fold)", line)

    def decision():
        curves = analysis.decision_curve(benefit, psi, DECISION_THRESHOLDS)
        return plots.decision_curve_figure(curves, f"{outcome}: decision curve (out of fold)", labels)

    def permutation():
        return plots.permutation_figure(
            np.asarray(evidence["null"]),
            evidence["statistic"],
            evidence["p_value"],
            f"{outcome}: permutation test",
            evidence.get("statistic_label", "best Qini-weighted RATE over candidates"),
        )

    steps: list[tuple[str, Callable]] = [
        ("calibration", calibration),
        ("qini", qini),
        ("toc", toc),
        ("benefit_calibration", benefit_calibration),
        ("decision_curve", decision),
    ]
    if evidence["tested"] and len(evidence["null"]):  # a split-sample test has no null distribution to draw
        steps.append(("permutation", permutation))
    return steps


@dataclass(frozen=True)
class EvaluationInputs:
    """What one outcome's evaluation figures are drawn from (the arguments of :func:`evaluation_steps`)."""

    outcome: str
    oof: pd.DataFrame
    evidence: dict
    labels: tuple[str, str]
    seed: int
    metrics: dict | None = None

    def steps(self) -> list[tuple[str, Callable]]:
        return evaluation_steps(self.outcome, self.oof, self.evidence, self.labels, self.seed, self.metrics)


def _draw(task: tuple[int, str], shared: Sequence[EvaluationInputs]) -> str:
    index, key = task
    build = dict(shared[index].steps())[key]
    return figures.data_uri(build())


def draw_evaluation_figures(inputs: Sequence[EvaluationInputs], executor: Any = None) -> list[dict[str, str]]:
    """Every outcome's evaluation figures (figure key -> PNG ``data:`` URI, per item of ``inputs``), one task per figure.

    With an executor the figures are drawn in its workers, in parallel (the
    images are the same as drawn here: the same builders on the same numbers).
    """
    tasks = [(i, key) for i, item in enumerate(inputs) for key, _ in item.steps()]
    if executor is None:
        uris = [_draw(task, inputs) for task in tasks]
    else:
        uris = executor.map(_draw, tasks, desc="evaluation figures", shared=list(inputs))
    drawn: list[dict[str, str]] = [{} for _ in inputs]
    for (i, key), uri in zip(tasks, uris, strict=True):
        drawn[i][key] = uri
    return drawn
