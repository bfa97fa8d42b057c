"""Scoring shared by the REST API and ``responders predict``: load the champions once, score batches.

The champions are compiled into one :class:`~core.runtime.plan.ScoringPlan`
when the scorer is made (at start-up): a request's patient dicts are parsed
once for every outcome and scored with array operations, without pandas.

One bad patient never blocks the others: every row is checked on its own
(request-model validation, then the lab parser of the model's own fitted
pipeline), rows with errors get an ``errors`` list and no prediction, and the
rest are scored together. Patient values are never logged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ValidationError

from core.labelling import Wording
from core.runtime.arms import limit_lightgbm_threads
from core.runtime.artefact import ResponderModel, load_artefact
from core.runtime.compiled import SCORING_FILE, load_scoring_model
from core.runtime.plan import Parsed, ScoringPlan
from core.spec import DatasetSpec
from serving import schemas as S

log = logging.getLogger("responders.serving")

DEFAULT_MAX_BATCH = 500


@dataclass
class Champion:
    outcome: str
    model: ResponderModel
    ref: S.ModelRef

    def evidence(self) -> S.Evidence:
        ev = self.model.evidence
        return S.Evidence(subgroup_evidence=ev.subgroup_evidence, p_adjusted=ev.p_adjusted, verdict=ev.verdict)


def _lab_code(reason: str) -> str:
    if reason.startswith("unknown unit"):
        return "unknown_unit"
    if reason.startswith("implausible"):
        return "implausible_lab"
    return "unparseable_lab"


class ChampionError(RuntimeError):
    """A champion that cannot be served; the message names the registered model, version and file."""


def resolve_champions(spec: DatasetSpec, tracking_uri: str | None = None, scoring_only: bool = False) -> dict[str, Champion]:
    """Resolve each outcome's ``champion`` alias to a fixed registry version, and load that version.

    The version is pinned here, at start-up: later alias moves do not change a
    running service (restart it to pick up a new champion). Raises
    :class:`ChampionError` when an outcome has no champion or its file cannot be loaded.
    A local sqlite store is read without importing MLflow (:func:`core.registry.local_champions`),
    with the same versions and files; any other store through MLflow.

    ``scoring_only`` (``responders predict``): from a local store, each version's stored scoring plan
    (:mod:`core.runtime.compiled`: the same answers, no scikit-learn to import, no explanations) where
    training wrote one, else its artefact.
    """
    from core.registry import local_champions, resolve_tracking_uri

    keys = spec.model_keys()  # one per outcome; with three or more arms, per comparison too
    uri = resolve_tracking_uri(tracking_uri)
    stored = local_champions(uri, [name for _, _, name in keys])
    if stored is None or any(v is not None and v.directory is None for v in stored.values()):
        return _resolve_with_mlflow(keys, tracking_uri)
    champions = {}
    for key, outcome, name in keys:
        version = stored[name]
        if version is None:
            raise ChampionError(_no_champion(name, uri))
        path = version.directory / "artifacts" / "responder.joblib"
        model = _stored_plan(name, version.version, version.directory / "artifacts" / SCORING_FILE) if scoring_only else None
        try:
            model = model or load_artefact(path)
        except Exception as err:  # any failure to read the artifact: name what could not be served
            raise ChampionError(_cannot_load(name, version.version, version.download_uri, err)) from err
        champions[key] = _champion(outcome, name, version, model)
    return champions


def _stored_plan(name: str, version: Any, path: Path) -> Any:
    """A version's stored scoring plan, or None: absent (registered before training wrote one) or unreadable
    (logged, and the artefact, which holds the same model, is loaded instead)."""
    if not path.is_file():
        return None
    try:
        return load_scoring_model(path)
    except Exception as err:  # a damaged plan file: the artefact answers the same, so it is no reason to stop
        log.warning("registered model %r version %s: cannot read its stored scoring plan %s (%s: %s); loading the artefact instead",
                    name, version, path.name, type(err).__name__, _one_line(err))  # fmt: skip
        return None


def _resolve_with_mlflow(keys: list[tuple[str, str, str]], tracking_uri: str | None) -> dict[str, Champion]:
    from core.registry import current_champion, load_registered, setup_tracking

    uri, client = setup_tracking(tracking_uri)
    champions = {}
    for key, outcome, name in keys:
        version = current_champion(client, name)
        if version is None:
            raise ChampionError(_no_champion(name, uri))
        try:
            model = load_registered(f"models:/{name}/{version.version}")
        except Exception as err:  # any failure to read the artifact: name what could not be served
            raise ChampionError(_cannot_load(name, version.version, _download_uri(client, name, str(version.version)), err)) from err
        champions[key] = _champion(outcome, name, version, model)
    return champions


def _no_champion(name: str, uri: str) -> str:
    from core.registry import CHAMPION

    return f"no '{CHAMPION}' version of registered model {name!r} in {uri}: run `make train` first"


def _cannot_load(name: str, version: Any, where: str, err: BaseException) -> str:
    return f"registered model {name!r} version {version}: cannot load {where}/artifacts/responder.joblib ({type(err).__name__}: {_one_line(err)})"


def _champion(outcome: str, name: str, version: Any, model: ResponderModel) -> Champion:
    """A loaded champion with its registry reference (``version``: MLflow's ModelVersion or a StoredVersion)."""
    ref = S.ModelRef(
        registered_model=name,
        version=str(version.version),
        training_run_id=version.tags.get("training_run_id", version.run_id or ""),
        candidate=model.candidate_name,
    )
    log.info("loaded %s version %s (%s)", name, ref.version, ref.candidate)
    return Champion(outcome, model, ref)


def champion_key(model: ResponderModel) -> str:
    """The key a model answers under: its outcome, or ``<comparison>/<outcome>`` with three or more arms."""
    comparison = model.metadata.get("comparison")
    return f"{comparison['key']}/{model.outcome}" if comparison else model.outcome


def comparison_out(model: ResponderModel) -> S.ComparisonOut | None:
    """Three or more arms: the two arms a model compares (None for a two-arm trial)."""
    comparison = model.metadata.get("comparison")
    if not comparison:
        return None
    return S.ComparisonOut(
        key=comparison["key"], treated=comparison["treated_name"], control=comparison["control_name"],
        treated_code=str(comparison["treated"]), control_code=str(comparison["control"]),
    )


def _download_uri(client, name: str, version: str) -> str:
    try:
        return client.get_model_version_download_uri(name, version)
    except Exception:  # the registry itself is the problem: fall back to the model URI
        return f"models:/{name}/{version}"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or "no message"


def load_bento_champions(spec: DatasetSpec, tags: list[str]) -> dict[str, Champion]:
    """Load champions imported into the BentoML model store (used inside a built Bento)."""
    import bentoml

    champions = {}
    for tag in tags:
        try:
            stored = bentoml.models.get(tag)
        except bentoml.exceptions.NotFound as err:
            raise ChampionError(f"BentoML model {tag!r} is not in the model store: {_one_line(err)}") from err
        path = Path(stored.path_of("mlflow_model")) / "artifacts" / "responder.joblib"
        try:
            model: ResponderModel = load_artefact(path)
        except Exception as err:  # name what could not be served
            labels = stored.info.labels
            raise ChampionError(
                f"registered model {labels.get('registered_model', str(stored.tag.name))!r} version "
                f"{labels.get('mlflow_version', str(stored.tag.version))} (BentoML model {tag}): cannot load {path} "
                f"({type(err).__name__}: {_one_line(err)})"
            ) from err
        labels = stored.info.labels
        ref = S.ModelRef(
            registered_model=labels.get("registered_model", str(stored.tag.name)),
            version=labels.get("mlflow_version", str(stored.tag.version)),
            training_run_id=labels.get("training_run_id", ""),
            candidate=model.candidate_name,
        )
        champions[champion_key(model)] = Champion(model.outcome, model, ref)
    missing = {key for key, _, _ in spec.model_keys()} - set(champions)
    if missing:
        raise ChampionError(f"the Bento lacks models for outcomes {sorted(missing)}")
    return champions


class Scorer:
    """Validates, parses and scores patients with a fixed set of champions, through their compiled plan."""

    def __init__(self, spec: DatasetSpec, champions: dict[str, Champion], max_batch: int = DEFAULT_MAX_BATCH):
        self.spec = spec
        self.champions = champions
        self.max_batch = max_batch
        self.patient_model = S.patient_model(spec, spec.lab_catalog())
        self.plan = ScoringPlan({o: c.model for o, c in champions.items()})
        if any(getattr(plan.arms, "uses_lightgbm", False) for plan in self.plan.plans.values()):
            limit_lightgbm_threads()  # (importing LightGBM imports scikit-learn: only for a LightGBM champion)
        # What every answer repeats, built once: the rule texts, the evidence and the model references.
        # Training records where its data came from (training.reports.payload.data_provenance).
        self.simulated = any(bool((c.model.metadata.get("data_provenance") or {}).get("simulated")) for c in champions.values())
        self._fixed = {
            o: {
                "label_rule": c.model.label_policy.describe(),
                "responder_rule": str(c.model.metadata.get("responder_rule", "")),
                "evidence": c.evidence(),
                "model": c.ref,
                "level": c.model.interval_level,
                "kind": c.model.label_policy.interval_kind,
                "estimand": c.model.label_policy.estimand(
                    c.model.spec.treated_inline(), c.model.spec.control_inline(), Wording.of(c.model.spec.outcomes.get(c.model.outcome))
                ),
                "wording": Wording.of(c.model.spec.outcomes.get(c.model.outcome)),
                "names": (c.model.spec.treated_inline(), c.model.spec.control_inline()),  # each model's own arms
                "comparison": comparison_out(c.model),
                "population": population_answer(c.model),
            }
            for o, c in champions.items()
        }

    threads = 1  # blocks of a file scored at once (``responders predict``: the cores; a serving worker: one)

    def batch_threads(self, threads: int) -> None:
        """Let a batch job (not a serving worker) score ``threads`` blocks of a file at once and split large batches of
        the compiled tree walks over as many threads."""
        self.threads = max(1, int(threads))
        for plan in self.plan.plans.values():
            if hasattr(plan.arms, "threads"):
                plan.arms.threads = max(1, int(threads))

    @property
    def refs(self) -> dict[str, S.ModelRef]:
        return {k: c.ref for k, c in self.champions.items()}

    # Input handling -----------------------------------------------------------
    def validate_rows(self, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any] | None, list[S.FieldProblem]]]:
        """Per row: the validated field values, or the validation problems (for files, not HTTP bodies)."""
        out = []
        for row in rows:
            clean = {k: (None if _is_blank(v) else v) for k, v in row.items()}
            try:
                patient = self.patient_model.model_validate(clean)
            except ValidationError as err:
                problems = [
                    S.FieldProblem(field=".".join(str(p) for p in e["loc"]) or "patient", message=e["msg"], code=e["type"])
                    for e in err.errors(include_input=False)
                ]
                out.append((None, problems))
                continue
            out.append((patient.model_dump(), []))
        return out

    def _parse(
        self, patients: list[dict[str, Any]], prior_errors: dict[int, list[S.FieldProblem]] | None = None
    ) -> tuple[dict[str, Parsed], list[int], dict[int, list[S.FieldProblem]]]:
        """Each patient parsed once for every outcome: the usable rows' parsed batches, their positions, the errors."""
        parsed, issues = self.plan.parse(patients)
        errors: dict[int, list[S.FieldProblem]] = {
            row: [S.FieldProblem(field=i.column, message=i.message(), code=_lab_code(i.reason)) for i in found] for row, found in issues.items()
        }
        for row, problems in (prior_errors or {}).items():
            errors.setdefault(row, []).extend(problems)
        good = [i for i in range(len(patients)) if i not in errors]
        usable: dict[int, Parsed] = {}  # outcomes sharing a parse share its subset too
        subset = {o: usable.setdefault(id(p), p.rows(good)) for o, p in parsed.items()}
        return subset, good, errors

    def _warnings(self, parsed: dict[str, Parsed]) -> list[list[S.InputWarningOut]]:
        return [
            [S.InputWarningOut(code=w.code, field=w.field, message=w.message) for w in items] for items in self.plan.warnings(parsed)
        ]

    # Scoring --------------------------------------------------------------------
    def predict(self, patients: list[dict[str, Any]], prior_errors: dict[int, list[S.FieldProblem]] | None = None) -> S.PredictResponse:
        parsed, good, errors = self._parse(patients, prior_errors)
        warnings = self._warnings(parsed) if good else []
        per_outcome = {o: plan.predict(parsed[o]) for o, plan in self.plan.plans.items()} if good else {}
        position = {row: k for k, row in enumerate(good)}
        results = []
        for i, patient in enumerate(patients):
            pid = str(patient.get(self.spec.id_column) or f"row-{i + 1}")
            if i in errors:
                results.append(S.PatientPrediction(patient_id=pid, predictions=None, errors=errors[i]))
                continue
            k = position[i]
            predictions = {}
            for outcome, scores in per_outcome.items():
                fixed = self._fixed[outcome]
                p1, p0, benefit = float(scores.p_response_treated[k]), float(scores.p_response_control[k]), float(scores.benefit[k])
                low, high = float(scores.benefit_lower[k]), float(scores.benefit_upper[k])
                predictions[outcome] = S.OutcomePrediction(
                    p_response_treated=p1,
                    p_response_control=p0,
                    benefit=benefit,
                    summary=fixed["wording"].sentence(p1, p0, benefit, low, high, fixed["level"], fixed["kind"], *fixed["names"]),
                    event=_event_risk(fixed["wording"], p1, p0, benefit, low, high, fixed["level"], fixed["kind"]),
                    benefit_interval=S.Interval(
                        lower=float(scores.benefit_lower[k]), upper=float(scores.benefit_upper[k]), level=fixed["level"], kind=fixed["kind"]
                    ),
                    answer=scores.answer,
                    estimand=fixed["estimand"],
                    patient_label=scores.patient_label[k],
                    patient_label_reason=scores.patient_label_reason[k],
                    comparison=fixed["comparison"],
                    population=fixed["population"],
                    label_rule=fixed["label_rule"],
                    responder_rule=fixed["responder_rule"],
                    evidence=fixed["evidence"],
                    model=fixed["model"],
                )
            results.append(S.PatientPrediction(patient_id=pid, predictions=predictions, warnings=warnings[k]))
        return S.PredictResponse(
            results=results, n_scored=len(good), n_failed=len(patients) - len(good), models=self.refs, simulated_training_data=self.simulated
        )

    def explain(self, patients: list[dict[str, Any]], top: int = 10) -> S.ExplainResponse:
        parsed, good, errors = self._parse(patients)
        warnings = self._warnings(parsed) if good else []
        explained = {o: plan.explain(parsed[o], top) if good else [] for o, plan in self.plan.plans.items()}
        position = {row: k for k, row in enumerate(good)}
        results = []
        for i, patient in enumerate(patients):
            pid = str(patient.get(self.spec.id_column) or f"row-{i + 1}")
            if i in errors:
                results.append(S.PatientExplanation(patient_id=pid, errors=errors[i]))
                continue
            k = position[i]
            outcomes = {}
            for outcome, champion in self.champions.items():
                e = explained[outcome][k]
                outcomes[outcome] = S.OutcomeExplanation(
                    drivers_of="benefit" if e.shows_benefit_drivers else "prognosis",
                    benefit=_output(e.benefit, top) if e.shows_benefit_drivers else None,
                    p_response_control=_output(e.p_response_control, top),
                    p_response_treated=_output(e.p_response_treated, top),
                    model=champion.ref,
                )
            results.append(S.PatientExplanation(patient_id=pid, explanations=outcomes, warnings=warnings[k]))
        return S.ExplainResponse(results=results, models=self.refs, simulated_training_data=self.simulated)

    def metadata(self) -> S.Metadata:
        outcomes = {}
        for outcome, champion in self.champions.items():
            model = champion.model
            outcomes[outcome] = S.OutcomeMetadata(
                label=self.spec.outcomes[champion.outcome].label,
                kind=self.spec.outcomes[champion.outcome].kind,
                description=self.spec.outcomes[champion.outcome].description.strip(),
                comparison=comparison_out(model),
                responder_rule=str(model.metadata.get("responder_rule", "")),
                label_rule=model.label_policy.describe(),
                answer=model.label_policy.answer,
                answer_reason=model.label_policy.answer_reason,
                refused=dict(model.metadata.get("refused") or {}),
                estimand=model.label_policy.estimand(
                    model.spec.treated_inline(), model.spec.control_inline(), Wording.of(model.spec.outcomes.get(model.outcome))
                ),
                event_to_prevent=Wording.of(model.spec.outcomes.get(model.outcome)).event,
                average_effect=S.AverageEffectOut.from_model(model.average_effect),
                interval_level=model.interval_level,
                calibration_allowance=model.plan().allowance[0],  # what the scoring plan adds
                calibration_allowance_reason=(model.metadata.get("calibration_allowance") or {}).get("reason"),
                evidence=champion.evidence(),
                model=champion.ref,
                features=[S.FeatureOut(name=f.name, description=f.description, unit=f.unit, group=f.group) for f in model.feature_info().values()],
            )
        arm, multi = self.spec.arm, self.spec.arm.multi
        return S.Metadata(
            spec=self.spec.name,
            description=self.spec.description.strip(),
            # Three or more arms: every compared arm (each outcome's comparison names its own two).
            treated=self.spec.treated_display() if not multi else " / ".join(dict.fromkeys(arm.arm_name(t) for t, _ in arm.pairs())),
            control=self.spec.control_display() if not multi else " / ".join(dict.fromkeys(arm.arm_name(c) for _, c in arm.pairs())),
            treated_code=arm.labels[0] if not multi else " / ".join(dict.fromkeys(str(t) for t, _ in arm.pairs())),
            control_code=arm.labels[1] if not multi else " / ".join(dict.fromkeys(str(c) for _, c in arm.pairs())),
            outcomes=outcomes,
            max_batch=self.max_batch,
            simulated_training_data=self.simulated,
        )

    def patient_frame(self, patient: dict[str, Any]) -> tuple[pd.DataFrame, list[S.FieldProblem]]:
        """One patient as the one-row frame the report takes, or the patient's lab problems."""
        _, _, errors = self._parse([patient])
        columns = list(self.patient_model.model_fields)
        frame = pd.DataFrame([{c: patient.get(c) for c in columns}], columns=columns)
        return frame.astype(object).where(frame.notna(), None), errors.get(0, [])


def _event_risk(wording: Wording, p1: float, p0: float, benefit: float, low: float, high: float, level: float, kind: str) -> S.EventRisk | None:
    """The event's risk per arm, the absolute risk reduction and the NNT, for an event to prevent (else None)."""
    if not wording.prevents:
        return None
    number, which = wording.nnt_number(benefit, low, high)
    return S.EventRisk(
        event=wording.event, risk_treated=wording.shown(p1), risk_control=wording.shown(p0), absolute_risk_reduction=benefit,
        number_needed=number, nnt_kind=which, nnt_text=wording.nnt(benefit, low, high, level, kind),
    )


def population_answer(model: ResponderModel) -> S.PopulationAnswer:
    """The trial population's answer of one outcome: the average effect and its label (the same for every patient)."""
    policy, effect = model.label_policy, model.average_effect or {}
    adjusted = effect.get("ci_low_adjusted") is not None  # a single outcome's effect needs no Holm adjustment
    low = effect.get("ci_low_adjusted" if adjusted else "ci_low")
    high = effect.get("ci_high_adjusted" if adjusted else "ci_high")
    level = (effect.get("adjusted_level") if adjusted else None) or effect.get("level") or model.interval_level
    interval = S.Interval(lower=low, upper=high, level=level, kind="confidence") if low is not None and high is not None else None
    return S.PopulationAnswer(
        label=policy.population_label, label_reason=policy.population_reason, risk_difference=effect.get("risk_difference"), interval=interval
    )


def _output(explanation, top: int) -> S.OutputExplanation:
    drivers = explanation.drivers[: max(0, top)] if top else explanation.drivers
    return S.OutputExplanation(
        base_value=explanation.base_value,
        prediction=explanation.prediction,
        note=explanation.note,
        drivers=[
            S.Driver(
                feature=d.feature,
                description=d.description,
                patient_value=d.display_value,
                feature_value=d.value,
                components=d.components,
                unit=d.unit,
                contribution=d.contribution,
                sentence=d.sentence,
            )
            for d in drivers
        ],
    )


def _is_blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def read_patients(path: str | Path, spec: DatasetSpec) -> list[dict[str, Any]]:
    """Patients from CSV/Parquet (trial-file rows; arm, follow-up and true_* columns are dropped) or JSON."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        rows = data.get("patients", data) if isinstance(data, dict) else data
        return [rows] if isinstance(rows, dict) else list(rows)
    columns, _ = read_patient_columns(path, spec)
    keep = list(columns)
    return [dict(zip(keep, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def read_patient_columns(path: str | Path, spec: DatasetSpec) -> tuple[dict[str, list[Any]], int]:
    """The patient fields of a CSV, Parquet or JSON file column by column (missing cells None), and the number of rows."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        rows = read_patients(path, spec)  # every key kept: one the patient model does not know is an error for its row
        present = list(dict.fromkeys(k for row in rows for k in row))
        return {c: [row.get(c) for row in rows] for c in present}, len(rows)
    from core.data import read_table

    frame = read_table(path)
    fields = S.patient_model(spec, spec.lab_catalog()).model_fields  # once: building the model takes milliseconds
    numeric = set(spec.numeric_covariates()) | set(spec.baseline_score_columns())
    columns = {}
    for column in (c for c in frame.columns if c in fields):
        values = frame[column].astype(object).to_numpy()
        values = np.where(pd.isna(values), None, values)
        columns[column] = [_number(v) for v in values] if column in numeric else values.tolist()
    return columns, len(frame)


def _number(value: Any) -> Any:
    """A numeric cell of a file as a float (decimal comma allowed); text that is no number stays text for validation."""
    if isinstance(value, str):
        try:
            return float(value.replace(",", "."))
        except ValueError:
            return value
    return value


def patient_from_file(path: str | Path, scorer: Scorer) -> tuple[pd.DataFrame | None, list[S.FieldProblem]]:
    """The first patient of a JSON, CSV or Parquet file as the one-row frame the models take, or its problems.

    The same validation as ``POST /report``: the request model (types, ranges, codes), then the labs.
    """
    rows = read_patients(path, scorer.spec)
    if not rows:
        return None, [S.FieldProblem(field="patients", message="the file holds no patient", code="empty")]
    ((clean, problems),) = scorer.validate_rows(rows[:1])
    if clean is None:
        return None, problems
    frame, problems = scorer.patient_frame(clean)
    return (None, problems) if problems else (frame, [])


def as_dicts(patients: list[BaseModel]) -> list[dict[str, Any]]:
    return [p.model_dump() for p in patients]
