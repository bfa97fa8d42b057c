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
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ValidationError

from core.labelling import Wording
from core.progress import task_progress
from core.runtime.arms import limit_lightgbm_threads
from core.runtime.artefact import ResponderModel, load_artefact
from core.runtime.plan import Parsed, ScoringPlan
from core.spec import DatasetSpec, load_spec
from features.codes import level_key
from serving import schemas as S

log = logging.getLogger("responders.serving")

DEFAULT_MAX_BATCH = 500
FILE_CHUNK = 2_000  # patients scored per step of `responders predict` (one progress update each)


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


def resolve_champions(spec: DatasetSpec, tracking_uri: str | None = None) -> dict[str, Champion]:
    """Resolve each outcome's ``champion`` alias to a fixed registry version, and load that version.

    The version is pinned here, at start-up: later alias moves do not change a
    running service (restart it to pick up a new champion). Raises
    :class:`ChampionError` when an outcome has no champion or its file cannot be loaded.
    """
    from core.registry import CHAMPION, current_champion, load_registered, setup_tracking

    uri, client = setup_tracking(tracking_uri)
    champions = {}
    for key, outcome, name in spec.model_keys():  # one per outcome; with three or more arms, per comparison too
        version = current_champion(client, name)
        if version is None:
            raise ChampionError(f"no '{CHAMPION}' version of registered model {name!r} in {uri}: run `make train` first")
        try:
            model = load_registered(f"models:/{name}/{version.version}")
        except Exception as err:  # any failure to read the artifact: name what could not be served
            where = _download_uri(client, name, str(version.version))
            raise ChampionError(
                f"registered model {name!r} version {version.version}: cannot load {where}/artifacts/responder.joblib "
                f"({type(err).__name__}: {_one_line(err)})"
            ) from err
        ref = S.ModelRef(
            registered_model=name,
            version=str(version.version),
            training_run_id=version.tags.get("training_run_id", version.run_id or ""),
            candidate=model.candidate_name,
        )
        champions[key] = Champion(outcome, model, ref)
        log.info("loaded %s version %s (%s)", name, ref.version, ref.candidate)
    return champions


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
        limit_lightgbm_threads()
        self.plan = ScoringPlan({o: c.model for o, c in champions.items()})
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

    def batch_threads(self, threads: int) -> None:
        """Let a batch job (not a serving worker) split large batches of the compiled tree walks over ``threads`` threads."""
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

    def validate_columns(
        self, columns: dict[str, list[Any]], n: int, row: Any = None
    ) -> tuple[dict[str, list[Any]], dict[int, list[S.FieldProblem]]]:
        """:meth:`validate_rows` on a file read column by column: the validated columns and the problems by row.

        Every cell is checked with list and array operations against the rules
        the request model states for its field (types, ranges, codes, lengths,
        the patient-id pattern); a row with any cell those checks do not pass
        surely goes through the request model itself (:meth:`validate_rows`),
        which gives its problems, or its values when the checks were stricter
        than the model. ``row(i)``: row ``i`` as the model should see it
        (default: built from the columns). Rows with problems keep only their
        id in the validated columns.
        """
        checks = self._column_checks()
        clean: dict[str, list[Any]] = {}
        ok = np.ones(n, dtype=bool)
        for column, values in columns.items():
            check = checks.get(column)
            if check is None:  # a key the model does not know: an error wherever it has a value
                ok &= np.fromiter((_is_blank(v) for v in values), dtype=bool, count=n)
                continue
            clean[column], passed = check(values)
            ok &= passed
        for column, check in checks.items():
            if column not in clean:
                clean[column], passed = check([None] * n)
                ok &= passed
        problems: dict[int, list[S.FieldProblem]] = {}
        doubtful = np.flatnonzero(~ok)
        if len(doubtful):
            rows = [row(i) if row is not None else {c: columns[c][i] for c in columns} for i in doubtful]
            for i, given, (values, found) in zip(doubtful, rows, self.validate_rows(rows), strict=True):
                if values is None:
                    problems[int(i)] = found
                    for column in clean:
                        clean[column][i] = None
                    clean[self.spec.id_column][i] = given.get(self.spec.id_column)
                else:
                    for column in clean:
                        clean[column][i] = values.get(column)
        return clean, problems

    def _column_checks(self) -> dict[str, Any]:
        """Per field of the request model, a check of a whole column: (validated values, which cells surely pass)."""
        checks = getattr(self, "_checks", None)
        if checks is not None:
            return checks
        spec = self.spec
        catalog = spec.lab_catalog()
        required = set(spec.required_columns())
        checks = {spec.id_column: _id_check}
        for column in spec.baseline_score_columns():
            checks[column] = _number_check(*spec.baseline_outcome(column).scale, True)
        for column, cov in spec.covariates.items():
            if cov.kind == "numeric":
                checks[column] = _number_check(*(cov.range or (None, None)), column in required)
            else:
                checks[column] = _code_check(set(cov.level_codes()), column in required)
        for analyte, lab in spec.labs.items():
            checks[lab.column] = _lab_check
            if catalog[analyte].kind != "titre":
                checks[f"{lab.column}_unit"] = _unit_check
        if set(checks) != set(self.patient_model.model_fields):  # the checks must cover the model's fields exactly
            raise RuntimeError(f"column checks out of step with the request model: {sorted(set(checks) ^ set(self.patient_model.model_fields))}")
        self._checks = checks
        return checks

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
        explained = {o: plan.explain(parsed[o]) if good else [] for o, plan in self.plan.plans.items()}
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


_ID_PATTERN = re.compile(S.PATIENT_ID_PATTERN)
_NUMBERS = (float, int)


def _blank_to_none(values: list[Any]) -> list[Any]:
    """:func:`_is_blank` cells as None (inlined: it runs once per cell of a file)."""
    return [None if v is None or (type(v) is float and v != v) or (type(v) is str and not v.strip()) or _is_blank(v) else v for v in values]


def _id_check(values: list[Any]) -> tuple[list[Any], np.ndarray]:
    values = _blank_to_none(values)
    passed = np.fromiter((type(v) is str and 1 <= len(v) <= 64 and _ID_PATTERN.fullmatch(v) is not None for v in values), dtype=bool, count=len(values))
    return values, passed


def _number_check(low: float | None, high: float | None, required: bool):
    def check(values: list[Any]) -> tuple[list[Any], np.ndarray]:
        values = _blank_to_none(values)
        numbers = np.fromiter((_as_float(v) for v in values), dtype=np.float64, count=len(values))
        with np.errstate(invalid="ignore"):
            passed = np.isfinite(numbers)
            if low is not None:
                passed &= numbers >= low
            if high is not None:
                passed &= numbers <= high
        if not required:
            passed |= np.fromiter((v is None for v in values), dtype=bool, count=len(values))
        return [None if v is None else float(x) for v, x in zip(values, numbers.tolist(), strict=True)], passed

    return check


def _as_float(value: Any) -> float:
    """A number cell as a float; NaN (left to the request model) for anything else, or an int too large for a float."""
    if type(value) in _NUMBERS:
        try:
            return float(value)
        except OverflowError:
            return math.nan
    return math.nan


def _code_check(codes: set[str], required: bool):
    def check(values: list[Any]) -> tuple[list[Any], np.ndarray]:
        values = _blank_to_none(values)
        known: dict[tuple[type, Any], str | None] = {}
        out = []
        for v in values:
            key = (type(v), v)
            if key not in known:
                code = level_key(v) if type(v) in (int, float, str) else None
                known[key] = code if code in codes else None
            out.append(known[key])
        passed = np.fromiter((c is not None for c in out), dtype=bool, count=len(out))
        if not required:
            passed |= np.fromiter((v is None for v in values), dtype=bool, count=len(values))
        return out, passed

    return check


def _lab_check(values: list[Any]) -> tuple[list[Any], np.ndarray]:
    values = _blank_to_none(values)
    out = [_as_float(v) if type(v) in _NUMBERS else v for v in values]
    passed = np.fromiter((v is None or (type(v) is float and v == v) or (type(v) is str and len(v) <= 32) for v in out), dtype=bool, count=len(out))
    out = [v if type(v) is not float or v == v else w for v, w in zip(out, values, strict=True)]  # too large: as given, for the model
    return out, passed


def _unit_check(values: list[Any]) -> tuple[list[Any], np.ndarray]:
    values = _blank_to_none(values)
    passed = np.fromiter((v is None or (type(v) is str and len(v) <= 16) for v in values), dtype=bool, count=len(values))
    return values, passed


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


def score_file(path: str | Path, spec: str | None = None, tracking_uri: str | None = None, out: str | Path | None = None) -> str | None:
    """``responders predict``: the same JSON as ``POST /predict``, rows with problems reported per row.

    Patients are validated and scored in chunks of :data:`FILE_CHUNK`, with a
    progress bar on a terminal (log lines otherwise). With ``out`` ending in
    ``.parquet`` or ``.jsonl`` the patients are scored column by column
    (:func:`score_table`) and written there, one row per patient; returns None then.
    """
    dataset_spec = load_spec(spec)
    max_batch = int(os.environ.get("RESPONDERS_MAX_BATCH", DEFAULT_MAX_BATCH))
    scorer = Scorer(dataset_spec, resolve_champions(dataset_spec, tracking_uri), max_batch=max_batch)
    scorer.batch_threads(os.cpu_count() or 1)
    if out is not None and Path(out).suffix.lower() in TABLE_SUFFIXES:
        if Path(path).suffix.lower() == ".json":
            rows = read_patients(path, dataset_spec)
            columns = {c: [r.get(c) for r in rows] for c in dict.fromkeys(k for r in rows for k in r)}
            table = score_table(scorer, columns, len(rows), rows.__getitem__)
        else:
            columns, n = read_patient_columns(path, dataset_spec)
            table = score_table_in_blocks(scorer, columns, n)
        write_table(table, Path(out), scorer)
        return None
    rows = read_patients(path, dataset_spec)
    return score_rows(scorer, rows).model_dump_json(indent=2)


def score_rows(scorer: Scorer, rows: list[dict[str, Any]], chunk: int = FILE_CHUNK) -> S.PredictResponse:
    """Validate and score file rows chunk by chunk (with progress); one response, rows in file order."""
    id_column = scorer.spec.id_column
    results: list[S.PatientPrediction] = []
    with task_progress(len(rows), "scoring", unit="patient") as progress:
        for start in range(0, len(rows), chunk):
            block = rows[start : start + chunk]
            validated = scorer.validate_rows(block)
            patients = [clean if clean is not None else {id_column: block[i].get(id_column)} for i, (clean, _) in enumerate(validated)]
            prior = {i: problems for i, (_, problems) in enumerate(validated) if problems}
            results.extend(scorer.predict(patients, prior_errors=prior).results)
            progress.update(len(block))
    scored = sum(r.predictions is not None for r in results)
    return S.PredictResponse(
        results=results, n_scored=scored, n_failed=len(results) - scored, models=scorer.refs, simulated_training_data=scorer.simulated
    )


TABLE_SUFFIXES = (".parquet", ".pq", ".jsonl")
SCORE_FIELDS = ("p_response_treated", "p_response_control", "benefit", "benefit_lower", "benefit_upper")


def score_table(scorer: Scorer, columns: dict[str, list[Any]], n: int, row: Any = None, offset: int = 0) -> pd.DataFrame:
    """A file's patients scored column by column: one row per patient, in file order (``responders predict`` to a table).

    The same checks, parse, models and numbers as ``POST /predict`` without a
    response object per patient: ``patient_id``; ``errors`` and ``warnings``
    (JSON text of the response's lists; errors null when the patient was
    scored); per outcome ``<outcome>_<field>`` for the scores
    (:data:`SCORE_FIELDS`: the interval as ``benefit_lower`` and
    ``benefit_upper``), ``<outcome>_patient_label`` and its reason, and
    ``<outcome>_answer``; all null for a patient with errors.
    """
    clean, prior = scorer.validate_columns(columns, n, row)
    parsed, issues = scorer.plan.parse_columns({c: clean.get(c, [None] * n) for c in scorer.plan.columns}, n)
    errors: dict[int, list[S.FieldProblem]] = {
        i: [S.FieldProblem(field=x.column, message=x.message(), code=_lab_code(x.reason)) for x in found] for i, found in issues.items()
    }
    for i, problems in prior.items():
        errors.setdefault(i, []).extend(problems)
    good = np.setdiff1d(np.arange(n), np.fromiter(errors, dtype=np.intp, count=len(errors)))
    subset: dict[int, Parsed] = {}
    usable = {o: subset.setdefault(id(p), p.rows(good)) for o, p in parsed.items()}
    ids = clean[scorer.spec.id_column]
    table: dict[str, Any] = {"patient_id": [str(v or f"row-{offset + i + 1}") for i, v in enumerate(ids)]}  # offset: rows before this block
    table["errors"] = _json_texts([errors.get(i) for i in range(n)], none_when_empty=True)
    warned: list[Any] = [None] * n
    for k, items in zip(good.tolist(), scorer.plan.warnings(usable) if len(good) else [], strict=True):
        warned[k] = tuple((w.code, w.field, w.message) for w in items)
    table["warnings"] = _warning_texts(warned)
    for outcome, plan in scorer.plan.plans.items():
        scores = plan.predict(usable[outcome]) if len(good) else None
        for name in SCORE_FIELDS:
            column = np.full(n, np.nan)
            if scores is not None:
                column[good] = getattr(scores, name)
            table[f"{outcome}_{name}"] = column
        for name in ("patient_label", "patient_label_reason"):
            column = np.full(n, None, dtype=object)
            if scores is not None:
                column[good] = np.asarray(getattr(scores, name), dtype=object)
            table[f"{outcome}_{name}"] = column
        answer = np.full(n, None, dtype=object)
        answer[good] = plan.model.label_policy.answer
        table[f"{outcome}_answer"] = answer
    return pd.DataFrame({k: pd.Series(v, dtype=object) if not isinstance(v, np.ndarray) or v.dtype == object else v for k, v in table.items()})


TABLE_BLOCK = 20_000  # patients per block of score_table: a BCF champion's draws for 20,000 patients take ~200 MB


def score_table_in_blocks(scorer: Scorer, columns: dict[str, list[Any]], n: int, block: int = TABLE_BLOCK) -> pd.DataFrame:
    """:func:`score_table` a block of rows at a time (bounded memory; one progress update per block)."""
    parts = []
    with task_progress(n, "scoring", unit="patient") as progress:
        for start in range(0, n, block):
            stop = min(n, start + block)
            parts.append(score_table(scorer, {c: v[start:stop] for c, v in columns.items()}, stop - start, offset=start))
            progress.update(stop - start)
    return pd.concat(parts, ignore_index=True) if parts else score_table(scorer, columns, 0)


def _warning_texts(rows: list[tuple | None]) -> list[str | None]:
    """Each row's warnings (code, field, message) as the response's JSON text of its ``warnings`` list (equal lists written once)."""
    written: dict[tuple, str] = {}
    out: list[str | None] = []
    for items in rows:
        if items is None:
            out.append(None)
            continue
        text = written.get(items)
        if text is None:
            listed = [{"code": code, "field": field, "message": message} for code, field, message in items]
            text = written[items] = json.dumps(listed, ensure_ascii=False, separators=(",", ":"))
        out.append(text)
    return out


def _json_texts(values: list[Any], none_when_empty: bool) -> list[str | None]:
    """Each row's list of response objects as the response's JSON text (equal lists written once)."""
    written: dict[tuple, str] = {}
    out: list[str | None] = []
    for items in values:
        if items is None or (none_when_empty and not items):
            out.append(None)
            continue
        key = tuple((type(x), *x.__dict__.values()) for x in items)
        text = written.get(key)
        if text is None:
            text = written[key] = json.dumps([x.model_dump(mode="json") for x in items], ensure_ascii=False, separators=(",", ":"))
        out.append(text)
    return out


def write_table(table: pd.DataFrame, out: Path, scorer: Scorer) -> None:
    """Parquet (the models and their answers' shared parts in the file's metadata) or JSON lines (one object per patient)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".jsonl":
        out.write_text(_jsonl(table))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    def plain(key: str, value: Any) -> tuple[str, Any]:
        if key == "wording":  # an event to prevent: its risk is 1 - p_response on each arm (as the API's `event` field says)
            return "event_to_prevent", value.event
        return key, value.model_dump(mode="json") if isinstance(value, BaseModel) else value

    shared = {o: dict(plain(k, v) for k, v in fixed.items()) for o, fixed in scorer._fixed.items()}
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = {**(arrow.schema.metadata or {}), b"responders": json.dumps({"outcomes": shared, "simulated_training_data": scorer.simulated}).encode()}
    pq.write_table(arrow.replace_schema_metadata(meta), out)


def _jsonl(table: pd.DataFrame) -> str:
    """One JSON object per row; numbers written as Python writes a float (the shortest text that reads back the same)."""
    texts = {}
    for column in table.columns:
        values = table[column].tolist()
        if column in ("errors", "warnings"):
            texts[column] = ["null" if v is None else v for v in values]
        elif table[column].dtype.kind == "f":
            texts[column] = ["null" if v != v else repr(v) for v in values]
        else:
            seen: dict[Any, str] = {}
            texts[column] = [seen[v] if v in seen else seen.setdefault(v, json.dumps(v, ensure_ascii=False)) for v in values]
    keys = [json.dumps(c) + ":" for c in table.columns]
    lines = ("{" + ",".join(k + v for k, v in zip(keys, row, strict=True)) + "}" for row in zip(*texts.values(), strict=True))
    return "\n".join(lines) + ("\n" if len(table) else "")


def as_dicts(patients: list[BaseModel]) -> list[dict[str, Any]]:
    return [p.model_dump() for p in patients]
