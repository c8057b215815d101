"""Typed configuration fields: help text, range checks and `key=value` parsing.

Every configurable dataclass in pgbench (each section of the configuration, each
task, each estimator) declares its knobs with `knob(...)`, so one parser and one
checker serve them all and `--help` can print every key with its type and default.
"""

from __future__ import annotations

import dataclasses
import difflib
import operator
import typing
from collections.abc import Collection
from typing import Any, Literal

from pgbench.errors import ConfigError

BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
Row = tuple[str, str, str, str]  # (key, type, default, help) of one line of --help
BOUNDS = {"gt": (operator.gt, ">"), "ge": (operator.ge, ">="), "le": (operator.le, "<=")}


def knob(
    default: Any,
    help: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    key: str | None = None,
) -> Any:
    """A dataclass field with a help line and optional bounds (`gt`, `ge`, `le`).

    `key` names the field in `key=value` overrides when the attribute name must differ
    (a task's `reward` setting is stored as `reward_name`, beside its `reward()` method).
    """
    meta = {"help": help, "gt": gt, "ge": ge, "le": le, "key": key}
    return dataclasses.field(default=default, metadata=meta)


def field_keys(cls: type) -> dict[str, dataclasses.Field]:
    """The dataclass's fields by their override key."""
    return {f.metadata.get("key") or f.name: f for f in dataclasses.fields(cls)}


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type annotations of a dataclass's fields, by override key."""
    hints = typing.get_type_hints(cls)
    return {key: hints[f.name] for key, f in field_keys(cls).items()}


def type_name(tp: Any) -> str:
    """Human-readable name of a field type, e.g. `int` or `{k1|k3}`."""
    if typing.get_origin(tp) is Literal:
        return "{" + "|".join(str(a) for a in typing.get_args(tp)) + "}"
    return getattr(tp, "__name__", str(tp))


def parse_value(key: str, raw: str, tp: Any) -> Any:
    """Parse the text of an override into the field's type, or raise ConfigError."""
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if raw not in choices:
            raise ConfigError(f"{key}={raw!r} is not valid; choose one of: {', '.join(choices)}")
        return raw
    if tp is bool:
        if raw.lower() not in BOOLEANS:
            raise ConfigError(f"{key}={raw!r} is not a boolean; use true or false")
        return BOOLEANS[raw.lower()]
    if tp in (int, float):
        try:
            return tp(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r} is not a valid {tp.__name__}") from None
    return raw


def check_bounds(obj: Any, prefix: str) -> None:
    """Raise ConfigError naming the key if any field of `obj` violates its declared bounds."""
    for name, f in field_keys(type(obj)).items():
        value = getattr(obj, f.name)
        for bound, (holds, sign) in BOUNDS.items():
            limit = f.metadata.get(bound)
            if limit is not None and not holds(value, limit):
                raise ConfigError(f"{prefix}{name} must be {sign} {limit} (got {value})")


def parse_values(cls: type, prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of dataclass `cls` from values by override key (text is parsed),
    or a ConfigError naming an unknown key, with the close ones and the valid ones."""
    types, fields = field_types(cls), field_keys(cls)
    unknown = [key for key in values if key not in fields]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(fields), n=3)
        hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
        valid = ", ".join(prefix + k for k in fields) or "none"
        raise ConfigError(f"unknown key {prefix}{unknown[0]}{hint} (valid: {valid})")
    return {
        fields[key].name: parse_value(prefix + key, v, types[key]) if isinstance(v, str) else v
        for key, v in values.items()
    }


def build(cls: type, prefix: str, values: dict[str, Any]) -> Any:
    """Instantiate dataclass `cls` from values by override key (text is parsed), checked."""
    obj = cls(**parse_values(cls, prefix, values))
    check_bounds(obj, prefix)
    return obj


def describe(cls: type, prefix: str, keys: Collection[str] | None = None) -> list[Row]:
    """Rows of (key, type, default, help) for the fields of `cls` (those of `keys` if given)."""
    types = field_types(cls)
    return [
        (f"{prefix}{key}", type_name(types[key]), repr(f.default), f.metadata["help"])
        for key, f in field_keys(cls).items()
        if keys is None or key in keys
    ]
