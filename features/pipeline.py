"""One function builds the feature pipeline for a dataset spec; training fits it, serving reuses it.

The fitted pipeline is the single object that turns a raw patient row (labs as
report text, optional units) into model features, so training, serving and the
reports cannot drift apart. Helpers here read it back: feature descriptions for
clinicians, per-row warnings (imputed, below detection limit, outside the
training range, unseen category) and per-row lab errors.

:func:`compile_pipeline` makes the same fitted pipeline into a
:class:`features.plan.FeaturePlan` for scoring: each fitted transformer's NumPy
core (``features.cores``) and scikit-learn's own fitted steps (the categorical
imputer, the one-hot encoder) as their fitted attributes; the tests check it
against ``pipeline.transform`` cell by cell.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

from features.catalog import load_catalog
from features.cores import CategoricalFill, Detachable, FeatureInfo, OneHotLevels
from features.labs import LabIssue
from features.plan import FeaturePlan, InputWarning, Part
from features.transformers import (
    AutoantibodyFeatures,
    InflammationFeatures,
    LabFeatures,
    LabParser,
    MedianImputer,
    SymptomFeatures,
)

# A ``core.spec.DatasetSpec``: features sits below core (core's artefact holds a fitted feature pipeline),
# so it takes the spec as an argument and never imports it, not even for type checking.
DatasetSpec = Any


def build_feature_pipeline(spec: DatasetSpec, catalog_path: str | None = None) -> Pipeline:
    """The unfitted feature pipeline for ``spec``: parse labs -> impute -> engineer features.

    Every step is present only when the spec gives it inputs: a trial without
    labs has no lab imputer, inflammation or autoantibody features and no
    missing-lab indicators, rather than empty or constant ones.
    """
    catalog = spec.lab_catalog(load_catalog(catalog_path))
    spec.check_catalog(catalog)
    declared = tuple(spec.analytes.values())
    analytes = list(spec.labs)
    inflammation = [a for a in analytes if catalog[a].group == "inflammation"]
    autoantibody = [a for a in analytes if catalog[a].group == "autoantibody"]
    ungrouped = [a for a in analytes if catalog[a].group is None]
    with_lod = [a for a in analytes if catalog[a].lod is not None]
    baselines = spec.baseline_score_columns()
    numeric = baselines + [c for c in spec.numeric_covariates() if c not in baselines]
    categorical = spec.categorical_covariates()
    clash = set(analytes) & set(numeric + categorical)
    if clash:
        raise ValueError(f"covariate names clash with lab analyte keys: {sorted(clash)}")

    parse = LabParser(
        labs=tuple((a, lab.column, lab.unit) for a, lab in spec.labs.items()),
        numeric=tuple(numeric),
        categorical=tuple(categorical),
        catalog_path=catalog_path,
        declared=declared,
    )
    # A ColumnTransformer silently skips a part with no columns (it is never fitted), so parts are
    # added only when they have inputs; readers look parts up by name and treat absence as "none".
    impute_parts: list[tuple[str, Any, list[str]]] = []
    if analytes:
        impute_parts.append(("labs", MedianImputer(add_indicator=True), analytes))
    if numeric:
        impute_parts.append(("numeric", MedianImputer(add_indicator=False), numeric))
    if categorical:
        impute_parts.append(("categorical", SimpleImputer(strategy="most_frequent"), categorical))
    if with_lod:
        impute_parts.append(("flags", "passthrough", [f"{a}_below_lod" for a in with_lod]))
    impute = ColumnTransformer(impute_parts, verbose_feature_names_out=False)

    roles = spec.roles
    context = [c for c in (roles.age, roles.sex) if c]
    dominance = spec.cognitive_dominance
    symptom_inputs = list(dict.fromkeys(baselines + ([dominance.memory, dominance.pain] if dominance else [])))
    feature_parts: list[tuple[str, Any, list[str]]] = []
    if inflammation:
        feature_parts.append(
            (
                "inflammation",
                InflammationFeatures(
                    analytes=tuple(inflammation), age=roles.age, sex=roles.sex, female=roles.female, catalog_path=catalog_path,
                    declared=declared,
                ),
                inflammation + context,
            )
        )
    if autoantibody:
        feature_parts.append(
            ("autoantibody", AutoantibodyFeatures(analytes=tuple(autoantibody), catalog_path=catalog_path, declared=declared), autoantibody)
        )
    if ungrouped:
        feature_parts.append(("other_labs", LabFeatures(analytes=tuple(ungrouped), catalog_path=catalog_path, declared=declared), ungrouped))
    if symptom_inputs:
        feature_parts.append(
            (
                "symptoms",
                SymptomFeatures(
                    scores=tuple(baselines),
                    memory=dominance.memory if dominance else None,
                    pain=dominance.pain if dominance else None,
                ),
                symptom_inputs,
            )
        )
    other_numeric = [c for c in numeric if c not in baselines]
    if other_numeric:
        feature_parts.append(("covariates", "passthrough", other_numeric))
    if categorical:
        # The spec's levels fix the categories (reference level first), so a binary covariate is one
        # 0/1 indicator of its other level and every model sees the same columns, whatever a fold holds.
        levels = [spec.covariates[c].encoding_order() for c in categorical]
        feature_parts.append(
            (
                "categorical",
                OneHotEncoder(categories=levels, drop="if_binary", handle_unknown="ignore", sparse_output=False),
                categorical,
            )
        )
    flags = [f"{a}_below_lod" for a in with_lod] + [f"{a}_missing" for a in analytes]
    if flags:
        feature_parts.append(("flags", "passthrough", flags))
    features = ColumnTransformer(feature_parts, verbose_feature_names_out=False)

    pipeline = Pipeline([("parse", parse), ("impute", impute), ("features", features)])
    return pipeline.set_output(transform="pandas")


def fitted_parts(column_transformer: ColumnTransformer) -> dict[str, tuple[Any, list[str]]]:
    """Name -> (fitted transformer, its input columns) of a fitted ColumnTransformer (absent parts are absent)."""
    return {name: (est, list(cols)) for name, est, cols in column_transformer.transformers_ if name != "remainder"}


def categorical_levels(pipeline: Pipeline, spec: DatasetSpec) -> dict[str, tuple[list[str], list[str]]]:
    """Column -> (all level codes, the codes that have an indicator) of the fitted one-hot encoder."""
    parts = fitted_parts(pipeline.named_steps["features"])
    if "categorical" not in parts:
        return {}
    encoder, columns = parts["categorical"]
    out = {}
    for j, (column, levels) in enumerate(zip(columns, encoder.categories_, strict=True)):
        dropped = encoder.drop_idx_[j] if encoder.drop_idx_ is not None else None
        shown = [str(level) for k, level in enumerate(levels) if dropped is None or k != dropped]
        out[column] = ([str(level) for level in levels], shown)
    return out


def feature_info(pipeline: Pipeline, spec: DatasetSpec) -> dict[str, FeatureInfo]:
    """Readable description, unit and source of every output feature of a fitted pipeline."""
    parse: LabParser = pipeline.named_steps["parse"]
    catalog = parse.catalog_
    features: ColumnTransformer = pipeline.named_steps["features"]
    info: dict[str, FeatureInfo] = {}
    for transformer, _ in fitted_parts(features).values():
        if hasattr(transformer, "feature_info"):
            info.update({f.name: f for f in transformer.feature_info()})
    for column, (levels, shown) in categorical_levels(pipeline, spec).items():
        cov = spec.covariates[column]
        label = cov.label or column
        names = cov.level_names()
        reference = f" (vs {names.get(levels[0], levels[0])})" if len(levels) == 2 else ""
        for level in shown:
            info[f"{column}_{level}"] = FeatureInfo(
                f"{column}_{level}",
                f"{label}: {names.get(level, level)}{reference} (1 = yes)",
                "0/1",
                column,
                "covariate",
                f"{label}: {names.get(level, level)}",
            )
    for column in spec.baseline_score_columns():
        outcome = spec.baseline_outcome(column)
        label = spec.baseline_label(column)
        short = label if outcome.baseline_label else label.split(" (")[0]
        info[column] = FeatureInfo(column, label, outcome.unit, column, "symptom", short)
    if spec.cognitive_dominance is not None:
        info["cognitive_dominance"] = FeatureInfo(
            "cognitive_dominance",
            "Cognitive dominance: baseline memory problems minus pain (points; > 0 memory dominates)",
            "points",
            None,
            "symptom",
            "Cognitive dominance (memory minus pain)",
        )
    for column, cov in spec.covariates.items():
        if cov.kind == "numeric":
            group = "symptom" if column.endswith("_baseline") else "covariate"
            info[column] = FeatureInfo(column, cov.label or column, cov.unit, column, group, (cov.label or column).split(" (")[0])
    for analyte in spec.labs:
        lab = catalog[analyte]
        info[f"{analyte}_missing"] = FeatureInfo(
            f"{analyte}_missing", f"{lab.label} not measured, imputed (1 = yes)", "0/1", analyte, "data quality", f"{lab.label} missing"
        )
        if lab.lod is not None:
            info[f"{analyte}_below_lod"] = FeatureInfo(
                f"{analyte}_below_lod",
                f"{lab.label} below the detection limit ({lab.lod:g} {lab.unit}; 1 = yes)",
                "0/1",
                analyte,
                "data quality",
                f"{lab.label} below detection",
            )
    names = list(pipeline.get_feature_names_out())
    missing = [n for n in names if n not in info]
    if missing:
        raise RuntimeError(f"features without a description: {missing}")
    return {n: info[n] for n in names}


def feature_sources(pipeline: Pipeline, spec: DatasetSpec, X: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Which input each output feature comes from, for explanations with one driver per input.

    Returns, per feature, ``{source: share}``: share 1.0 for a feature with one
    source (a lab's log value, its flags and band; a covariate; the levels of a
    categorical), and per-row arrays for composite features (the inflammation
    index, markers above reference, ratios, autoantibody burden and index, cognitive
    dominance), whose SHAP credit is split by each input's part of the
    composite's deviation from its training average. Sources are analyte keys
    for labs and column names otherwise.
    """
    return compile_pipeline(pipeline, spec).sources(pipeline[:-1].transform(X))


def compile_pipeline(pipeline: Pipeline, spec: DatasetSpec) -> FeaturePlan:
    """A fitted feature pipeline as its cores (:class:`features.plan.FeaturePlan`): no scikit-learn object in it."""
    parts = {
        step: [_compiled_part(name, est, columns) for name, est, columns in pipeline.named_steps[step].transformers_ if name != "remainder"]
        for step in ("impute", "features")
    }
    names = [str(n) for n in pipeline.get_feature_names_out()]
    return FeaturePlan(spec, pipeline.named_steps["parse"].core(), parts["impute"], parts["features"], names, feature_info(pipeline, spec))


def _compiled_part(name: str, est: Any, columns: Any) -> Part:
    columns = list(columns)
    if isinstance(est, FunctionTransformer) and est.func is None:
        est = "passthrough"  # a fitted ColumnTransformer stands an identity FunctionTransformer in for "passthrough"
    if isinstance(est, str):
        if est != "passthrough":
            raise ValueError(f"cannot compile pipeline part {name!r}: {est!r}")
        return name, est, columns, columns
    if isinstance(est, SimpleImputer):
        core: Any = CategoricalFill(est.statistics_)
    elif isinstance(est, OneHotEncoder):
        core = OneHotLevels(est.categories_, est.drop_idx_)
    elif isinstance(est, Detachable):
        core = est.core()
    else:
        raise ValueError(f"cannot compile pipeline part {name!r}: {type(est).__name__} has no NumPy core")
    return name, core, columns, [str(c) for c in est.get_feature_names_out(columns)]


def lab_issues(pipeline: Pipeline, X: pd.DataFrame) -> dict[Any, list[LabIssue]]:
    """Lab cells that cannot be used, grouped by row label (rows absent have none)."""
    _, issues = pipeline.named_steps["parse"].parse(X)
    grouped: dict[Any, list[LabIssue]] = {}
    for issue in issues:
        grouped.setdefault(issue.row, []).append(issue)
    return grouped


def input_warnings(pipeline: Pipeline, spec: DatasetSpec, X: pd.DataFrame) -> list[list[InputWarning]]:
    """Per row: imputed values, values below detection limit, outside the training range, unseen categories."""
    parsed, _ = pipeline.named_steps["parse"].parse(X)
    raw = {c: X[c].to_numpy(dtype=object) for c in X.columns}
    return compile_pipeline(pipeline, spec).warnings({c: parsed[c].to_numpy() for c in parsed.columns}, len(X), raw)
