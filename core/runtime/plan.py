"""The scoring plan: a fitted artefact compiled, at load time, into array operations on patient dicts.

:class:`OutcomePlan` compiles one :class:`~core.runtime.artefact.ResponderModel`:
its feature pipeline into a :class:`features.plan.FeaturePlan` (the fitted
transformers' own NumPy cores) and its champion with the bootstrap refits or
posterior draws into a plan from :mod:`core.runtime.arms`. The answer and
label rule and the warnings are the model's own objects.
:class:`ScoringPlan` serves several outcomes (the service's champions) and
parses a request once for all of them: each raw value goes through
``features.labs`` exactly once, whatever the number of outcomes.

A request never touches pandas or scikit-learn's per-call machinery: patient
dicts become columns of Python values, the parser turns them into float
arrays, and everything after that is NumPy (plus LightGBM's or stochtree's own
predict for batches, and TreeSHAP for explanations). The answers equal
``ResponderModel.predict`` (the MLflow pyfunc path) to 1e-9; see
tests/test_scoring_plan.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.runtime.explain import PatientExplanation, explain_rows
from core.runtime.intervals import with_allowance
from features.labs import LabIssue
from features.plan import FeaturePlan, InputWarning

if TYPE_CHECKING:
    from core.runtime.artefact import ResponderModel


@dataclass
class Scores:
    """One outcome's answers for a batch of patients, as arrays (the prediction columns of the pyfunc model)."""

    p_response_treated: np.ndarray
    p_response_control: np.ndarray
    benefit: np.ndarray
    benefit_lower: np.ndarray
    benefit_upper: np.ndarray
    answer: str
    patient_label: np.ndarray  # object array: a label, or None when effect modification is not established
    patient_label_reason: list[str]
    population_label: str
    population_label_reason: str

    def frame(self, index: Any = None) -> pd.DataFrame:
        """The pyfunc model's prediction frame (for comparisons and files)."""
        n = len(self.benefit)
        columns = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("answer", "population_label", "population_label_reason"):
            columns[k] = [columns[k]] * n
        return pd.DataFrame(columns, index=index)


@dataclass
class Parsed:
    """A batch of patients parsed once: the parser's output columns and the unusable cells by row position."""

    n: int
    columns: dict[str, np.ndarray]
    issues: dict[int, list[LabIssue]]
    raw: Mapping[str, Sequence[Any]] = field(default_factory=dict)  # the input columns as sent (censored-lab warnings)
    # What outcomes with the same fitted feature pipeline share of this batch (imputed columns, features, warnings),
    # by (pipeline key, what): computed for the first such outcome, reused by the others.
    shared: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False, compare=False)

    def rows(self, keep: Sequence[int]) -> Parsed:
        """The same batch restricted to the rows ``keep`` (renumbered from 0); all of them: this batch, without issues."""
        index = np.asarray(keep, dtype=np.intp)
        if len(index) == self.n and np.array_equal(index, np.arange(self.n)):
            return Parsed(self.n, self.columns, {}, self.raw, self.shared) if self.issues else self
        raw = {c: [v[i] for i in index] for c, v in self.raw.items()}
        return Parsed(len(index), {c: v[index] for c, v in self.columns.items()}, {}, raw)


class OutcomePlan:
    """One outcome's model compiled for scoring."""

    def __init__(self, model: ResponderModel):
        import joblib

        from core.runtime.arms import compile_arms
        from features.pipeline import compile_pipeline

        self.model = model
        self.features: FeaturePlan = compile_pipeline(model.pipeline, model.spec)
        self.order = list(model.candidate.features_)
        missing = [name for name in self.order if name not in self.features.names]
        if missing:
            raise ValueError(f"the candidate uses features the pipeline does not make: {missing}")
        self.arms = compile_arms(model.candidate, model.ensemble, model.interval_level)
        self.allowance = (float(model.calibration_allowance), float(model.interval_level))  # (sd, level): with_allowance
        # Outcomes fitted on the same rows have equal feature pipelines: the same key, one computation per batch.
        self.pipeline_key = joblib.hash((model.pipeline, model.spec))
        self.columns_in_order = np.asarray([self.features.names.index(name) for name in self.order], dtype=np.intp)

    @property
    def input_columns(self) -> list[str]:
        return self.features.parser.input_columns()

    def parse(self, columns: Mapping[str, Sequence[Any]], n: int) -> Parsed:
        """Raw input columns (lists or arrays of the values as sent; absent columns are missing) parsed once."""
        parsed, issues = self.features.parse(columns, n)
        by_row: dict[int, list[LabIssue]] = {}
        for issue in issues:
            by_row.setdefault(int(issue.row), []).append(issue)
        return Parsed(n, parsed, by_row, columns)

    def _shared(self, parsed: Parsed, what: str, make) -> Any:
        key = (self.pipeline_key, what)
        if key not in parsed.shared:
            parsed.shared[key] = make()
        return parsed.shared[key]

    def matrix(self, parsed: Parsed) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The imputed columns and the feature matrix (columns in the candidate's order).

        Computed once per batch for all outcomes sharing this feature pipeline
        (the pipeline's features in its own order, then this candidate's columns picked).
        """
        imputed = self._shared(parsed, "imputed", lambda: self.features.impute(parsed.columns, parsed.n))
        every = self._shared(parsed, "features", lambda: self.features.features(imputed, parsed.n))
        return imputed, every[:, self.columns_in_order]

    def predict(self, parsed: Parsed) -> Scores:
        """Both probabilities, the benefit with its interval, the answer and both labels (rows without issues)."""
        policy = self.model.label_policy
        F = self.matrix(parsed)[1] if getattr(self.arms, "uses_features", True) else np.empty((parsed.n, 0))
        p1, p0, lower, upper = self.arms.predict(F)
        benefit = p1 - p0
        lower, upper = with_allowance(benefit, lower, upper, *self.allowance)
        labels = policy.label(lower, upper)
        return Scores(
            p1, p0, benefit, lower, upper, policy.answer, labels.patient_label, labels.patient_reason,
            labels.population_label, labels.population_reason,
        )

    def warnings(self, parsed: Parsed) -> list[list[InputWarning]]:
        return self._shared(parsed, "warnings", lambda: self.features.warnings(parsed.columns, parsed.n, parsed.raw))

    def explain(self, parsed: Parsed, top: int | None = None) -> list[PatientExplanation]:
        """SHAP drivers of benefit and P(response | treated), one per input (``core.runtime.explain``).

        ``top``: drivers kept per output, largest first (all when None); every contribution still counts in the sums.
        """
        imputed, F = self.matrix(parsed)
        p1, p0 = self.arms.point(F)
        explanation = self.model.candidate.explain(F, check=False, arms=(p1, p0))
        # The explained outputs must be the predictions the service returns.
        if not (np.allclose(explanation.p_treated.output, p1, rtol=0, atol=1e-6) and np.allclose(explanation.benefit.output, p1 - p0, rtol=0, atol=1e-6)):
            raise AssertionError(f"{self.model.candidate_name}: explained outputs differ from the predictions")
        sources = self._shared(parsed, "sources", lambda: self.features.sources(imputed))
        return explain_rows(self.model, explanation, sources, parsed.columns, top)

    # Frames (reports, tests, files read with pandas) ----------------------------------------------
    def parse_frame(self, raw: pd.DataFrame) -> Parsed:
        columns = {c: raw[c].to_numpy(dtype=object) for c in self.input_columns if c in raw.columns}
        return self.parse(columns, len(raw))

    def predict_frame(self, raw: pd.DataFrame) -> pd.DataFrame:
        """:meth:`predict` on a frame of patients without unusable values (raises like the pipeline otherwise)."""
        parsed = self._usable(self.parse_frame(raw))
        return self.predict(parsed).frame(raw.index)

    def explain_frame(self, raw: pd.DataFrame) -> list[PatientExplanation]:
        return self.explain(self._usable(self.parse_frame(raw)))

    @staticmethod
    def _usable(parsed: Parsed) -> Parsed:
        if parsed.issues:
            from features.cores import LabParseError

            raise LabParseError([issue for row in sorted(parsed.issues) for issue in parsed.issues[row]])
        return parsed


def parser_key(plan: OutcomePlan) -> tuple:
    """Outcomes whose parsers agree share one parse (the same spec gives the same parser)."""
    parser = plan.features.parser
    return (tuple(parser.labs), tuple(parser.numeric), tuple(parser.categorical), parser.catalog_path)


class ScoringPlan:
    """Several outcomes' plans (the service's champions) sharing one parse of every request."""

    def __init__(self, models: Mapping[str, ResponderModel]):
        self.plans = {outcome: model.plan() for outcome, model in models.items()}
        groups: dict[tuple, list[str]] = {}
        for outcome, plan in self.plans.items():
            groups.setdefault(parser_key(plan), []).append(outcome)
        self.groups = list(groups.values())
        self.columns = list(dict.fromkeys(c for plan in self.plans.values() for c in plan.input_columns))

    def parse(self, patients: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Parsed], dict[int, list[LabIssue]]]:
        """Every outcome's parsed batch and the unusable cells by row (each row and column once)."""
        return self.parse_columns({c: [p.get(c) for p in patients] for c in self.columns}, len(patients))

    def parse_columns(self, columns: Mapping[str, Sequence[Any]], n: int) -> tuple[dict[str, Parsed], dict[int, list[LabIssue]]]:
        """:meth:`parse` on the patients' columns (a file read column by column; absent columns are missing)."""
        parsed: dict[str, Parsed] = {}
        issues: dict[int, list[LabIssue]] = {}
        seen: set[tuple[int, str]] = set()
        for group in self.groups:
            batch = self.plans[group[0]].parse(columns, n)
            for outcome in group:
                parsed[outcome] = batch
            for row, found in batch.issues.items():
                for issue in found:
                    if (row, issue.column) not in seen:
                        seen.add((row, issue.column))
                        issues.setdefault(row, []).append(issue)
        return parsed, issues

    def warnings(self, parsed: Mapping[str, Parsed]) -> list[list[InputWarning]]:
        """Per row, every outcome's input warnings, each distinct warning once, in order."""
        n = next(iter(parsed.values())).n if parsed else 0
        merged: list[dict[tuple[str, str, str], InputWarning]] = [{} for _ in range(n)]
        seen: set[int] = set()
        for outcome, plan in self.plans.items():
            found = plan.warnings(parsed[outcome])
            if id(found) in seen:  # outcomes sharing a feature pipeline share its warnings of the batch
                continue
            seen.add(id(found))
            for i, items in enumerate(found):
                for w in items:
                    merged[i].setdefault((w.code, w.field, w.message), w)
        return [list(m.values()) for m in merged]
