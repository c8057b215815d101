"""A verb's configuration class, made from the keys it names, and read from `key=value`s.

A verb (pgbench.config.verbs.VERBS) lists its keys and `verb_class` makes its frozen dataclass,
so `--help`, validation and the accepted keys all come from that one line. A verb takes:

- knobs (`model`, `seed`, ...): fields of sections.Knobs, declared once, one key each;
- components (`task`, `estimator`): `task=NAME` selects a registered class whose own fields
  are the `task.*` keys, so `estimator.baseline` exists only with `estimator=reinforce`
  (`task.*` alone in a verb's keys: the default task's keys without `task=`, as a suite);
- sections (`trainer`, `rollout`, ...): dataclasses of sections.SECTIONS, the `trainer.*` keys.

The class keeps the split as `knobs` (its top-level keys) and `groups` (head -> the section
class or the component's registry), which every function below reads.
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
    Row,
    build,
    check_bounds,
    describe,
    field_keys,
    parse_values,
)
from pgbench.registry import Registry

COMPONENTS: dict[str, tuple[Registry, str, str]] = {
    "task": (tasks.REGISTRY, "fr_en", "task to train on"),
    "estimator": (estimators.REGISTRY, "rloo", "estimator"),
}


@dataclasses.dataclass(frozen=True)
class Verb:
    """A verb's keys, in --help's order, and what it checks beyond each key's own bounds."""

    name: str  # the class made for it, as pgbench.config.verbs exports it (Config, SweepArgs...)
    summary: str
    keys: str  # its knobs, components and sections, e.g. "task estimator seed trainer rollout"
    output: str = ""  # where it writes unless output_dir is given (`<time>`, `<task>`, ...)
    checks: tuple[Callable[[Any], None], ...] = ()  # rules that involve several keys


class Resolved:
    """Base of every verb's configuration: checked as it is built, flattened back into keys."""

    spec: Verb
    knobs: tuple[str, ...]  # top-level keys, in --help's order (`task` where it is chosen)
    groups: dict[str, Any]  # `trainer` -> TrainerConfig, `task` -> the task registry, ...

    def __post_init__(self) -> None:
        check_bounds(self, "")  # the knobs; components and sections are checked when built
        for check in self.spec.checks:
            check(self)

    @property
    def mlflow_experiment(self) -> str:
        """Experiment that training runs log to: tracking.experiment, else the task name."""
        return self.tracking.experiment or self.task.name

    def estimator_names(self) -> list[str]:
        """The names listed in `estimators=`."""
        return [name.strip() for name in self.estimators.split(",") if name.strip()]

    def to_flat(self) -> dict[str, Any]:
        """Every key with its value, as `key=value` overrides would name them (--help's order)."""
        flat = {k: getattr(self, k) for k in self.knobs}
        flat |= {k: flat[k].name for k in COMPONENTS if k in flat}
        for head in self.groups:
            part = getattr(self, head)
            flat |= {
                f"{head}.{k}": getattr(part, f.name) for k, f in field_keys(type(part)).items()
            }
        return flat


def verb_class(spec: Verb) -> type:
    """The frozen dataclass of a verb: one field per knob, component and section it names."""
    knobs, groups, fields, types = [], {}, [], typing.get_type_hints(Knobs)
    for key in spec.keys.split():
        name = key.removesuffix(".*")
        if name in COMPONENTS:
            groups[name] = COMPONENTS[name][0]
            fields.append((name, Any, dataclasses.field()))  # built by resolve
        elif name in SECTIONS:
            groups[name] = SECTIONS[name]
            fields.append((name, SECTIONS[name], dataclasses.field(default_factory=SECTIONS[name])))
        else:
            knob = Knobs.__dataclass_fields__[name]
            meta = dict(knob.metadata)
            if name == "output_dir":
                meta["help"] += f" (empty = {spec.output})"
            fields.append(
                (name, types[name], dataclasses.field(default=knob.default, metadata=meta))
            )
        if name == key and name not in SECTIONS:
            knobs.append(name)
    namespace = {"__module__": "pgbench.config.verbs", "spec": spec}  # picklable by its name
    namespace |= {"knobs": tuple(knobs), "groups": groups}
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


def parts(verb: type, values: Mapping[str, Any]) -> dict[str, type]:
    """The class behind each group of `verb`: a component's, named in `values` if the verb
    chooses it (else the default), and each section's."""
    classes = {}
    for head, group in verb.groups.items():
        if isinstance(group, Registry):
            choice = values.get(head) if head in verb.knobs else None
            group = group.get_class(str(choice or COMPONENTS[head][1]))
        classes[head] = group
    return classes


def accepts(verb: type, key: str) -> bool:
    """Whether `key` is a knob of `verb` or lies in one of its groups (whether that group's
    class has the field is checked when it is built)."""
    head, dot, _ = key.partition(".")
    return head in verb.groups if dot else key in verb.knobs


def run_defaults(classes: Mapping[str, type]) -> dict[str, tuple[Any, str]]:
    """key -> (default, the task or estimator that sets it): the run_defaults of the
    components among `classes` (Task.run_defaults, Estimator.run_defaults; sections have none)."""
    chosen = [cls for head, cls in classes.items() if head in COMPONENTS]
    return {k: (v, cls.name) for cls in chosen for k, v in cls.run_defaults.items()}


def rows(verb: type, selected: Mapping[str, str]) -> list[Row]:
    """(key, type, default, help) of every key of `verb`, the selected components' included;
    a default the task or estimator changes (their run_defaults) shows as `32 (fr_en)`."""
    classes = parts(verb, selected)
    own = {row[0]: row for row in describe(verb, "", set(verb.knobs) - set(COMPONENTS))}
    own |= {
        k: (k, "str", repr(d), f"{t}: {', '.join(r.names())}")
        for k, (r, d, t) in COMPONENTS.items()
    }
    found = [own[k] for k in verb.knobs]
    found += [row for head, cls in classes.items() for row in describe(cls, f"{head}.")]
    changed = run_defaults(classes)
    return [
        (key, kind, f"{changed[key][0]!r} ({changed[key][1]})" if key in changed else default, text)
        for key, kind, default, text in found
    ]


def arguments(verb: type, values: Mapping[str, Any], verbs: Iterable[type]) -> dict[str, Any]:
    """The keyword arguments of `verb(...)` from key -> value (text is parsed), each part built
    and checked; the selected task's and estimator's run_defaults apply to the keys the verb
    takes and `values` does not set. An unknown key, or another verb's, is a ConfigError."""
    values, classes = dict(values), parts(verb, values)
    for key, (value, _) in run_defaults(classes).items():
        if accepts(verb, key):
            values.setdefault(key, value)
    selected = {head: cls.name for head, cls in classes.items() if head in COMPONENTS}
    valid = key_set(verb, selected)
    groups: dict[str, dict[str, Any]] = {head: {} for head in classes}
    for key, value in values.items():
        if key not in valid:
            raise _unknown(key, verb, selected, valid, verbs)
        head, dot, rest = key.partition(".")
        if dot:
            groups[head][rest] = value
    top = {k: v for k, v in values.items() if "." not in k and k not in COMPONENTS}
    kwargs = parse_values(verb, "", top)
    return kwargs | {head: build(cls, f"{head}.", groups[head]) for head, cls in classes.items()}


def _unknown(
    key: str, verb: type, selected: Mapping[str, str], valid: set[str], verbs: Iterable[type]
) -> ConfigError:
    """The error for a key `verb` does not take: another estimator's, another verb's, or a typo."""
    head, _, rest = key.partition(".")
    owners = []  # the estimators that have this `estimator.*` key
    if head == "estimator":
        registry = estimators.REGISTRY
        owners = [n for n in registry.names() if rest in field_keys(registry.get_class(n))]
    if owners and "estimator" in selected:
        return ConfigError(
            f"{key} belongs to estimator={' or '.join(owners)}, not {selected['estimator']}"
        )
    if owners or any(key in key_set(v, selected) for v in verbs):
        used = ", ".join(sorted([*verb.knobs, *(f"{head}.*" for head in verb.groups)]))
        return ConfigError(f"key {key!r} does not apply here; keys used: {used}")
    close = difflib.get_close_matches(key, sorted(valid), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown key {key!r}{hint} (pgbench <verb> --help lists all keys)")


def key_set(verb: type, selected: Mapping[str, str]) -> set[str]:
    """The keys of `verb` with the selected components."""
    return {row[0] for row in rows(verb, selected)}
