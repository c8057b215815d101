"""A verb's configuration class, made from the keys it names, and read from `key=value`s.

A verb (pgbench.config.verbs.VERBS) lists its keys and `verb_class` makes its frozen dataclass,
so `--help`, validation and the accepted keys all come from that one line. A field is one of:

- a knob (`model`, `seed`, ...): a field of sections.Knobs, declared once, one key;
- a component (`task`, `estimator`): `task=NAME` selects a registered class whose own fields
  are the `task.*` keys, so `estimator.baseline` exists only with `estimator=reinforce`
  (`task.*` alone in a verb's keys: the default task's keys without `task=`, as a suite);
- a section (`trainer`, `rollout`, ...): a dataclass of sections.SECTIONS, the `trainer.*` keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from pgbench import estimators, tasks
from pgbench.config.sections import SECTIONS, Knobs
from pgbench.errors import ConfigError
from pgbench.fields import (
    build,
    check_bounds,
    describe,
    field_keys,
    field_types,
    parse_value,
    type_name,
)

Row = tuple[str, str, str, str]  # (key, type, default, help) of one line of --help
COMPONENTS = {
    "task": (tasks.REGISTRY, "fr_en", "task to train on"),
    "estimator": (estimators.REGISTRY, "rloo", "estimator"),
}


@dataclasses.dataclass(frozen=True)
class Verb:
    """A verb's keys, in --help's order, and what it checks beyond each key's own bounds."""

    name: str  # the class made for it, as pgbench.config.verbs exports it (Config, SweepArgs...)
    summary: str
    keys: str  # its knobs and components, e.g. "task estimator model seed"
    sections: str = ""  # its sections, e.g. "trainer rollout"
    output: str = ""  # where it writes unless output_dir is given (`<time>`, `<task>`, ...)
    check: Callable[[Any], None] = lambda config: None  # rules that involve several keys


class Resolved:
    """Base of every verb's configuration: checked as it is built, flattened back into keys."""

    spec: Verb

    def __post_init__(self) -> None:
        check_bounds(self, "")  # the knobs; components and sections are checked when built
        self.spec.check(self)

    @property
    def mlflow_experiment(self) -> str:
        """Experiment that training runs log to: tracking.experiment, else the task name."""
        return self.tracking.experiment or self.task.name

    def estimator_names(self) -> list[str]:
        """The names listed in `estimators=`."""
        return [name.strip() for name in self.estimators.split(",") if name.strip()]

    def to_flat(self) -> dict[str, Any]:
        """Every key with its value, as `key=value` overrides would name them (--help's order)."""
        flat: dict[str, Any] = {}
        groups: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if "registry" in f.metadata or "section" in f.metadata:
                groups[f.name] = value
            if "section" not in f.metadata and f.metadata.get("choose", True):
                flat[f.name] = value.name if "registry" in f.metadata else value
        for name, obj in groups.items():
            flat |= {
                f"{name}.{key}": getattr(obj, f.name) for key, f in field_keys(type(obj)).items()
            }
        return flat


def verb_class(spec: Verb) -> type:
    """The frozen dataclass of a verb: one field per knob, component and section it names."""
    knobs, types = {f.name: f for f in dataclasses.fields(Knobs)}, typing.get_type_hints(Knobs)
    fields: list[tuple[str, Any, Any]] = []
    for key in spec.keys.split():
        name = key.removesuffix(".*")
        if name in COMPONENTS:
            registry, default, text = COMPONENTS[name]
            meta = {"help": f"{text}: {', '.join(registry.names())}", "registry": registry}
            meta |= {"default": default, "choose": name == key}
            fields.append((name, Any, dataclasses.field(metadata=meta)))  # built by resolve
            continue
        meta = dict(knobs[name].metadata)
        if name == "output_dir":
            meta["help"] += f" (empty = {spec.output})"
        field = dataclasses.field(default=knobs[name].default, metadata=meta)
        fields.append((name, types[name], field))
    for name in spec.sections.split():
        section = SECTIONS[name]
        field = dataclasses.field(default_factory=section, metadata={"section": section})
        fields.append((name, section, field))
    namespace = {"__module__": "pgbench.config.verbs", "spec": spec}  # picklable by its name
    return dataclasses.make_dataclass(
        spec.name, fields, bases=(Resolved,), namespace=namespace, frozen=True, kw_only=True
    )


def output_path(config: Any, **names: Any) -> Path:
    """Where a verb writes: its `output_dir`, or its pattern (as `--help` shows it) with
    `<time>` and the given `names` filled in."""
    if config.output_dir:
        return Path(config.output_dir)
    names = {"time": f"{datetime.now():%Y%m%d-%H%M%S}"} | names
    return Path(re.sub(r"<(\w+)>", lambda m: str(names[m.group(1)]), config.spec.output))


def chosen(verb: type, values: Mapping[str, Any]) -> dict[str, type]:
    """The class of each component of `verb`: named in `values`, else the default."""
    classes = {}
    for f in dataclasses.fields(verb):
        if "registry" in f.metadata:
            choice = values.get(f.name) if f.metadata["choose"] else None
            classes[f.name] = f.metadata["registry"].get_class(str(choice or f.metadata["default"]))
    return classes


def accepts(verb: type, key: str) -> bool:
    """Whether `key` is a knob of `verb` or lies in one of its components or sections (whether
    that component or section has the field is checked when it is built)."""
    head, dot, _ = key.partition(".")
    f = {f.name: f for f in dataclasses.fields(verb)}.get(head)
    if f is None:
        return False
    if "registry" in f.metadata:
        return bool(dot) or f.metadata["choose"]
    return bool(dot) == ("section" in f.metadata)


def run_defaults(classes: Mapping[str, type]) -> dict[str, tuple[Any, str]]:
    """key -> (default, the task or estimator that sets it): the selected classes'
    run_defaults (Task.run_defaults, Estimator.run_defaults)."""
    return {key: (v, cls.name) for cls in classes.values() for key, v in cls.run_defaults.items()}


def rows(verb: type, selected: Mapping[str, str]) -> list[Row]:
    """(key, type, default, help) of every key of `verb`, the selected components' included;
    a default the task or estimator changes (their run_defaults) shows as `32 (fr_en)`."""
    classes, types = chosen(verb, selected), field_types(verb)
    knobs: list[Row] = []
    groups: list[Row] = []  # the components' and sections' keys
    for f in dataclasses.fields(verb):
        meta = f.metadata
        if f.name in classes and meta["choose"]:
            knobs.append((f.name, "str", repr(meta["default"]), meta["help"]))
        if f.name in classes or "section" in meta:
            groups += describe(classes.get(f.name) or meta["section"], f"{f.name}.")
        else:
            knobs.append((f.name, type_name(types[f.name]), repr(f.default), meta["help"]))
    changed = run_defaults(classes)
    return [
        (key, kind, f"{changed[key][0]!r} ({changed[key][1]})" if key in changed else default, text)
        for key, kind, default, text in knobs + groups
    ]


def arguments(verb: type, values: Mapping[str, Any], verbs: Iterable[type]) -> dict[str, Any]:
    """The keyword arguments of `verb(...)` from key -> value (text is parsed), each part built
    and checked; the selected task's and estimator's run_defaults apply to the keys the verb
    takes and `values` does not set. An unknown key, or another verb's, is a ConfigError."""
    values, classes = dict(values), chosen(verb, values)
    for key, (value, _) in run_defaults(classes).items():
        if accepts(verb, key):
            values.setdefault(key, value)
    selected = {name: cls.name for name, cls in classes.items()}
    valid = {row[0] for row in rows(verb, selected)}
    kwargs: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    types = field_types(verb)
    for key, value in values.items():
        if key not in valid:
            raise _unknown(key, verb, selected, valid, verbs)
        head, dot, rest = key.partition(".")
        if dot:
            groups.setdefault(head, {})[rest] = value
        elif head not in classes:
            kwargs[key] = parse_value(key, value, types[key]) if isinstance(value, str) else value
    for f in dataclasses.fields(verb):
        part = classes.get(f.name) or f.metadata.get("section")
        if part is not None:
            kwargs[f.name] = build(part, f"{f.name}.", groups.get(f.name, {}))
    return kwargs


def _unknown(
    key: str, verb: type, selected: Mapping[str, str], valid: set[str], verbs: Iterable[type]
) -> ConfigError:
    """The error for a key `verb` does not take: another estimator's, another verb's, or a typo."""
    section, _, rest = key.partition(".")
    owners = []
    if section == "estimator":
        registry = estimators.REGISTRY
        owners = [n for n in registry.names() if rest in field_keys(registry.get_class(n))]
        if owners and "estimator" in selected:
            return ConfigError(
                f"{key} belongs to estimator={' or '.join(owners)}, not {selected['estimator']}"
            )
    if owners or any(key in {row[0] for row in rows(other, selected)} for other in verbs):
        parts = verb.spec.keys.split()
        used = (
            parts
            + [f"{k}.*" for k in parts if k in COMPONENTS]
            + [f"{name}.*" for name in verb.spec.sections.split()]
        )
        return ConfigError(f"key {key!r} does not apply here; keys used: {', '.join(sorted(used))}")
    close = difflib.get_close_matches(key, sorted(valid), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown key {key!r}{hint} (pgbench <verb> --help lists all keys)")
