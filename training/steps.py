"""The steps of a fit, shared by the library API (:mod:`training.estimator`) and the job (:mod:`training.train`).

:func:`fit_trial` runs them in order on a validated frame: per outcome the
labels, nested cross-validation, the risk-based (PATH) analysis and the
heterogeneity test; then the sensitivity analyses, Holm across every test, the
answer per outcome and the final fits with their intervals. Nothing here
touches MLflow: the job tracks, registers and reports the fitted results after.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.candidates import BCF, CANDIDATES, BenefitCandidate, BootstrapEnsemble, candidate_label, make_candidate
from core.candidates.ensemble import describe_refits
from core.config import TrainConfig
from core.data import model_inputs
from core.effects import AverageEffect, adjust, ancova, risk_difference
from core.labelling import CONDITIONAL, Wording, build_policy
from core.labels import LabelCounts, censoring_sensitivity, responder_labels, sensitivity_effects
from core.runtime.artefact import Evidence, ResponderModel
from core.spec import DatasetSpec, inline
from training.answer import choose_answer
from training.diagnostics import bcf_diagnostics, thin_and_measure
from training.evaluation import OutcomeData, cross_validate, features_of, fit_pipeline, parsed_inputs, with_parsed
from training.executor import Executor
from training.heterogeneity import heterogeneity_test
from training.inference import holm
from training.metrics import calibration_error, candidate_disagreement
from training.modifiers import modifier_matrix
from training.path import path_analysis
from training.results import OutcomeResult, _clean, _fmt


def outcome_data(
    frame: pd.DataFrame, spec: DatasetSpec, outcome: str, config: TrainConfig, parsed: pd.DataFrame | None = None
) -> tuple[OutcomeData, LabelCounts]:
    """One outcome's patients (those with a label), arms and labels; ``parsed``: the whole frame's
    model inputs already lab-parsed (:func:`training.evaluation.parsed_inputs`), row for row."""
    labels, counts = responder_labels(
        frame, spec.outcomes[outcome], config.responder_rules.get(outcome), config.missing_followup
    )
    keep = labels.notna().to_numpy()
    X = model_inputs(frame, spec).loc[keep].reset_index(drop=True)
    t = spec.arm.is_treated(frame[spec.arm.column])[keep].astype(int)
    y = labels.to_numpy()[keep].astype(int)
    rows = parsed.loc[keep].reset_index(drop=True) if parsed is not None else None
    return OutcomeData(X, t, y, spec.arm.treated_fraction, rows), counts


def average_effect(frame: pd.DataFrame, spec: DatasetSpec, outcome: str, config: TrainConfig) -> AverageEffect:
    """The outcome's responder risk difference under the rule and missing-follow-up policy it is trained with."""
    labels, counts = responder_labels(frame, spec.outcomes[outcome], config.responder_rules.get(outcome), config.missing_followup)
    treated = spec.arm.is_treated(frame[spec.arm.column])
    effect = risk_difference(outcome, counts.rule, counts.missing_policy, labels.to_numpy(dtype=float), treated)
    o = spec.outcomes[outcome]
    if o.kind == "score" and o.baseline in frame.columns and o.followup in frame.columns:
        effect.ancova = ancova(
            pd.to_numeric(frame[o.baseline], errors="coerce").to_numpy(dtype=float),
            pd.to_numeric(frame[o.followup], errors="coerce").to_numpy(dtype=float),
            treated,
        )
        effect.ancova.unit = o.unit
    return effect



# Final fits in the worker pool -------------------------------------------------------------------------
@dataclass
class FinalFits:
    """One outcome's served parts, fitted before the champion is assembled (:func:`final_fits`)."""

    pipeline: Any
    F: pd.DataFrame
    candidate: BenefitCandidate
    bootstrap: list[BenefitCandidate] | None  # refits for the interval (candidates without posterior draws)


@dataclass(frozen=True)
class _FinalShared:
    data: dict[str, tuple[pd.DataFrame, np.ndarray, np.ndarray, float]]  # outcome -> (F, t, y, treated fraction)
    champions: dict[str, str]
    configs: dict[str, TrainConfig]


def make_ensemble(candidate: BenefitCandidate, config: TrainConfig) -> BootstrapEnsemble:
    """The served interval's bootstrap ensemble under ``config`` (resolved for the trial's size)."""
    iv = config.intervals
    return BootstrapEnsemble(candidate, iv.bootstrap_models, iv.level, config.seed, iv.bootstrap_penalty, iv.bootstrap_fraction)


def _final_task(task: tuple, shared: _FinalShared):
    kind, outcome, payload = task
    F, t, y, e = shared.data[outcome]
    config, name = shared.configs[outcome], shared.champions[outcome]
    if kind == "champion":
        return make_candidate(name, config.candidates, e, config.seed, final=True).fit(F, t, y)
    templates, resamples = payload
    return [BootstrapEnsemble.refit(templates[k], F, t, y, rows, seed) for rows, seed, k in resamples]


def final_fits(results: dict[str, OutcomeResult], spec: DatasetSpec, config: TrainConfig, executor: Executor) -> dict[str, FinalFits]:
    """Every outcome's champion fit and bootstrap refits, in the worker pool.

    The same fits, seeds and resamples as :func:`fit_champion` makes by itself
    (the resamples are drawn here, in order), so the served models are identical.
    Two passes: the champions (whose chosen penalty the refits may keep), then
    the bootstrap refits of every outcome together.
    """
    shared_data, configs, pipelines = {}, {}, {}
    for outcome, result in results.items():
        own = getattr(result, "spec", None) or spec  # a comparison's two-arm spec (three or more arms)
        data = with_parsed(result.data, own)
        pipelines[outcome], F = fit_pipeline(own, data.X, data.parsed)
        configs[outcome] = config.resolved(len(data.y))
        shared_data[outcome] = (F, data.t, data.y, data.treated_fraction)
    shared = _FinalShared(shared_data, {k: r.champion for k, r in results.items()}, configs)
    champions = dict(zip(results, executor.map(_final_task, [("champion", o, None) for o in results], desc="final fits: champions", shared=shared), strict=True))
    tasks: list[tuple] = []
    workers = max(1, getattr(executor, "workers", 2))
    for outcome, candidate in champions.items():
        if not candidate.needs_refits:
            continue
        ensemble = make_ensemble(candidate, configs[outcome])
        resamples, templates = ensemble.resamples(results[outcome].data.t), ensemble.templates()
        chunks = max(1, min(len(resamples), 2 * workers))
        tasks += [("bootstrap", outcome, (templates, resamples[i::chunks])) for i in range(chunks)]
    answers = executor.map(_final_task, tasks, desc="final fits: bootstrap refits", shared=shared) if tasks else []
    fits = {}
    for outcome in results:
        chunks = [models for (kind, o, _), models in zip(tasks, answers, strict=True) if kind == "bootstrap" and o == outcome]
        bootstrap = None
        if chunks:
            # Back into resample order: chunk i holds resamples i, i + k, i + 2k, ... (k chunks)
            bootstrap = [None] * sum(len(models) for models in chunks)
            for i, models in enumerate(chunks):
                bootstrap[i :: len(chunks)] = models
        fits[outcome] = FinalFits(pipelines[outcome], shared_data[outcome][0], champions[outcome], bootstrap)
    return fits


def evidence_sentence(result: OutcomeResult, spec: DatasetSpec) -> str:
    """The effect-modification verdict in one sentence (it starts every patient-label reason)."""
    name = inline(spec.outcomes[result.outcome].label.split(" (")[0])
    if not result.permutation.tested:
        return f"Whether the effect on {name} differs between patients was not tested."
    p = _fmt(_clean(result.p_adjusted))
    beyond = " beyond what their baseline risk explains" if result.permutation.method in ("imputed_randomisation", "held_out") else ""
    if result.evidence:
        return f"There is evidence that the effect on {name} differs between patients{beyond} (Holm-adjusted p = {p})."
    return f"There is no reliable evidence that the effect on {name} differs between patients{beyond} (Holm-adjusted p = {p})."


def fit_champion(
    result: OutcomeResult,
    spec: DatasetSpec,
    config: TrainConfig,
    evidence: Evidence,
    provenance: dict[str, Any] | None = None,
    fitted: FinalFits | None = None,
) -> ResponderModel:
    """Refit the chosen candidate on all patients with its interval machinery and fix the answer and label rule.

    ``fitted``: the parts :func:`final_fits` already made in the worker pool (else they are fitted here).
    """
    data = result.data
    config = config.resolved(len(data.y))
    if fitted is None:
        data = with_parsed(data, spec)
        pipeline, F = fit_pipeline(spec, data.X, data.parsed)
        candidate = make_candidate(result.champion, config.candidates, data.treated_fraction, config.seed, final=True).fit(F, data.t, data.y)
        bootstrap = None
    else:
        pipeline, F, candidate, bootstrap = fitted.pipeline, fitted.F, fitted.candidate, fitted.bootstrap
    ensemble = None
    if candidate.needs_refits:
        ensemble = make_ensemble(candidate, config).fit(F, data.t, data.y, models=bootstrap)
    allowance = calibration_allowance(result, config)
    model = ResponderModel(
        spec=spec,
        outcome=result.outcome,
        pipeline=pipeline,
        candidate=candidate,
        ensemble=ensemble,
        label_policy=None,  # type: ignore[arg-type]  # fitted below
        evidence=evidence,
        interval_level=config.intervals.level,
        average_effect=result.average_effect.to_dict() if result.average_effect is not None else {},
        calibration_allowance=allowance["sd"] if allowance is not None else 0.0,
        metadata={
            "candidate_label": candidate_label(result.champion),
            "reason": result.reason,
            "responder_rule": result.counts.rule,
            "n_train": len(data.y),
            "n_responders": int(data.y.sum()),
            "answer": result.answer,
            "refused": result.refused,  # candidates that failed the served-model checks, with the failed checks
            "path": result.path.to_dict() if result.path is not None else None,
            # Convergence of the served posterior (several chains); None for models without MCMC draws.
            "bcf_diagnostics": _bcf_diagnostics(candidate, F, config) if candidate.name == BCF else None,
            # The bootstrap interval's refits: how many, at which resample size, and (m-out-of-n) the measured rate.
            "interval_bootstrap": None if ensemble is None else {
                "refits": len(ensemble.models_), "fraction": float(ensemble.fraction), "rate": ensemble.rate_,
                "description": describe_refits(ensemble.n_models, ensemble.fraction),
            },
            # A conditional answer's calibration allowance: how it was measured (None for the other answers).
            "calibration_allowance": allowance,
            # The patient report and the API show a simulated-data banner from this record.
            "data_provenance": dict(provenance or {}),
            # Three or more arms: the comparison this model answers (serving keys and names its answers by it).
            **({"comparison": result.comparison.describe()} if result.spec is not None else {}),
        },
    )
    model.label_policy = build_policy(
        config.labels,
        answer=result.answer,
        answer_reason=result.reason[0].upper() + result.reason[1:] + "." if result.reason else "",
        evidence_sentence=evidence_sentence(result, spec),
        average_effect=result.average_effect,
        level=config.intervals.level,
        interval_kind=candidate.interval_kind,
        treated=spec.treated_inline(),  # inside sentences
        control=spec.control_inline(),
        wording=Wording.of(spec.outcomes[result.outcome]),
        interval_note=f"widened by the model-error allowance of {100 * model.calibration_allowance:.1f} pp" if model.calibration_allowance else "",
    )
    return model


def calibration_allowance(result: OutcomeResult, config: TrainConfig) -> dict[str, Any] | None:
    """A conditional answer's allowance for the served model's error, or None: how it was measured, and its ``sd``.

    Two parts, added in quadrature, both on the cross-validation's outer out-of-fold benefit (averaged over repeats):
    the served candidate's calibration error across ``intervals.calibration_groups`` groups of predicted benefit
    against the DR scores (:func:`training.metrics.calibration_error`), and, with ``intervals.disagreement``, its
    disagreement with the other eligible candidates that model effect modification and see every patient
    (:func:`training.metrics.candidate_disagreement`; BCF above ``candidates.bcf.max_patients`` is fitted on a
    subsample, whose own noise says nothing about the served model). Measured when every group holds at least
    ``intervals.calibration_min_group`` patients; otherwise recorded as not measured, with ``sd`` 0. The other answers'
    intervals are for another estimand (the trial average, the risk-based benefit): None.
    """
    if result.answer != CONDITIONAL:
        return None
    n = len(result.data.y)
    resolved = config.resolved(n)
    iv = resolved.intervals
    groups, smallest = iv.calibration_groups, iv.calibration_min_group
    if groups == 0 or result.champion not in result.cv.oof:
        return {"sd": 0.0, "measured": False, "reason": "not measured (intervals.calibration_groups is 0)"}
    if n < groups * smallest:
        return {
            "sd": 0.0, "measured": False,
            "reason": f"not measured: {n:,} patients make groups of fewer than {smallest} (needs {groups * smallest:,})",
        }
    rivals = disagreement_candidates(result, resolved) if iv.disagreement else []
    try:
        served = result.cv.mean_benefit(result.champion)
        error = calibration_error(served, result.cv.psi.mean(axis=0), groups)
        spread = candidate_disagreement(served, {name: result.cv.mean_benefit(name) for name in rivals})
    except ValueError as problem:  # out-of-fold predictions missing for some patients: nothing measured, said why
        return {"sd": 0.0, "measured": False, "reason": f"not measured: {problem}"}
    sd = float(np.hypot(error["sd"], spread["sd"]))
    across = f"the served model's out-of-fold calibration error across {groups} groups of predicted benefit ({100 * error['sd']:.1f} pp)"
    if not iv.disagreement:
        others = "its disagreement with the other candidates is not counted (intervals.disagreement is off)"
    elif not rivals:
        others = "no other eligible candidate models effect modification on every patient, so no disagreement is counted"
    else:
        names = ", ".join(f"{candidate_label(name)} {100 * v:.1f} pp" for name, v in spread["candidates"].items())
        others = f"its root-mean-square disagreement with the other eligible candidates ({names}; together {100 * spread['sd']:.1f} pp)"
    if sd == 0:
        reason = f"0 pp: {across} is within the groups' own noise and {others}, so nothing is added to the interval"
    else:
        reason = (
            f"SD {100 * sd:.1f} pp, added to each side of the interval in quadrature: {across} and {others}; an error "
            "the model's own interval does not carry"
        )
    return {
        **error, "sd": sd, "calibration_sd": error["sd"], "disagreement_sd": spread["sd"],
        "disagreement": spread["candidates"], "measured": True, "reason": reason,
    }


def disagreement_candidates(result: OutcomeResult, config: TrainConfig) -> list[str]:
    """The eligible candidates, other than the served one, whose disagreement with it counts in the allowance.

    Those that model effect modification (not the floor, not the risk model, whose benefit varies with baseline risk
    only) and are fitted on every patient of a training fold (a subsampled fit disagrees by its own noise).
    """
    n = len(result.data.y)
    outer = n - -(-n // max(int(config.cv.folds), 2))  # the smallest outer training fold
    out = []
    for name in result.cv.eligible:
        if name == result.champion or name not in result.cv.oof or not CANDIDATES[name].models_effect_modification:
            continue
        cap = getattr(getattr(config.candidates, name, None), "max_patients", None)
        if isinstance(cap, int) and cap < outer:
            continue
        out.append(name)
    return out


def _bcf_diagnostics(candidate: BenefitCandidate, F: pd.DataFrame, config: TrainConfig) -> dict[str, Any]:
    """Convergence of the served BCF on all its retained draws, then its thinning for serving (measured)."""
    diagnostics = bcf_diagnostics(candidate, F, config.seed)
    diagnostics["thinning"] = thin_and_measure(candidate, F, config.candidates.bcf.serve_draws, config.intervals.level, config.seed)
    return diagnostics


# The steps of a fit, shared by the job (run_training) and the library API (training.estimator) ------------
def evaluate_outcome(
    data: OutcomeData,
    spec: DatasetSpec,
    config: TrainConfig,
    executor: Executor,
    outcome: str,
    phase: Callable[..., None] | None = None,
) -> tuple[Any, Any, Any]:
    """One outcome's nested cross-validation, risk-based (PATH) analysis and heterogeneity test: (cv, path, test).

    ``phase(label, kind, step=False)`` is told when each step starts (the job's progress and
    timing).
    """
    phase = phase or (lambda *args, **kwargs: None)
    F = features_of(spec, with_parsed(data, spec).parsed)
    if config.evidence.method == "imputed_randomisation" and config.evidence.prespecified:
        modifier_matrix(F, spec.prespecified_modifiers)  # a name the features lack stops the job before its CV, not after
    phase("nested cross-validation", "cv", step=True)
    cv = cross_validate(data, spec, config, executor, desc=f"{outcome}: nested CV")
    phase("risk-based (PATH) analysis", "test")
    path = path_analysis(F, data.t, data.y, config.resolved(len(data.y)))
    phase("heterogeneity test", "test", step=True)
    permutation = heterogeneity_test(data, spec, config, executor, desc=f"{outcome}: heterogeneity test")
    return cv, path, permutation


def _own(result: OutcomeResult, frame: pd.DataFrame, spec: DatasetSpec) -> tuple[pd.DataFrame, DatasetSpec]:
    """The rows and two-arm spec a result was fitted on (its comparison's, with three or more arms)."""
    if result.comparison is None or result.comparison.key is None:
        return frame, spec
    return frame.loc[result.comparison.rows(frame)].reset_index(drop=True), result.comparison.spec


def decide_answers(results: dict[str, OutcomeResult], frame: pd.DataFrame, spec: DatasetSpec, config: TrainConfig) -> None:
    """Holm over the outcomes' tests, the adjusted average effects, and each outcome's answer and champion (in place).

    With three or more arms the family is every comparison x outcome: Holm runs over all of them at once.
    """
    adjusted = holm({k: r.permutation.p_value for k, r in results.items()})
    effects = adjust(
        {k: average_effect(*_own(r, frame, spec), r.outcome, config) for k, r in results.items()},
        alpha=config.evidence.alpha,
    )
    if any(r.spec is not None for r in results.values()):  # three or more arms: say what Holm adjusted for
        for effect in effects.values():
            effect.extra["holm_family"] = "comparison x outcome tests"
    for outcome, result in results.items():
        result.p_adjusted = adjusted[outcome]
        result.average_effect = effects[outcome]
        tested = result.permutation.tested
        result.evidence = bool(tested and result.p_adjusted < config.evidence.alpha)
        choice = choose_answer(
            result.cv, result.data.y, result.data.t, result.evidence, tested,
            bool(result.path is not None and result.path.discriminates), list(config.candidates.enabled), config.intervals.level,
        )
        result.answer, result.champion, result.reason, result.refused = choice.answer, choice.champion, choice.reason, choice.refused


def evidence_of(result: OutcomeResult, config: TrainConfig) -> tuple[str, Evidence]:
    """The verdict sentence and the heterogeneity record the served model carries."""
    tested = result.permutation.tested
    verdict = (
        "evidence of effect modification"
        if result.evidence
        else "no reliable evidence of effect modification" if tested else "effect modification not tested"
    )
    evidence = Evidence(
        tested=tested,
        subgroup_evidence=result.evidence,
        p_value=_clean(result.permutation.p_value),
        p_adjusted=_clean(result.p_adjusted),
        statistic=_clean(result.permutation.statistic),
        alpha=config.evidence.alpha,
        permutations=int(result.permutation.permutations_run),
        verdict=verdict,
        method=result.permutation.method,
    )
    return verdict, evidence




def fit_trial(
    frame: pd.DataFrame,
    spec: DatasetSpec,
    config: TrainConfig,
    executor: Executor,
    provenance: dict[str, Any] | None = None,
    phase: Callable[..., None] | None = None,
) -> dict[str, OutcomeResult]:
    """Every outcome of a validated, coerced trial frame, fitted: the results with their served models.

    ``phase(label, kind, step=False, outcome=None)`` is told when each step starts
    (the job's progress line and phase timing); the steps, seeds and order are the
    same with or without it.
    """
    phase = phase or (lambda *args, **kwargs: None)
    results: dict[str, OutcomeResult] = {}
    phase("parse the lab values once", "data")
    parsed_all = parsed_inputs(spec, model_inputs(frame, spec))
    # One comparison for a two-arm trial (this spec, every row); with three or more arms, each comparison
    # is fitted on its two arms' patients with its two-arm spec. Holm then runs across all of them.
    for comparison in spec.comparisons():
        rows = comparison.rows(frame) if comparison.key is not None else np.ones(len(frame), dtype=bool)
        sub, own = frame.loc[rows].reset_index(drop=True), comparison.spec
        parsed = parsed_all.loc[rows].reset_index(drop=True)
        for outcome in spec.outcomes:
            key = comparison.result_key(outcome)
            phase("labels", "data", outcome=key)
            data, counts = outcome_data(sub, own, outcome, config, parsed)

            def outcome_phase(label: str, kind: str, step: bool = False, key: str = key) -> None:
                phase(label, kind, step=step, outcome=key)

            cv, path, permutation = evaluate_outcome(data, own, config, executor, key, phase=outcome_phase)
            results[key] = OutcomeResult(outcome, counts, data, cv, permutation, path=path, comparison=comparison)
        # Sensitivity analysis: with > 10% missing follow-up, the average effect under the other policy too.
        for outcome, effect in sensitivity_effects(sub, own, config).items():
            results[comparison.result_key(outcome)].average_effect_sensitivity = effect
        # Event by a horizon: the IPCW estimate beside the primary analysis, which excludes early censoring.
        for outcome in own.event_by_outcomes():
            results[comparison.result_key(outcome)].censoring = censoring_sensitivity(sub, own, outcome, seed=config.seed)
    phase("refit the champions", "final fits", step=True)
    decide_answers(results, frame, spec, config)
    fitted = final_fits(results, spec, config, executor)
    for key, result in results.items():
        phase("assemble the served model", "final fits", outcome=key)
        _, evidence = evidence_of(result, config)
        result.model = fit_champion(result, result.spec or spec, config, evidence, provenance, fitted[key])
    return results
