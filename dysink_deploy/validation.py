"""Field checks shared by the config dataclasses: each failure is a `ConfigError` naming the field.

Torch-free (the numpy-only runtime reads configs too). `strict_from_dict` builds a dataclass from a
JSON object, refusing unknown, missing and mistyped fields by name.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Collection, Mapping

from .errors import ConfigError

__all__ = ["is_int", "positive_ints", "require", "strict_from_dict", "typed"]


def require(cond: bool, message: str) -> None:
    """ConfigError(message) unless `cond`."""
    if not cond:
        raise ConfigError(message)


def positive_ints(obj: Any, names: list[str]) -> None:
    """Each named attribute of `obj` is an int > 0 (bools refused), or a ConfigError naming it."""
    for name in names:
        value = getattr(obj, name)
        require(
            isinstance(value, int) and not isinstance(value, bool) and value > 0,
            f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}",
        )


def typed(value: Any, kind: str) -> bool:
    """Does `value` (from JSON) fit the field annotation `kind`?"""
    if kind.startswith("Optional["):
        return value is None or typed(value, kind[len("Optional["):-1])
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind.startswith("tuple["):
        inner = kind[len("tuple["):-1].split(", ")
        if not isinstance(value, (list, tuple)):
            return False
        if inner[-1] == "...":
            return all(typed(v, inner[0]) for v in value)
        return len(value) == len(inner) and all(typed(v, k) for v, k in zip(value, inner))
    return True


def strict_from_dict(cls, values: Any, where: str, optional: Collection[str] | None = None):
    """cls(**values) with unknown, missing and mistyped fields refused by name (ConfigError).
    optional: the fields that may be left out (they take the dataclass default); None: every field
    that has a default."""
    name = cls.__name__
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: {name} must be a JSON object, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: {name} has unknown field(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    missing = [n for n, f in fields.items() if n not in values and (
        f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING if optional is None
        else n not in optional)]
    if missing:
        rule = "" if optional is None else "; every field must be given (to_dict writes them all: none is defaulted)"
        raise ConfigError(f"{where}: {name} is missing field(s) {', '.join(missing)}{rule}")
    for key, value in values.items():
        kind = fields[key].type
        if not typed(value, kind):
            raise ConfigError(f"{where}: {name}.{key} must be {kind.replace('Optional[', 'null or ').rstrip(']') if kind.startswith('Optional[') else kind}, got {value!r}")
    return cls(**values)


def is_int(v) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)
