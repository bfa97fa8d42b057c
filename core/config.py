"""The typed training configuration (YAML), with small-sample defaults.

Every knob of a training job lives here so that a job is reproducible from
(data, spec, config, seed). ``load_config(None)`` gives the packaged default
(``core/configs/default.yaml``); a user's file overrides any subset of it.
The models here hold each setting's type, bounds and description; its default
value is written once, in ``default.yaml``, and read from there at import
(:func:`_defaults`), so ``TrainConfig()`` is the packaged default too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from core.errors import ConfigError, validation_problems, yaml_mapping
from core.spec import ResponderRule


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Settings that must change with the number of patients accept ``auto``: the rule is written in the
# field's description (and default.yaml) and applied by ``TrainConfig.resolved(n)`` once the job knows
# n. An explicit number always wins.
AUTO = "auto"
_INT = TypeAdapter(int)
_FLOAT = TypeAdapter(float)


def _or_auto(adapter: TypeAdapter, value: Any) -> Any:
    # One error line for a bad value (a plain union would report one per member).
    if value == AUTO:
        return AUTO
    try:
        return adapter.validate_python(value)
    except ValidationError as err:
        first = err.errors()[0]
        raise PydanticCustomError(first["type"], first["msg"]) from None


def _int_or_auto(value: Any) -> int | str:
    return _or_auto(_INT, value)


def _optional_int_or_auto(value: Any) -> int | str | None:
    return None if value is None else _int_or_auto(value)


def _float_or_auto(value: Any) -> float | str:
    return _or_auto(_FLOAT, value)


IntOrAuto = Annotated[Any, PlainValidator(_int_or_auto)]
OptionalIntOrAuto = Annotated[Any, PlainValidator(_optional_int_or_auto)]
FloatOrAuto = Annotated[Any, PlainValidator(_float_or_auto)]


@dataclass(frozen=True)
class AutoRule:
    """An ``auto`` setting's rule: ``small`` below ``threshold`` patients, ``large`` from there."""

    threshold: int
    small: Any
    large: Any

    def value(self, n: int) -> Any:
        return self.small if n < self.threshold else self.large


# Every ``auto`` rule, once: TrainConfig.resolved applies them, the candidates take ``small`` for an
# unresolved auto, and tests/test_config.py checks the descriptions and default.yaml say the same.
AUTO_RULES: dict[str, AutoRule] = {
    "cv.folds": AutoRule(20_000, 5, 2),
    "cv.repeats": AutoRule(10_000, 3, 1),
    "cv.inner_folds": AutoRule(20_000, 3, 2),
    "candidates.bcf.cv_gfr": AutoRule(2_000, 2, 5),
    "candidates.bcf.cv_mcmc": AutoRule(2_000, 50, 20),
    "candidates.bcf.max_patients": AutoRule(2_000, None, 1_000),  # None: every patient
    "evidence.rate_bootstrap": AutoRule(10_000, 500, 200),
    "intervals.bootstrap_models": AutoRule(10_000, 100, 20),
    "intervals.bootstrap_penalty": AutoRule(10_000, "reselect", "keep"),
    "intervals.bootstrap_fraction": AutoRule(100_000, 1.0, 0.1),
    "selection.criterion": AutoRule(2_000, "bcf_when_eligible", "dr_tau_risk"),
}


def small_value(path: str, value: Any) -> Any:
    """``value``, or the small-trial value of its rule if it is an unresolved ``auto``."""
    return AUTO_RULES[path].small if value == AUTO else value


def _resolve(model: BaseModel, prefix: str, n: int) -> BaseModel:
    """``model`` with each ``auto`` under ``prefix`` replaced by its rule's value for ``n`` patients."""
    updates: dict[str, Any] = {}
    for name in type(model).model_fields:
        value, path = getattr(model, name), f"{prefix}{name}"
        if isinstance(value, BaseModel):
            resolved = _resolve(value, f"{path}.", n)
            if resolved is not value:
                updates[name] = resolved
        elif isinstance(value, str) and value == AUTO and path in AUTO_RULES:
            updates[name] = AUTO_RULES[path].value(n)
    return model.model_copy(update=updates) if updates else model


@lru_cache(maxsize=1)
def _default_text() -> str:
    return resources.files("core").joinpath("configs", "default.yaml").read_text(encoding="utf-8")


def _default_dict() -> dict:
    return yaml.safe_load(_default_text()) or {}


@lru_cache(maxsize=1)
def _packaged_defaults() -> dict:
    """default.yaml parsed once for every model's defaults (read only: validation copies what it takes)."""
    return _default_dict()


def _defaults(path: str):
    """Class decorator: each field's default is the value default.yaml gives at ``path`` (validated by the field).

    ``core/configs/default.yaml`` is the one place a default value is written: the fields here
    carry types, bounds and descriptions only. A field the file does not give is an error at
    import, naming the key. A model used at several places (LightGBM settings) takes its class
    defaults from ``path``; the parent's field takes the value at its own place.
    """

    def apply(model: type[_Strict]) -> type[_Strict]:
        tree = _packaged_defaults()
        for key in filter(None, path.split(".")):
            tree = tree[key]
        missing = [f"{path}.{name}".lstrip(".") for name in model.model_fields if name not in tree]
        if missing:
            raise RuntimeError(f"core/configs/default.yaml gives no default for {', '.join(missing)}")
        values = model.model_validate(tree)
        for name, field in model.model_fields.items():
            field.default = getattr(values, name)
        model.model_rebuild(force=True)
        return model

    return apply


@_defaults("candidates.t_learner.lightgbm")
class LightGBMParams(_Strict):
    """LightGBM settings; defaults are deliberately shallow and slow-learning for about 100 patients."""

    n_estimators: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    num_leaves: int = Field(ge=2)
    max_depth: int
    min_child_samples: int = Field(ge=1)
    subsample: float = Field(gt=0, le=1)
    subsample_freq: int
    colsample_bytree: float = Field(gt=0, le=1)
    reg_lambda: float = Field(ge=0)

    def kwargs(self, seed: int) -> dict:
        # n_jobs=1 and deterministic: the executor parallelises across folds, and the
        # same seed must give the same model on any worker.
        return {
            **self.model_dump(),
            "random_state": seed,
            "n_jobs": 1,
            "deterministic": True,
            "force_col_wise": True,
            "verbose": -1,
        }


@_defaults("candidates.risk_model")
class RiskModelParams(_Strict):
    C: float = Field(gt=0, description="inverse L2 strength of the prognostic (treatment-blinded) model")
    score_folds: int = Field(ge=2, description="folds for the cross-fitted risk score the effect model is fitted on")


@_defaults("candidates.interaction_logistic")
class InteractionLogisticParams(_Strict):
    Cs: list[float] = Field(min_length=1, description="L2 strengths tried by internal CV")
    cv: int = Field(ge=2, description="folds of the internal CV that picks C")
    treatment_scale: float = Field(
        gt=0, description="the treatment column is multiplied by this, so its penalty is 1/scale^2 of the others"
    )


@_defaults("candidates.t_learner")
class TLearnerParams(_Strict):
    lightgbm: LightGBMParams


@_defaults("candidates.dr_learner")
class DRLearnerParams(_Strict):
    crossfit_folds: int = Field(ge=2)
    nuisance: LightGBMParams
    final: LightGBMParams


@_defaults("candidates.bcf")
class BCFParams(_Strict):
    """Bayesian Causal Forest (stochtree, probit link); tree counts sized for trials of 10^2-10^3 patients."""

    num_gfr: int = Field(ge=0, description="grow-from-root warm-start iterations (each chain starts from one of them)")
    num_chains: int = Field(ge=1, description="MCMC chains of the served model (R-hat and ESS need several); at most num_gfr when num_gfr > 0, as each chain starts from its own warm start")
    num_burnin: int = Field(ge=0, description="burn-in iterations per chain of the served model, discarded")
    serve_draws: int = Field(
        ge=20,
        description="retained draws each served prediction evaluates, evenly spaced over the chains (the diagnostics use "
        "every retained draw; the job measures how far thinning moves the interval limits)",
    )
    num_mcmc: int = Field(
        description="retained posterior draws of the served model over all chains (its interval, R-hat and ESS), at every "
        "trial size (a served prediction evaluates serve_draws of them)",
    )
    cv_gfr: IntOrAuto = Field(
        description="warm-start (grow-from-root) iterations of each fit in cross-validation, where only posterior means "
        "are used. auto: 2 below 2,000 patients (warm starts dominate a small trial's fit), 5 from there (20 draws "
        "follow them, and the held-out heterogeneity test uses this fit)",
    )
    cv_mcmc: IntOrAuto = Field(
        description="retained draws in cross-validation, where only posterior means are used. auto: 50 below 2,000 "
        "patients, 20 from there",
    )
    mu_trees: int = Field(ge=1, description="trees of the prognostic forest")
    tau_trees: int = Field(ge=1, description="trees of the treatment-effect forest")
    explain_draws: int = Field(ge=1, description="posterior draws whose mean forests TreeSHAP explains")

    @field_validator("num_mcmc", mode="before")
    @classmethod
    def _no_auto_draws(cls, value: Any) -> Any:
        if value == AUTO:  # configs written before 2026-12-05
            raise ValueError(
                "num_mcmc no longer takes auto (it was 1,000 below 2,000 patients and 400 from there): give a number; "
                "the default is 1000 at every size"
            )
        return value

    @model_validator(mode="after")
    def _draws(self) -> BCFParams:
        for name, low in (("num_mcmc", 20), ("cv_mcmc", 10), ("cv_gfr", 0)):
            value = getattr(self, name)
            if value != AUTO and value < low:
                raise ValueError(f"{name} must be at least {low} (or auto)")
        return self

    max_patients: OptionalIntOrAuto = Field(
        description="BCF is fitted on a stratified random subsample of at most this many patients (None: all). "
        "auto: 1,000 from 2,000 patients on (a probit BCF fit grows faster than linearly and its prior already "
        "shrinks towards one effect; the other candidates use every patient), all patients below",
    )


CandidateName = Literal["arm_only", "risk_model", "bcf", "interaction_logistic", "t_learner", "dr_learner"]


@_defaults("candidates")
class CandidatesConfig(_Strict):
    enabled: list[CandidateName]
    solver: Literal["auto", "liblinear", "newton-cholesky", "lbfgs"] = Field(
        description="solver of the L2 logistic fits (risk model, interaction logistic, DR outcome models). auto: "
        "liblinear below 5,000 training rows of a fit, lbfgs from there (liblinear grows ~40x for 10x patients; core.candidates.logistic)",
    )
    risk_model: RiskModelParams
    bcf: BCFParams
    interaction_logistic: InteractionLogisticParams
    t_learner: TLearnerParams
    dr_learner: DRLearnerParams

    @model_validator(mode="after")
    def _floor_enabled(self) -> CandidatesConfig:
        if "arm_only" not in self.enabled:
            raise ValueError("the arm-only model is the floor every served model must beat and cannot be disabled")
        if len(set(self.enabled)) != len(self.enabled):
            raise ValueError("a candidate is listed twice")
        return self


@_defaults("selection")
class SelectionConfig(_Strict):
    """How the champion is chosen among the candidates (inside the nested cross-validation)."""

    criterion: Literal["auto", "bcf_when_eligible", "dr_tau_risk_1se", "dr_tau_risk", "r_loss_1se", "r_loss", "rate"] = Field(
        description=(
            "bcf_when_eligible: the prespecified shrinkage model (BCF) when it is eligible, else the arm-only floor "
            "(lost the least fresh-patient AUC of these rules in the recovery benchmark; needs bcf among the "
            "candidates); dr_tau_risk: lowest mean squared error against doubly robust scores; r_loss: lowest "
            "R-learner loss; rate: highest Qini-weighted RATE of the held-out benefit ranking; _1se: the simplest "
            "candidate within one standard error (of the paired difference) of the best. auto: bcf_when_eligible "
            "below 2,000 patients, dr_tau_risk from there (where BCF is fitted on a subsample of 1,000 while the "
            "other candidates use every patient, and thousands of out-of-fold patients separate their benefit losses)"
        ),
    )
    floor_margin_se: float = Field(
        ge=0,
        description="a candidate is eligible when its out-of-fold log-loss is not worse than the arm-only floor's "
        "by more than this many standard errors of the paired difference",
    )


@_defaults("cv")
class CVConfig(_Strict):
    folds: IntOrAuto = Field(
        description="outer folds. auto: 5 below 20,000 patients, 2 from there (each model still trains on 10,000 or "
        "more; a fit's cost grows with its training rows, so 2 folds cost about a quarter of 3 folds with 2 inner folds)",
    )
    repeats: IntOrAuto = Field(
        description="repeats of the outer split. auto: 3 below 10,000 patients, 1 from there (the split-to-split "
        "spread of out-of-fold metrics shrinks like 1/sqrt(n); at 10^4 one split is already as stable as three at 10^3)",
    )
    inner_folds: IntOrAuto = Field(
        description="folds of the inner loop that chooses the candidate. auto: 3 below 20,000 patients, 2 from there"
    )

    @model_validator(mode="after")
    def _at_least(self) -> CVConfig:
        for name, low in (("folds", 2), ("repeats", 1), ("inner_folds", 2)):
            value = getattr(self, name)
            if value != AUTO and value < low:
                raise ValueError(f"{name} must be at least {low} (or auto)")
        return self

    def resolved(self, n: int) -> CVConfig:
        return _resolve(self, "cv.", n)  # type: ignore[return-value]


@_defaults("evidence")
class EvidenceConfig(_Strict):
    method: Literal["imputed_randomisation", "auto", "permutation", "split_rate"] = Field(
        description="imputed_randomisation: the served model (BCF) is the statistic, calibrated by null trials built "
        "from the fitted no-modification model (null: a constant treatment effect on the probit scale with a flexible "
        "prognosis; arms re-randomised, outcomes imputed; training.heterogeneity); permutation: whole-pipeline permutation test of 'covariates carry no "
        "information' (small trials); split_rate: sample-split RATE test on the risk-difference scale (large trials); "
        "auto: permutation up to auto_max_n patients, split_rate above. permutation, split_rate and auto are kept for "
        "comparison: none is calibrated for the null imputed_randomisation names (benchmarks/RESULTS.md, section 1, "
        "measures split_rate's level on the same null designs)",
    )
    replicates: int = Field(
        ge=0, description="most null trials of the imputed randomisation test (0 skips the test: verdict not tested)"
    )
    warm_starts: int = Field(
        ge=0,
        description="grow-from-root warm-start iterations of each BCF fit of the imputed randomisation test (the "
        "observed statistic and every null trial; its other settings are the cross-validation fits'). Each warm start "
        "sweeps every feature's cut-points for every tree, so on a small trial they dominate a fit; level and power "
        "with this setting: benchmarks/RESULTS.md, section 1",
    )
    max_patients: int = Field(
        ge=50,
        description="the imputed randomisation test runs on a random subsample (stratified by outcome) of at most this many patients "
        "(the BCF statistic is refitted for every replicate); above twice this many the test is held out: BCF fitted on "
        "such a subsample, its effect beyond prognosis tested on every other patient",
    )
    prespecified: bool = Field(
        description="the imputed randomisation test also examines the spec's prespecified_modifiers by name (a probit "
        "likelihood-ratio statistic of arm x modifiers, or its signed root with the spec's prespecified_direction; "
        "training/modifiers.py), joined to BCF's spread by Fisher's "
        "combination of their p-values over the same null trials (stopped for futility and by curtailment at alpha); false, or a spec that names none: BCF's spread alone"
    )
    combination: Literal["fisher", "bonferroni", "fisher_or_bootstrap"] = Field(
        description="how the imputed randomisation test joins BCF's spread and the prespecified modifiers' statistic. "
        "fisher: both on the same null trials, Fisher's combination of their p-values (see prespecified). bonferroni: "
        "BCF's spread on the null trials (Besag-Clifford, sequential_h), the modifiers' statistic by a parametric "
        "bootstrap from its own fitted no-modification probit model (Besag-Clifford, at most replicates), the smaller "
        "p-value doubled: valid whatever the two statistics' dependence when each is; the bootstrap is exact only when "
        "that probit model is the truth. fisher_or_bootstrap: fisher's test whole, or the modifiers' statistic by that "
        "bootstrap, the smaller p-value doubled (benchmarks/RESULTS.md, section 1, measures all three on the same trials)"
    )
    auto_max_n: int = Field(ge=10, description="largest trial tested by permutation when method is auto")
    permutations: int = Field(ge=0, description="most permutations of the test (0 skips the test: verdict not tested)")
    sequential_h: int = Field(
        ge=0,
        description="Besag-Clifford sequential p-value: stop once this many permuted statistics reach the observed one "
        "(0: always run every permutation)",
    )
    alpha: float = Field(gt=0, lt=1, description="family-wise level after Holm's correction across outcomes")
    rate_bootstrap: IntOrAuto = Field(
        description="bootstrap replicates for the RATE (AUTOC) interval and the split-sample test's standard error. "
        "auto: 500 below 10,000 patients, 200 from there (each replicate sorts every patient; 200 keep the Monte-Carlo "
        "error of a standard error near 5%)",
    )

    @model_validator(mode="after")
    def _replicates(self) -> EvidenceConfig:
        if self.rate_bootstrap != AUTO and self.rate_bootstrap < 0:
            raise ValueError("rate_bootstrap must be at least 0 (or auto)")
        return self
    statistic: Literal["beyond_risk", "rate"] = Field(
        description=(
            "beyond_risk: best Qini-weighted RATE of an effect-modelling candidate for the benefit the risk model "
            "does not explain (the claim 'responder subgroup'); rate: best Qini-weighted RATE of any candidate "
            "(also counts the benefit spread that baseline risk alone produces)"
        ),
    )
    candidates: list[CandidateName] = Field(
        description="effect-modelling candidates whose best ranking is the test statistic (refitted for every permutation)",
    )


@_defaults("intervals")
class IntervalConfig(_Strict):
    """Per-patient benefit intervals: for the *conditional average* benefit given the patient's measured values.

    The uncertainty comes from posterior draws (BCF: credible intervals), a
    percentile interval over bootstrap refits (the risk model and the other
    candidates: confidence intervals) or, for the arm-only floor (the trial
    average answer), the trial's Miettinen-Nurminen interval (confidence). No allowance is added for
    how one patient's own benefit may differ from that average: no
    parallel-group trial identifies it. A conditional answer on a large trial adds the model's out-of-fold
    calibration error (``calibration_groups``, ``calibration_min_group``) and its disagreement with the other candidates
    (``disagreement``), which the refits do not carry.
    """

    bootstrap_models: IntOrAuto = Field(
        description="refits of the bootstrap interval (candidates without posterior draws). auto: 100 below 10,000 "
        "patients, 20 from there (each refit costs O(n), while the model's interval narrows like 1/sqrt(n))",
    )

    bootstrap_penalty: Literal["auto", "reselect", "keep"] = Field(
        description="reselect: each bootstrap refit chooses its own penalty by internal CV, as the served fit did; keep: "
        "refits use the penalty chosen on all patients (one fit instead of folds x Cs + 1). auto: reselect below 10,000 "
        "patients, keep from there (the choice barely varies between resamples of that size)",
    )

    bootstrap_fraction: FloatOrAuto = Field(
        description="size of each bootstrap resample as a fraction of each arm. 1.0: the ordinary bootstrap; below 1: the "
        "m-out-of-n bootstrap, bootstrap_models refits at this fraction and as many at a quarter of it, their spread "
        "carried to the whole trial by the rate measured between the two sizes (core.candidates.ensemble). auto: 1.0 "
        "below 100,000 patients, 0.1 from there (each full-size refit costs as much as the served fit)",
    )

    calibration_groups: int = Field(
        ge=0,
        description="a conditional answer's interval adds the served model's out-of-fold calibration error, measured "
        "across this many equal groups of predicted benefit (training.metrics.calibration_error): an error the "
        "bootstrap refits do not carry (section 6 of benchmarks/RESULTS.md scores the interval with and without it). "
        "0: none",
    )

    calibration_min_group: int = Field(
        ge=2,
        description="patients per group below which the calibration error is not measured (its noise, about "
        "4 p (1 - p) / patients per group, would swamp it): with 10 groups of at least 200, from 2,000 patients",
    )

    disagreement: bool = Field(
        description="the same allowance also adds the served model's root-mean-square out-of-fold disagreement with "
        "the other eligible candidates that model effect modification and see every patient "
        "(training.metrics.candidate_disagreement): the model error the calibration groups cannot see. false: the "
        "calibration error alone",
    )

    @model_validator(mode="after")
    def _enough(self) -> IntervalConfig:
        if self.bootstrap_models != AUTO and self.bootstrap_models < 5:
            raise ValueError("bootstrap_models must be at least 5 (or auto)")
        if self.bootstrap_fraction != AUTO and not 0 < self.bootstrap_fraction <= 1:
            raise ValueError("bootstrap_fraction must be in (0, 1] (or auto)")
        return self
    level: float = Field(gt=0.5, lt=1)


@_defaults("labels")
class LabelRule(_Strict):
    """Thresholds of the labels, in percentage points of benefit (0.10 = 10 pp); applied by ``core.labelling``.

    Population label (every patient, from the trial's average effect):
    ``likely_benefit`` for an established (multiplicity-adjusted) average
    benefit of at least ``likely_min_benefit``; ``unlikely_benefit`` when the
    adjusted interval lies wholly below ``unlikely_upper_below``; otherwise
    ``uncertain``. Patient label (only when effect modification is
    established): ``likely_benefit`` when the patient's interval lies above
    0 pp, ``unlikely_benefit`` when it lies wholly below
    ``unlikely_upper_below`` (the smallest benefit worth having), otherwise
    ``uncertain``.
    """

    likely_min_benefit: float = Field(ge=0, le=1)
    unlikely_upper_below: float = Field(ge=-1, le=1, description="the minimal important benefit")


@_defaults("gate")
class GateConfig(_Strict):
    """When a new model may become ``champion``."""

    max_brier_excess: float = Field(
        ge=0, description="cross-validated Brier score (mean over arms) may exceed the no-information Brier by at most this"
    )
    max_brier_worse_than_champion: float = Field(
        ge=0, description="not worse than the current champion's candidate on the same evaluation by more than this"
    )


@_defaults("executor")
class ExecutorConfig(_Strict):
    kind: Literal["local", "dask"]
    workers: int | None = Field(ge=1, description="local processes (None: one per core)")
    scheduler: str | None = Field(description="address of a running Dask scheduler (kind: dask)")


@_defaults("")
class TrainConfig(_Strict):
    seed: int
    cv: CVConfig
    candidates: CandidatesConfig
    selection: SelectionConfig
    evidence: EvidenceConfig
    intervals: IntervalConfig
    labels: LabelRule
    gate: GateConfig
    executor: ExecutorConfig
    responder_rules: dict[str, ResponderRule] = Field(
        description="per-outcome override of the spec's responder rule (e.g. >= 50%)"
    )
    missing_followup: Literal["non_responder", "exclude"] | None = Field(
        description="override of the spec's handling of missing follow-up"
    )

    @model_validator(mode="after")
    def _criterion_has_its_candidate(self) -> TrainConfig:
        if self.selection.criterion in ("bcf_when_eligible", AUTO) and "bcf" not in self.candidates.enabled:
            which = "bcf_when_eligible" if self.selection.criterion != AUTO else "auto (bcf_when_eligible below 2,000 patients)"
            raise ValueError(
                f"selection.criterion {which} chooses BCF and needs bcf in candidates.enabled; "
                "enable it or choose another criterion (e.g. dr_tau_risk)"
            )
        return self

    def resolved(self, n: int) -> TrainConfig:
        """This config with every ``auto`` setting replaced by its rule's value for ``n`` patients.

        The rules are :data:`AUTO_RULES` (described in the fields and in ``configs/default.yaml``);
        an explicit value is kept as it is.
        """
        return _resolve(self, "", n)  # type: ignore[return-value]

    def digest(self) -> str:
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_config(path: str | Path | None = None, **overrides) -> TrainConfig:
    """The packaged default config, updated by a YAML file and keyword overrides (deep-merged).

    Raises ``ConfigError`` with one line per problem (unknown key with the
    nearest known one, wrong type or value) instead of pydantic's long report.
    """
    source = f"config {path}" if path is not None else "config"
    data = _default_dict()
    if path is not None:
        data = _merge(data, yaml_mapping(Path(path).read_text(encoding="utf-8"), source))
    if overrides:
        data = _merge(data, overrides)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, validation_problems(err, TrainConfig)) from None


def smoke_settings() -> dict:
    """The smoke overrides (``core/configs/smoke.yaml``): tests, quick benchmarks and examples share them."""
    return yaml.safe_load(resources.files("core").joinpath("configs", "smoke.yaml").read_text(encoding="utf-8")) or {}


def smoke_config(**overrides) -> TrainConfig:
    """The defaults with the smoke settings and ``overrides`` (deep-merged): a job of seconds, not estimates."""
    return load_config(None, **_merge(smoke_settings(), overrides))


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
