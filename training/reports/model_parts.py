"""The models' part of the cohort report: the candidate table (metrics with bootstrap intervals, evidence), the
champion's SHAP contributions on the training cohort and the out-of-fold predictions behind the curves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.candidates import candidate_label
from core.runtime.artefact import ResponderModel
from core.runtime.explain import explain_patients
from training.answer import served_model_problems
from training.evaluation import same_for_everyone
from training.reports.analysis import metric_intervals
from training.reports.numbers import _num

if TYPE_CHECKING:
    from training.results import OutcomeResult

MAX_SHAP_ROWS = 1000  # a beeswarm of more points adds nothing and explain time grows linearly (registries of 1e5 rows)
METRIC_BOOTSTRAP = 1000  # draws for the AUC and Brier intervals


# Models: candidates, evidence, SHAP ----------------------------------------------------------------
def _floor_only(result: OutcomeResult, name: str) -> bool:
    """Whether a row's predictions are the arm-only floor's: one probability per arm, no ranking to judge."""
    return same_for_everyone(name, result.cv.selections)


def candidate_rows(
    result: OutcomeResult, headline: list[str], arm_names: tuple[str, str] = ("treated", "control"), seed: int = 0, level: float = 0.95
) -> list[dict[str, Any]]:
    """One row per candidate (and the nested selection procedure): out-of-fold metrics as logged, intervals, flags.

    AUC and Brier intervals are percentile bootstrap intervals over the
    out-of-fold predictions (:func:`training.reports.analysis.metric_intervals`).
    A row is flagged when it fails the checks a served model must pass
    (:func:`training.answer.served_model_problems`: in an arm, the out-of-fold
    AUC's upper limit below 0.5 or the calibration slope's upper limit below 0),
    so a flagged candidate never serves and a served one is never flagged;
    except the arm-only floor, which gives every patient of an arm the same
    probability by design: its AUC and slope only reflect fold-to-fold noise.
    """
    summary = result.cv.summary
    names = [str(name) for name in summary.index]
    intervals = metric_intervals(result.cv, result.data, [n for n in names if n in result.cv.oof], METRIC_BOOTSTRAP, seed)
    rows = []
    for name in names:
        metrics = {k: _num(summary.loc[name, k]) for k in headline if k in summary.columns}
        floor = _floor_only(result, name)
        rows.append(
            {
                "name": name,
                "label": candidate_label(name) if name in result.cv.selections else "Nested selection (inner-loop choice per outer fold)",
                "times_selected": result.cv.selections.get(name),
                "is_procedure": name == result.procedure,
                "is_champion": name == result.champion,
                "metrics": metrics,
                "intervals": intervals.get(name, {}),
                "floor_only": floor,
                "flags": [] if floor or name not in result.cv.oof else served_model_problems(result.cv, result.data.y, result.data.t, name, level, arm_names),
            }
        )
    return rows


def shap_cohort(model: ResponderModel, X: pd.DataFrame, seed: int) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """SHAP contributions of the champion on the training cohort, through :func:`explain_patients` only.

    Returns feature metadata and three frames (rows = patients, columns = the
    pipeline's feature names): contributions to the benefit, contributions to
    P(responder | naltrexone), and the engineered feature values; plus base
    values and outputs per row.
    """
    rows = X.reset_index(drop=True)
    subsampled = len(rows) > MAX_SHAP_ROWS
    if subsampled:
        rows = rows.sample(MAX_SHAP_ROWS, random_state=seed).reset_index(drop=True)
    info = model.feature_info()
    names = list(info)
    index = {name: j for j, name in enumerate(names)}
    explanations = explain_patients(model, rows)
    benefit = np.zeros((len(rows), len(names)))
    treated = np.zeros((len(rows), len(names)))
    bases = np.zeros((len(rows), 4))
    for i, explanation in enumerate(explanations):
        for matrix, output in ((benefit, explanation.benefit), (treated, explanation.p_response_treated)):
            for name, value in output.features.items():
                matrix[i, index[name]] = value
        bases[i] = (
            explanation.benefit.base_value,
            explanation.benefit.prediction,
            explanation.p_response_treated.base_value,
            explanation.p_response_treated.prediction,
        )
    features = model.features(rows).reset_index(drop=True)[names].astype(float)
    mean_abs = np.abs(benefit).mean(axis=0)

    def top(group: str) -> str | None:
        candidates = [(mean_abs[index[n]], n) for n, meta in info.items() if meta.group == group]
        best = max(candidates, default=(0.0, None))
        return best[1] if best[0] > 0 else None

    meta = {
        "n": len(rows),
        "n_cohort": len(X),
        "subsampled": subsampled,
        "features": names,
        "labels": [info[n].short for n in names],
        "groups": [info[n].group for n in names],
        "units": [info[n].unit for n in names],
        "descriptions": [info[n].description for n in names],
        "mean_abs_benefit": [_num(v) for v in mean_abs],
        "mean_abs_p_treated": [_num(v) for v in np.abs(treated).mean(axis=0)],
        "top_inflammation": top("inflammation"),
        "top_autoantibody": top("autoantibody"),
        "max_additivity_error": _num(
            max(max(e.benefit.additivity_error, e.p_response_treated.additivity_error) for e in explanations) if explanations else 0.0
        ),
    }
    parts = {
        "shap_benefit": pd.DataFrame(benefit, columns=names),
        "shap_p_treated": pd.DataFrame(treated, columns=names),
        "features": features,
        "base": pd.DataFrame(bases, columns=["base_benefit", "benefit", "base_p_treated", "p_treated"]),
    }
    return meta, parts


def oof_frame(result: OutcomeResult) -> pd.DataFrame:
    """The champion's out-of-fold predictions (averaged over repeats), as logged in evaluation/oof_predictions.parquet."""
    cv, data = result.cv, result.data
    p = cv.oof[result.procedure].mean(axis=0)
    return pd.DataFrame(
        {"t": data.t, "y": data.y, "p1": p[:, 0], "p0": p[:, 1], "benefit": cv.mean_benefit(result.procedure), "psi": cv.psi.mean(axis=0)}
    )


def _verdict(evidence: bool, tested: bool) -> str:
    if not tested:
        return "Effect modification not tested"
    return "Evidence of effect modification" if evidence else "No reliable evidence of effect modification"
