"""Configuration and spec errors as one readable line per problem, with "did you mean" suggestions.

pydantic's ``ValidationError`` is precise but long (a 45-line traceback for
one misspelt key). ``ConfigError`` carries one line per problem, naming the
file and the dotted key, suggesting the nearest known key, literal value or
column name (``difflib``), and listing the known keys when nothing is close.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A configuration or spec file that cannot be used: ``problems`` holds one line each."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [f"{self.source}: {problem}" for problem in self.problems]


def suggest(word: Any, choices: Iterable[Any], n: int = 1) -> list[str]:
    """The closest ``n`` choices to ``word`` (case-insensitive), or none when nothing is close."""
    options = [str(c) for c in choices]
    folded = {o.casefold(): o for o in options}
    matches = difflib.get_close_matches(str(word).casefold(), list(folded), n=n, cutoff=0.6)
    return [folded[m] for m in matches]


def did_you_mean(word: Any, choices: Iterable[Any], prefix: str = "") -> str:
    """`` (did you mean cv.folds?)`` or an empty string."""
    matches = suggest(word, choices)
    return f" (did you mean {prefix}{matches[0]}?)" if matches else ""


def yaml_mapping(text: str, source: str) -> dict:
    """Parse YAML that must hold a mapping; syntax errors become a one-line ``ConfigError``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(source, [f"{where}not valid YAML ({problem})"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"must be a mapping of keys to values, not a {type(data).__name__}"])
    return data


def validation_problems(err: ValidationError, model: type[BaseModel], columns: Iterable[str] = ()) -> list[str]:
    """One line per pydantic error: dotted key, plain message, the value given and a suggestion.

    ``columns`` are the column names a spec declares; a model-level check that
    names an unknown column (``roles.age names 'agee'``) gets the nearest one suggested.
    """
    columns = sorted(set(columns))
    problems = []
    for error in err.errors(include_url=False):
        loc = tuple(error["loc"])
        key = _dotted(loc)
        kind = error["type"]
        if kind == "extra_forbidden":
            parent = _annotation_at(model, loc[:-1])
            known = sorted(_field_names(parent))
            prefix = f"{_dotted(loc[:-1])}." if loc[:-1] else ""
            hint = did_you_mean(loc[-1], known, prefix)
            if not hint and known:
                hint = f" (known keys{' under ' + _dotted(loc[:-1]) if loc[:-1] else ''}: {', '.join(known)})"
            problems.append(f"unknown key {key}{hint}")
            continue
        message = re.sub(r"^(Value|Assertion) error, ", "", error["msg"])
        if kind == "missing":
            problems.append(f"{key}: required key is missing")
            continue
        notes = []
        given = error.get("input")
        if loc and not isinstance(given, (dict, list)):
            notes.append(f"got {_short(given)}")
        allowed = _literal_values(_annotation_at(model, loc))
        if allowed and isinstance(given, str) and (match := suggest(given, allowed)):
            notes.append(f"did you mean {match[0]!r}?")
        if not loc and columns:
            # A model-level check naming a column the spec does not declare: suggest the nearest declared one
            # (unless the message already names it).
            unknown = [name for name in re.findall(r"'([^']+)'", message) if name not in columns]
            match = next((m[0] for name in unknown if (m := suggest(name, columns)) and f"'{m[0]}'" not in message), None)
            if match:
                notes.append(f"did you mean {match!r}?")
        line = f"{key}: {message}" if key else message
        problems.append(line + (f" ({'; '.join(notes)})" if notes else ""))
    return problems


def spec_columns(data: Any) -> list[str]:
    """Every column name a raw spec mapping declares (outcome baseline and follow-up, covariates, labs, id, arm)."""
    if not isinstance(data, dict):
        return []
    names: list[str] = []
    for outcome in (data.get("outcomes") or {}).values():
        if isinstance(outcome, dict):
            names += [str(outcome[k]) for k in ("baseline", "followup") if k in outcome]
    names += [str(c) for c in (data.get("covariates") or {})]
    for lab in (data.get("labs") or {}).values():
        if isinstance(lab, dict) and "column" in lab:
            names.append(str(lab["column"]))
    names += [str(data.get("id_column", "patient_id"))]
    arm = data.get("arm")
    if isinstance(arm, dict):
        names.append(str(arm.get("column", "arm")))
    return names


def _dotted(loc: Sequence[Any]) -> str:
    return ".".join(f"[{part}]" if isinstance(part, int) else str(part) for part in loc).replace(".[", "[")


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return annotation


def _annotation_at(model: Any, loc: Sequence[Any]) -> Any:
    """The type annotation found by following ``loc`` from ``model`` (None when it cannot be followed)."""
    annotation = model
    for part in loc:
        annotation = _unwrap(annotation)
        origin = get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            annotation = field.annotation
        elif origin is dict:
            annotation = get_args(annotation)[1]
        elif origin in (list, set, frozenset):
            annotation = get_args(annotation)[0]
        elif origin is tuple:
            args = get_args(annotation)
            annotation = args[0] if len(args) == 2 and args[1] is Ellipsis else args[part] if isinstance(part, int) and part < len(args) else None
        else:
            return None
    return _unwrap(annotation)


def _field_names(annotation: Any) -> list[str]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _literal_values(annotation: Any) -> list[str]:
    return [str(v) for v in get_args(annotation)] if get_origin(annotation) is Literal else []
