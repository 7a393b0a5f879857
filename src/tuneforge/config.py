"""Typed configs: YAML file + `--set key=value` overrides, every error reported at once.

Each stage has one pydantic model with `extra="forbid"`, so a misspelt key is an
error that names the key and lists the valid ones, never a silent default.
Nested keys are set with dots: `--set lora.r=8`.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from tuneforge.errors import Problem, TuneforgeError

C = TypeVar("C", bound=BaseModel)


class Strict(BaseModel):
    """Base for every config: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_overrides(pairs: list[str]) -> tuple[dict[str, Any], list[Problem]]:
    """Turn `a.b=1` strings into a nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    problems: list[Problem] = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(Problem("bad_override", f"'{pair}' is not KEY=VALUE (e.g. --set lora.r=8)", "--set"))
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(Problem("bad_override", f"'{key}' sets a key below a value", "--set"))
                break
        else:
            node[parts[-1]] = value
    return tree, problems


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path) -> tuple[dict[str, Any], list[Problem]]:
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, [Problem("file_not_found", "config file does not exist", where)]
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"{path}:{mark.line + 1}"
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return {}, [Problem("invalid_yaml", f"{reason}; fix the YAML syntax", where)]
    if data is None:
        return {}, []
    if not isinstance(data, dict):
        return {}, [Problem("invalid_config", "the top level must be a mapping of keys to values", where)]
    return data, []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The config class inside an annotation such as `Section`, `list[Section]` or `Section | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _walk(model: type[BaseModel], loc: tuple) -> tuple[list[str], type[BaseModel] | None]:
    """The user-facing key path of an error location (pydantic adds union-member tags such as
    `int` or `literal['auto']`, which are not keys) and the config class it ends in."""
    current: type[BaseModel] | None = model
    key: list[str] = []
    for part in loc:
        if isinstance(part, int):
            key.append(str(part))
            continue
        fields = getattr(current, "model_fields", None) or {}
        if part not in fields:
            break
        key.append(part)
        current = _model_in(fields[part].annotation)
    return key, current


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys at the nesting level where an unknown key was found."""
    key, current = _walk(model, loc[:-1])
    if len(key) != len(loc) - 1 or current is None:
        return []
    return sorted(current.model_fields)


_EXPECTED = {"int_parsing": "a whole number", "int_type": "a whole number", "int_from_float": "a whole number",
             "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
             "bool_type": "true or false", "string_type": "text", "list_type": "a list", "dict_type": "a mapping",
             "path_type": "a path"}


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else repr(value)


_BOUNDS = {"greater_than": ("above", "gt"), "greater_than_equal": ("of at least", "ge"),
           "less_than": ("below", "lt"), "less_than_equal": ("of at most", "le")}


def _plain(model: type[BaseModel], path: list[str], err: dict) -> tuple[str, str]:
    """The key and plain wording for pydantic's type errors (what is expected, what came);
    a position inside a fixed-length tuple (`split.2: Field required`) is reported on the
    tuple itself, with its default as the example. Other messages pass through."""
    kind, value = err["type"], err.get("input")
    index = int(path[-1]) if path and path[-1].isdigit() else None
    named = path[:-1] if index is not None else path
    info, current = None, model
    for part in named:
        if not part.isdigit():
            info = (getattr(current, "model_fields", None) or {}).get(part)
            current = _model_in(info.annotation) if info is not None else None
    default = getattr(info, "default", None)
    size = len(default) if isinstance(default, tuple) else 0
    if size and (index is not None or kind in ("tuple_type", "too_short", "too_long")):
        key, expected = ".".join(named), f"{size} values like {_shown(default)}"
        if index is not None and kind in _EXPECTED:
            return key, f"value {index + 1} is {value!r}, not {_EXPECTED[kind]} (expected {expected})"
        count = f"{len(value)}: " if isinstance(value, (list, tuple)) else ""
        return key, f"expected {expected}, got {count}{_shown(value)}"
    key = ".".join(path)
    if kind in ("too_short", "too_long"):
        limit = err["ctx"]["min_length" if kind == "too_short" else "max_length"]
        bound = f"{'at least' if kind == 'too_short' else 'at most'} {limit} item{'' if limit == 1 else 's'}"
        return key, f"expected {bound}, got {err['ctx']['actual_length']}"
    if kind in _EXPECTED:
        return key, f"expected {_EXPECTED[kind]}, got {_shown(value)}"
    if kind == "literal_error":
        return key, f"expected {err['ctx']['expected']}, got {_shown(value)}"
    if kind == "missing":
        return key, "required, but not given"
    if kind in _BOUNDS:
        words, bound = _BOUNDS[kind]
        return key, f"expected a number {words} {_shown(err['ctx'][bound])}, got {_shown(value)}"
    return key, err["msg"]


def problems_from_validation(model: type[BaseModel], exc: ValidationError, where: str) -> list[Problem]:
    problems = []
    messages: dict[str, list[str]] = {}
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            key = ".".join(str(p) for p in loc)
            valid = _field_names(model, loc)
            hint = f"; valid keys here: {', '.join(valid)}" if valid else ""
            problems.append(Problem("unknown_key", f"'{key}' is not a known key{hint}", where))
            continue
        key, plain = _plain(model, _walk(model, loc)[0], err)
        key = key or "(config)"
        for msg in plain.removeprefix("Value error, ").splitlines():
            if msg not in messages.setdefault(key, []):
                messages[key].append(msg)
    for key, found in messages.items():
        # a union field fails once per member: 'expected a whole number or 'auto', got 'x''
        got = {m.rpartition(", got ")[2] for m in found}
        if len(found) > 1 and len(got) == 1 and all(m.startswith("expected ") and ", got " in m for m in found):
            found = ["expected " + " or ".join(m[9:].rpartition(", got ")[0] for m in found) + f", got {got.pop()}"]
        if key == "(config)":
            problems += [Problem("invalid_value", msg, where) for msg in found]
        else:
            # a union field fails once per member type; one line per key reads better
            problems.append(Problem("invalid_value", f"{key}: {' or '.join(found)}", where))
    return problems


def build_config(
    model: type[C],
    path: Path | None = None,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
) -> C:
    """Layer YAML < explicit values (CLI flags) < --set overrides, validate once, report all."""
    problems: list[Problem] = []
    data: dict[str, Any] = {}
    if path is not None:
        data, found = read_yaml(Path(path))
        problems += found
    data = deep_merge(data, {k: v for k, v in (values or {}).items() if v is not None})
    tree, found = parse_overrides(overrides or [])
    problems += found
    data = deep_merge(data, tree)
    if problems:
        raise TuneforgeError(problems)
    where = str(path) if path else "config"
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = problems_from_validation(model, exc, where)
    # pydantic skips model-level checks once a field fails; run them anyway so every
    # problem is reported in one go
    combination = getattr(model, "combination_problems", None)
    if combination is not None:
        seen = {p.message for p in problems}
        problems += [Problem("invalid_value", msg, where) for msg in combination(data) if msg not in seen]
    raise TuneforgeError(problems)
