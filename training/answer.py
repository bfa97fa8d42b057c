"""Which answer a patient gets for one outcome, and which model gives it (see :mod:`core.labelling`).

The order (DESIGN.md section 5):

1. **Effect modification established** (the heterogeneity test rejects after
   Holm's correction): the conditional average benefit, from the champion the
   selection criterion chose (BCF by default below 2,000 patients). If the criterion chose the
   floor or the risk model, or its choice fails the checks below, the eligible
   candidate with the lowest out-of-fold log-loss among those whose benefit
   may vary beyond baseline risk serves instead: when the test has found
   effect modification and such a candidate is not worse than the floor, the
   floor does not serve, and PATH's constant relative effect never stands in
   for a conditional answer.
2. Otherwise, when the PATH prognostic model discriminates out of fold (the
   lower limit of its c-statistic's interval above 0.5): the risk-based
   benefit, from the risk model.
3. Otherwise the trial average, from the arm-only floor.

**Served models earn it.** A model whose out-of-fold AUC in either arm has
its upper 95% limit below 0.5 (it ranks patients worse than chance), or whose
out-of-fold calibration slope in either arm has its upper 95% limit below 0
(its predictions run the wrong way), never serves: the next answer down does,
and the reason says which check failed. Both checks are inferential alike: in
an arm where the outcome barely depends on the measured values (memory on
placebo in the simulator), every model's slope there is noise around 0 and
often negative, and a point-estimate rule refused every candidate for memory
on a 1,000-patient `strong` trial whose heterogeneity test had rejected. The
checks use the candidate's own out-of-fold predictions, averaged over the
repeats of the nested cross-validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.candidates import CANDIDATES, candidate_label
from core.labelling import AVERAGE, CONDITIONAL, RISK_BASED
from training.evaluation import FLOOR, CVResult
from training.metrics import auc_interval, calibration_slope_interval


@dataclass
class AnswerChoice:
    answer: str
    champion: str
    reason: str
    refused: dict[str, list[str]] = field(default_factory=dict)  # candidate -> failed checks


def served_model_problems(
    cv: CVResult, y: np.ndarray, t: np.ndarray, name: str, level: float = 0.95, arm_names: tuple[str, str] = ("treated", "control")
) -> list[str]:
    """Why ``name`` may not serve (empty when it may): it ranks worse than chance or runs backwards, beyond chance.

    Per arm, on its out-of-fold predictions averaged over the repeats: the AUC's upper ``level`` limit below 0.5,
    or the calibration slope's upper ``level`` limit below 0. The cohort report flags the same rows with the same
    phrases (``arm_names``: how the arms are named there).
    """
    if name == FLOOR:
        return []
    p1 = np.nanmean(cv.oof[name][:, :, 0], axis=0)
    p0 = np.nanmean(cv.oof[name][:, :, 1], axis=0)
    t = np.asarray(t).astype(bool)
    problems = []
    for arm, rows, p in ((arm_names[0], t, p1), (arm_names[1], ~t, p0)):
        auc, _, high = auc_interval(y[rows], p[rows], level)
        if np.isfinite(high) and high < 0.5:
            problems.append(f"out-of-fold AUC in the {arm} arm {auc:.2f} (upper {100 * level:.0f}% limit {high:.2f} < 0.5)")
        slope, _, high = calibration_slope_interval(y[rows], p[rows], level)
        if np.isfinite(high) and high < 0:
            problems.append(f"negative out-of-fold calibration slope in the {arm} arm {slope:.2f} (upper {100 * level:.0f}% limit {high:.2f} < 0)")
    return problems


def choose_answer(cv: CVResult, y: np.ndarray, t: np.ndarray, evidence: bool, tested: bool, discriminates: bool, enabled: list[str], level: float = 0.95) -> AnswerChoice:
    """The answer and its model for one outcome (see the module docstring)."""
    refused: dict[str, list[str]] = {}

    def fit_to_serve(name: str) -> bool:
        problems = served_model_problems(cv, y, t, name, level)
        if problems:
            refused[name] = problems
        return not problems

    notes = []
    if evidence:
        # Only a model whose benefit may vary beyond baseline risk gives the conditional answer (not the floor, not
        # PATH's risk model: with effect modification established, its constant relative effect is the wrong model).
        others = [c for c in cv.eligible if CANDIDATES[c].models_effect_modification]
        order = [cv.final_choice] if cv.final_choice in others else []
        order += sorted((c for c in others if c not in order), key=lambda c: cv.metric(c, "log_loss"))
        for name in order:
            if fit_to_serve(name):
                how = "the selection criterion's choice" if name == cv.final_choice else "the eligible candidate with the lowest out-of-fold log-loss"
                model = candidate_label(name).split(" (")[0]
                return AnswerChoice(CONDITIONAL, name, f"effect modification is established, so the {model} ({how}) gives the conditional average benefit", refused)
        notes.append(
            "effect modification is established, but no candidate that models it predicted responders "
            "at least as well as the floor out of fold" + (" and passed the served-model checks" if refused else "")
        )
    if discriminates and "risk_model" in enabled and fit_to_serve("risk_model"):
        lead = "; ".join(notes) + "; so " if notes else ""
        return AnswerChoice(
            RISK_BASED, "risk_model",
            f"{lead}the prognostic model discriminates baseline risk out of fold, so the risk-based benefit serves (the trial's constant odds ratio at the patient's predicted risk)",
            refused,
        )
    if not notes:
        notes.append("effect modification is not established" if tested else "effect modification was not tested")
    why = "the prognostic model does not discriminate baseline risk out of fold" if not discriminates else (
        "the risk model failed the served-model checks" if "risk_model" in refused else "the risk model is not enabled"
    )
    return AnswerChoice(AVERAGE, FLOOR, f"{'; '.join(notes)} and {why}, so every patient gets the trial's average answer", refused)
