"""Config defaults: default.yaml is the source, and the schema, the auto rules and their descriptions agree with it."""

from __future__ import annotations

import re

import pytest

from core.config import AUTO, AUTO_RULES, TrainConfig, _default_text, load_config, smoke_config


def test_the_schema_defaults_are_default_yaml():
    """A field default in core/config.py that drifts from core/configs/default.yaml fails here, naming the key."""
    def flat(value, prefix=""):
        if isinstance(value, dict):
            return {k: v for key, sub in value.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): value}

    schema, packaged = flat(TrainConfig().model_dump(mode="json")), flat(load_config(None).model_dump(mode="json"))
    assert {k: (schema.get(k), packaged.get(k)) for k in schema.keys() | packaged.keys() if schema.get(k) != packaged.get(k)} == {}


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
