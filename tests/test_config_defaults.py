"""Config defaults: default.yaml is the only place a default value is written; the schema, the auto rules and their descriptions agree with it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

import core.config
from core.config import (
    AUTO,
    AUTO_RULES,
    DRLearnerParams,
    LightGBMParams,
    TrainConfig,
    _default_text,
    _defaults,
    _Strict,
    load_config,
    smoke_config,
)
from core.errors import ConfigError


def test_no_default_value_is_written_in_the_schema():
    """core/config.py declares types, bounds and descriptions only: a default written there (``= 3``, ``Field(3, ...)``,
    ``default=``/``default_factory=``) fails here, naming the field, so default.yaml stays the one source."""
    source = (Path(core.config.__file__)).read_text(encoding="utf-8")
    written = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef) or not any(getattr(b, "id", "") == "_Strict" for b in node.bases):
            continue
        for statement in node.body:
            if not isinstance(statement, ast.AnnAssign) or statement.value is None:
                continue
            value = statement.value
            is_field = isinstance(value, ast.Call) and getattr(value.func, "id", "") == "Field"
            if not is_field or value.args or any(k.arg in ("default", "default_factory") for k in value.keywords):
                written.append(f"{node.name}.{statement.target.id}")  # type: ignore[attr-defined]
    assert written == []


def test_the_schema_defaults_are_default_yaml_at_every_place():
    """TrainConfig() is default.yaml, leaf by leaf, including a model used at several places (LightGBM settings)."""
    def flat(value, prefix=""):
        if isinstance(value, dict):
            return {k: v for key, sub in value.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): value}

    schema, packaged = flat(TrainConfig().model_dump(mode="json")), flat(yaml.safe_load(_default_text()))
    assert {k: (schema.get(k), packaged.get(k)) for k in schema.keys() | packaged.keys() if schema.get(k) != packaged.get(k)} == {}
    assert TrainConfig() == load_config(None)
    lightgbm = yaml.safe_load(_default_text())["candidates"]["dr_learner"]["final"]
    assert DRLearnerParams().final.model_dump() == lightgbm != LightGBMParams().model_dump()


def test_a_setting_missing_from_default_yaml_is_named_at_import():
    class Gate(_Strict):
        max_brier_excess: float
        not_in_the_file: int

    with pytest.raises(RuntimeError, match=r"default.yaml gives no default for gate\.not_in_the_file$"):
        _defaults("gate")(Gate)


@pytest.mark.parametrize("path", list(AUTO_RULES))
def test_each_auto_rule_is_applied_and_described_as_defined(path):
    rule = AUTO_RULES[path]
    *parents, leaf = path.split(".")
    model, config = TrainConfig, load_config(None)
    for part in parents:
        model, config = model.model_fields[part].annotation, getattr(config, part)
    assert getattr(config, leaf) == AUTO, f"{path} is not auto in default.yaml"

    def resolved(n):
        value = load_config(None).resolved(n)
        for part in path.split("."):
            value = getattr(value, part)
        return value

    assert resolved(rule.threshold - 1) == rule.small and resolved(rule.threshold) == rule.large
    words = [f"{v:,}" if isinstance(v, int) else str(v) for v in (rule.threshold, rule.large, rule.small) if v is not None]
    description = model.model_fields[leaf].description or ""
    line = next(line for line in _default_text().splitlines() if re.match(rf"\s*{leaf}:\s*auto\b", line))
    assert all(w in description for w in words), (path, words, description)
    assert all(w in line for w in words), (path, words, line)


def test_an_explicit_value_wins_over_the_rule_and_the_smoke_config_is_a_valid_override():
    assert load_config(None, cv={"folds": 7}).resolved(50_000).cv.folds == 7
    assert smoke_config().cv.folds == 3 and smoke_config(cv={"folds": 4}).cv.folds == 4


def test_bcf_keeps_a_thousand_draws_at_every_size_and_refuses_the_old_auto():
    """Issue 21: the served BCF retains at least 1,000 draws; the old auto (400 from 2,000 patients) is named, not guessed."""
    assert {load_config(None).resolved(n).candidates.bcf.num_mcmc for n in (99, 2_000, 10**6)} == {1000}
    with pytest.raises(ConfigError, match=r"num_mcmc no longer takes auto \(it was 1,000 below 2,000 patients and 400"):
        load_config(None, candidates={"bcf": {"num_mcmc": "auto"}})
