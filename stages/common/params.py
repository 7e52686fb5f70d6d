"""Loading params.yaml and validating it before a stage does any work.

Every value is checked against a small declarative schema (see ``stages/settings.py``). A bad
value raises :class:`ParamError` whose message names the dotted key, the value found and what is
allowed, so a typo in params.yaml stops the run with a sentence instead of a traceback an hour in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

PARAMS_FILE = Path("params.yaml")

# A validator takes a raw YAML value and its dotted key, returns the cleaned value or raises.
Validator = Callable[[Any, str], Any]


class ParamError(ValueError):
    """A parameter is missing, unknown or outside what its stage allows."""


def _fail(key: str, value: Any, allowed: str) -> ParamError:
    return ParamError(f"{key} = {value!r} is not allowed: expected {allowed}")


def _bounds_text(minimum: float | None, maximum: float | None, *, open_min: bool, open_max: bool) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if open_min else '>='} {minimum}")
    if maximum is not None:
        parts.append(f"{'<' if open_max else '<='} {maximum}")
    return " and ".join(parts)


def integer(*, minimum: int | None = None, maximum: int | None = None) -> Validator:
    allowed = "an integer" + (f" {_bounds_text(minimum, maximum, open_min=False, open_max=False)}"
                              if minimum is not None or maximum is not None else "")

    def check(value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(key, value, allowed)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise _fail(key, value, allowed)
        return value

    return check


def number(
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_min: bool = False,
    open_max: bool = False,
) -> Validator:
    bounds = _bounds_text(minimum, maximum, open_min=open_min, open_max=open_max)
    allowed = "a finite number" + (f" {bounds}" if bounds else "")

    def check(value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _fail(key, value, allowed)
        too_low = minimum is not None and (value <= minimum if open_min else value < minimum)
        too_high = maximum is not None and (value >= maximum if open_max else value > maximum)
        if too_low or too_high:
            raise _fail(key, value, allowed)
        return float(value)

    return check


def one_of(*choices: Any) -> Validator:
    allowed = "one of " + ", ".join(repr(c) for c in choices)

    def check(value: Any, key: str) -> Any:
        if value not in choices:
            raise _fail(key, value, allowed)
        return value

    return check


def boolean() -> Validator:
    """true or false; 0 and 1 are refused (YAML spells booleans out)."""

    def check(value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise _fail(key, value, "true or false")
        return value

    return check


def nullable(item: Validator, meaning: str) -> Validator:
    """``null`` (with the ``meaning`` it has for this key) or a value that ``item`` accepts."""

    def check(value: Any, key: str) -> Any:
        if value is None:
            return None
        try:
            return item(value, key)
        except ParamError as error:
            raise ParamError(f"{error}, or null ({meaning})") from None

    return check


def list_of(item: Validator, *, length: int | None = None, min_length: int = 1,
            nullable_items: bool = False) -> Validator:
    size = f"exactly {length}" if length is not None else f"at least {min_length}"

    def check(value: Any, key: str) -> list:
        if not isinstance(value, list):
            raise _fail(key, value, f"a list of {size} items")
        if (length is not None and len(value) != length) or len(value) < min_length:
            raise _fail(key, value, f"a list of {size} items (got {len(value)})")
        return [None if (v is None and nullable_items) else item(v, f"{key}[{i}]")
                for i, v in enumerate(value)]

    return check


def gymnasium_env_id() -> Validator:
    """An environment id registered in Gymnasium (Atari ids come from ale-py)."""

    def check(value: Any, key: str) -> str:
        import ale_py
        import gymnasium

        gymnasium.register_envs(ale_py)
        if not isinstance(value, str) or value not in gymnasium.envs.registry:
            raise _fail(key, value, "an environment id registered in Gymnasium "
                        "(e.g. 'CartPole-v1', 'LunarLander-v3', 'BreakoutNoFrameskip-v4')")
        return value

    return check


def section(fields: Mapping[str, Validator],
            checks: Sequence[tuple[str, Callable[[SimpleNamespace], bool]]] = ()) -> Validator:
    """A mapping with exactly these keys; ``checks`` are (what must hold, predicate) across keys."""

    def check(value: Any, key: str) -> SimpleNamespace:
        if not isinstance(value, Mapping):
            raise _fail(key, value, f"a mapping with keys {', '.join(fields)}")
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ParamError(f"{key}.{unknown[0]} is not a known parameter; "
                             f"allowed keys in {key}: {', '.join(fields)}")
        missing = [name for name in fields if name not in value]
        if missing:
            raise ParamError(f"{key}.{missing[0]} is missing; {key} needs: {', '.join(fields)}")
        cleaned = SimpleNamespace(**{name: fields[name](value[name], f"{key}.{name}") for name in fields})
        for requirement, predicate in checks:
            if not predicate(cleaned):
                raise ParamError(f"{key} is not allowed: {requirement}")
        return cleaned

    return check


def mapping_of(item: Validator, *, min_length: int = 1) -> Validator:
    """A mapping from names (identifiers, as they appear in output paths) to values ``item`` accepts."""

    def check(value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, Mapping) or len(value) < min_length:
            raise _fail(key, value, f"a mapping of at least {min_length} named entries")
        for name in value:
            if not (isinstance(name, str) and name.isidentifier()):
                raise _fail(f"{key}.{name}", name, "a name made of letters, digits and underscores")
        return {name: item(entry, f"{key}.{name}") for name, entry in value.items()}

    return check


def read_params_file(path: Path = PARAMS_FILE) -> dict[str, Any]:
    if not path.exists():
        raise ParamError(f"{path} not found: run the stage from the pipeline's root directory")
    with path.open() as handle:
        try:
            data = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise ParamError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ParamError(f"{path} must be a mapping of sections, got {type(data).__name__}")
    return data


def validate_section(data: Mapping[str, Any], name: str, schema: Mapping[str, Validator],
                     path: Path = PARAMS_FILE) -> SimpleNamespace:
    if name not in schema:
        raise ParamError(f"no parameter schema for section '{name}'; known: {', '.join(schema)}")
    if name not in data:
        raise ParamError(f"{path} has no section '{name}'")
    try:
        return schema[name](data[name], name)
    except ParamError as error:
        raise ParamError(f"{path}: {error}") from None


def validate_all(data: Mapping[str, Any], schema: Mapping[str, Validator],
                 path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Validate every section; unknown top-level sections are errors too (likely typos)."""
    unknown = sorted(set(data) - set(schema))
    if unknown:
        raise ParamError(f"{path}: '{unknown[0]}' is not a known section; known: {', '.join(schema)}")
    return {name: validate_section(data, name, schema, path) for name in schema}
