"""What every verb's configuration class is made of, and how it is read from `key=value`s.

A verb's class (pgbench.config.verbs) is a frozen dataclass written in source whose fields are:

- top-level knobs (`model`, `seed`, ...): `model: str = top("model")` takes the default,
  bounds and help of the knob declared once in sections.Knobs (whose type it repeats, checked
  by tests/pgbench/config/test_sections.py);
- components (`task`, `estimator`): `task: Task = component()`; `task=NAME` selects the
  registered class (a Catalog of pgbench.tasks or pgbench.estimators; or a plug-in's, by entry
  point or `pkg.module:Class`: pgbench.registry) whose own fields are the `task.*` keys, so
  `estimator.baseline` exists only with `estimator=reinforce`
  (`component(chosen=False)`: the default task's `task.*` keys without `task=`, as a suite);
- sections (`trainer`, `rollout`, ...): `trainer: TrainerConfig = section(TrainerConfig)`, one
  dataclass of sections.SECTIONS, the `trainer.*` keys.

So `--help`, validation and the accepted keys all come from the class and the knobs it names.
The names of components, every key outside them and the values of knobs and sections are
checked without importing a component (nor torch): `check_early`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from pgbench.config.sections import SECTIONS, Knobs
from pgbench.errors import ConfigError
from pgbench.estimators import CATALOG as ESTIMATORS
from pgbench.fields import Row, build, check_bounds, describe, field_keys, parse_values
from pgbench.registry import Catalog
from pgbench.tasks import CATALOG as TASKS

COMPONENTS: dict[str, tuple[Catalog[Any], str, str]] = {  # name -> (catalog, default, help)
    "task": (TASKS, "fr_en", "task to train on"),
    "estimator": (ESTIMATORS, "rloo", "estimator"),
}


@dataclasses.dataclass(frozen=True)
class Verb:
    """What a verb's class says of itself beyond its fields."""

    summary: str  # one line of `pgbench --help`
    output: str = ""  # where it writes unless output_dir is given (`<time>`, `<task>`, ...)
    checks: tuple[Callable[[Any], None], ...] = ()  # rules that involve several keys
    name: str = ""  # the class's name (Config, SweepArgs, ...), filled in by Resolved


def top(name: str) -> Any:
    """The field of the top-level knob `name`: its default, bounds and help from sections.Knobs."""
    knob = Knobs.__dataclass_fields__[name]
    return dataclasses.field(default=knob.default, metadata=knob.metadata)


def section(cls: type) -> Any:
    """The field of a section (`trainer`, ...): `cls` with its defaults unless keys set them."""
    return dataclasses.field(default_factory=cls)


def component(*, chosen: bool = True) -> Any:
    """The field of a component (`task`, `estimator`), built by resolve from its `name.*` keys
    and, where `chosen`, from `name=` (else the default one)."""
    return dataclasses.field(metadata={"chosen": chosen})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Resolved:
    """Base of every verb's configuration: checked as it is built, flattened back into keys."""

    spec: ClassVar[Verb]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "spec" in vars(cls):  # a verb's class, not a base of several (verbs.Training)
            cls.spec = dataclasses.replace(cls.spec, name=cls.__name__)

    def __post_init__(self) -> None:
        check_bounds(self, "")  # the knobs; components and sections are checked when built
        for check in self.spec.checks:
            check(self)

    def to_flat(self) -> dict[str, Any]:
        """Every key with its value, as `key=value` overrides would name them (--help's order)."""
        flat = {k: getattr(self, k) for k in knobs(type(self))}
        # a task or estimator from outside pgbench by its import string or entry point
        flat |= {k: COMPONENTS[k][0].saved(type(flat[k])) for k in COMPONENTS if k in flat}
        for prefix in prefixes(type(self)):
            value = getattr(self, prefix)
            flat |= {
                f"{prefix}.{k}": getattr(value, f.name) for k, f in field_keys(type(value)).items()
            }
        return flat


def knobs(verb: type[Resolved]) -> tuple[str, ...]:
    """The top-level keys of `verb`, in --help's order: its knobs and the components it chooses."""
    return tuple(
        f.name
        for f in dataclasses.fields(verb)
        if f.name not in SECTIONS and f.metadata.get("chosen", True)
    )


def prefixes(verb: type[Resolved]) -> tuple[str, ...]:
    """The components and sections of `verb`, components first, by the prefix of their keys
    (`trainer` of `trainer.lr`)."""
    names = [f.name for f in dataclasses.fields(verb)]
    return tuple(n for n in names if n in COMPONENTS) + tuple(n for n in names if n in SECTIONS)


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`["a=1", "b.c=x"]` -> `{"a": "1", "b.c": "x"}`, rejecting malformed or repeated keys."""
    overrides: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {arg!r} (see --help for the keys)")
        if key in overrides:
            raise ConfigError(f"key {key} is given twice")
        overrides[key] = value
    return overrides


def output_path(config: Any, **names: Any) -> Path:
    """Where a verb writes: its `output_dir`, or its pattern (as `--help` shows it) with
    `<time>` and the given `names` filled in."""
    if config.output_dir:
        return Path(config.output_dir)
    names = {"time": f"{datetime.now():%Y%m%d-%H%M%S}"} | names
    return Path(re.sub(r"<(\w+)>", lambda m: str(names[m.group(1)]), config.spec.output))


def classes(verb: type[Resolved], values: Mapping[str, Any]) -> dict[str, type[Any]]:
    """The class behind each component and section of `verb`: a component's is the one named
    (or given) in `values` if the verb chooses it (else the default); importing it may import
    torch."""
    found: dict[str, type[Any]] = {}
    for prefix in prefixes(verb):
        if prefix in COMPONENTS:
            catalog, default, _ = COMPONENTS[prefix]
            choice = values.get(prefix) if prefix in knobs(verb) else None
            if isinstance(choice, type):  # a class already found (arguments)
                found[prefix] = choice
            else:
                found[prefix] = catalog.get_class(str(choice or default))
        else:
            found[prefix] = SECTIONS[prefix]
    return found


def accepts(verb: type[Resolved], key: str) -> bool:
    """Whether `key` is a top-level key of `verb` or lies in one of its components or sections
    (whether that class has the field is checked when it is built)."""
    prefix, dot, _ = key.partition(".")
    return prefix in prefixes(verb) if dot else key in knobs(verb)


def run_defaults(
    verb: type[Resolved], found: Mapping[str, type[Any]], values: Mapping[str, Any]
) -> dict[str, tuple[Any, str]]:
    """key -> (default, what sets it): the run_defaults of the components among `found` that
    `verb` chooses (Task.run_defaults, Estimator.run_defaults; a suite's runs take their own
    task's), then the task's model_defaults for the model `values` names (else the task's
    default model): `4 (fr_en, model=smollm2)`."""
    chosen = {
        prefix: cls
        for prefix, cls in found.items()
        if prefix in COMPONENTS and prefix in knobs(verb)
    }
    changed = {k: (v, cls.name) for cls in chosen.values() for k, v in cls.run_defaults.items()}
    task = chosen.get("task")
    if task is not None and task.model_defaults:
        model = str(values.get("model") or changed.get("model", (Knobs().model,))[0])
        own = task.model_defaults.get(model, {})
        changed |= {k: (v, f"{task.name}, model={model}") for k, v in own.items()}
    return changed


def _own_rows(verb: type[Resolved]) -> dict[str, Row]:
    """The rows of the top-level keys of `verb`, output_dir's with the verb's own pattern."""
    found = {row[0]: row for row in describe(verb, "", set(knobs(verb)) - set(COMPONENTS))}
    if "output_dir" in found:
        key, kind, default, text = found["output_dir"]
        found[key] = (key, kind, default, f"{text} (empty = {verb.spec.output})")
    for name, (catalog, default, text) in COMPONENTS.items():
        names = ", ".join(catalog.names() + catalog.plugins())
        found[name] = (name, "str", repr(default), f"{text}: {names}, or pkg.module:Class")
    return found


def rows(verb: type[Resolved], selected: Mapping[str, Any]) -> list[Row]:
    """(key, type, default, help) of every key of `verb`, the selected components' included;
    a default the task or estimator changes (their run_defaults) shows as `32 (fr_en)`, one
    the task changes for the model `selected` names as `8 (fr_en, model=smollm2)`."""
    found = classes(verb, selected)
    own = _own_rows(verb)
    listed = [own[k] for k in knobs(verb)]
    listed += [row for prefix, cls in found.items() for row in describe(cls, f"{prefix}.")]
    changed = run_defaults(verb, found, selected)
    return [
        (key, kind, f"{changed[key][0]!r} ({changed[key][1]})" if key in changed else default, text)
        for key, kind, default, text in listed
    ]


def light_keys(verb: type[Resolved]) -> set[str]:
    """The keys of `verb` known without importing a component: its top-level keys and the keys
    of its sections (not `task.*` nor `estimator.*`)."""
    found = set(knobs(verb))
    for prefix in prefixes(verb):
        if prefix in SECTIONS:
            found |= {f"{prefix}.{k}" for k in field_keys(SECTIONS[prefix])}
    return found


def check_keys(
    verb: type[Resolved], values: Mapping[str, Any], verbs: Iterable[type[Resolved]]
) -> None:
    """The ConfigError of an unknown component name, or of a key outside the components that
    `verb` does not take; found without importing a component (nor torch)."""
    for prefix, (catalog, _, _) in COMPONENTS.items():
        if prefix in knobs(verb) and values.get(prefix):
            catalog.check(str(values[prefix]))
    valid = light_keys(verb)
    for key in values:
        if key.partition(".")[0] not in COMPONENTS or "." not in key:
            if key not in valid:
                raise _unknown(key, verb, {}, valid, verbs)


def check_early(
    verb: type[Resolved], values: Mapping[str, Any], verbs: Iterable[type[Resolved]]
) -> None:
    """What can be checked without importing a component (nor torch): the components' names,
    every key outside them, and the values of the top-level knobs and of the sections."""
    check_keys(verb, values, verbs)
    build(Knobs, "", {k: v for k, v in values.items() if k in knobs(verb) and k not in COMPONENTS})
    for prefix in prefixes(verb):
        if prefix in SECTIONS:
            dotted = {
                k.partition(".")[2]: v for k, v in values.items() if k.startswith(f"{prefix}.")
            }
            build(SECTIONS[prefix], f"{prefix}.", dotted)


def arguments(
    verb: type[Resolved], values: Mapping[str, Any], verbs: Iterable[type[Resolved]]
) -> dict[str, Any]:
    """The keyword arguments of `verb(...)` from key -> value (text is parsed), each component
    and section built and checked; the selected task's and estimator's run_defaults apply to
    the keys the verb takes and `values` does not set. An unknown key, or another verb's, is a
    ConfigError."""
    check_keys(verb, values, verbs)
    values, found = dict(values), classes(verb, values)
    for key, (value, _) in run_defaults(verb, found, values).items():
        if accepts(verb, key):
            values.setdefault(key, value)
    selected = {prefix: cls for prefix, cls in found.items() if prefix in COMPONENTS}
    valid = key_set(verb, selected)
    dotted: dict[str, dict[str, Any]] = {prefix: {} for prefix in found}
    for key, value in values.items():
        if key not in valid:
            raise _unknown(key, verb, selected, valid, verbs)
        prefix, dot, rest = key.partition(".")
        if dot:
            dotted[prefix][rest] = value
    top_level = {k: v for k, v in values.items() if "." not in k and k not in COMPONENTS}
    kwargs = parse_values(verb, "", top_level)
    return kwargs | {
        prefix: build(cls, f"{prefix}.", dotted[prefix]) for prefix, cls in found.items()
    }


def _unknown(
    key: str,
    verb: type[Resolved],
    selected: Mapping[str, Any],
    valid: set[str],
    verbs: Iterable[type[Resolved]],
) -> ConfigError:
    """The error for a key `verb` does not take: another estimator's, another verb's, or a typo."""
    prefix, _, rest = key.partition(".")
    owners = []  # the estimators that have this `estimator.*` key
    if prefix == "estimator":
        catalog = ESTIMATORS
        owners = [n for n in catalog.names() if rest in field_keys(catalog.get_class(n))]
    if owners and "estimator" in selected:
        return ConfigError(
            f"{key} belongs to estimator={' or '.join(owners)}, not {selected['estimator'].name}"
        )
    if owners or any(key in _keys_of(v, prefix, selected) for v in verbs):
        used = ", ".join(sorted([*knobs(verb), *(f"{p}.*" for p in prefixes(verb))]))
        return ConfigError(f"key {key!r} does not apply here; keys used: {used}")
    close = difflib.get_close_matches(key, sorted(valid), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown key {key!r}{hint} (pgbench <verb> --help lists all keys)")


def _keys_of(verb: type[Resolved], prefix: str, selected: Mapping[str, Any]) -> set[str]:
    """The keys of `verb` that a key with this prefix could be (a component's need its class)."""
    return key_set(verb, selected) if prefix in COMPONENTS else light_keys(verb)


def key_set(verb: type[Resolved], selected: Mapping[str, Any]) -> set[str]:
    """The keys of `verb` with the selected components (names, or classes)."""
    return {row[0] for row in rows(verb, selected)}
