"""A protocol file: the TOML tables of a suite (pgbench/runs/protocol.py plans it).

Tables: [suite] (tasks, estimators, seeds, id, variance), [overrides], [task.NAME],
[variant.NAME] (extra columns), [tune] (pgbench/runs/tuning.py), [stats] (equivalence
margins), [seeds] (adaptive seeds, reports/sequential.py) and [probe.NAME] (known effects,
reports/probes.py). A suite id and a variant name are folder names: one path component of
[A-Za-z0-9_.-] without '..'; a variant name holds no -t<N> or -s<N> part and is not
`variance`, so that it names no other cell.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgbench.errors import ConfigError
from pgbench.reports import probes
from pgbench.runs.tuning import Tune, read_tune

PROTOCOLS = Path(__file__).parents[1] / "protocols"
# keys of a protocol's [suite] table
SUITE_TABLE = {"tasks", "estimators", "seeds", "id", "variance"}
TABLES = {"suite", "overrides", "task", "variant", "tune", "stats", "seeds", "probe"}
# a protocol's [seeds] table (adaptive seeds, reports/sequential.py) as the suite's keys
SEEDS_TABLE = {"initial": "seeds", "max": "suite.seeds_max", "batch": "suite.seeds_batch"}
# the reward transforms (pgbench/train/reward_transforms.py): a variant with only these is a
# property of its estimator, in the report's property card
TRANSFORMS = {f"reward.{k}" for k in ("offset", "scale", "flip", "noise_std", "permute")}
VARIANCE = "variance"  # the column name of a task's `pgbench variance` cell
SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # a suite id or variant name: one path component
GENERATED = re.compile(r"(^|-)[ts][0-9]+(-|$)")  # the -t<point> and -s<seed> parts of cell names


@dataclass(frozen=True)
class Protocol:
    """A protocol file's tables: keys for every run, keys per task, variants, tuning."""

    common: dict[str, Any]
    per_task: dict[str, dict]
    variants: dict[str, dict]
    tune: Tune | None = None
    margins: dict[str, float] = field(default_factory=dict)  # [stats] margin.<task> = x
    probes: list[probes.Probe] = field(default_factory=list)  # [probe.NAME] tables


def protocol_path(name: str) -> Path:
    """A shipped protocol by name, or the user's TOML file."""
    shipped = PROTOCOLS / f"{name}.toml"
    if shipped.is_file():
        return shipped
    path = Path(name).expanduser()
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in PROTOCOLS.glob("*.toml")))
        raise ConfigError(f"suite={name}: no such protocol; shipped: {names}, or a .toml file")
    return path


def read_protocol(path: Path) -> Protocol:
    """The tables of a protocol TOML file, checked for form."""
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    extra = sorted(set(data) - TABLES)
    bad = sorted(set(data.get("suite", {})) - SUITE_TABLE)
    if extra or bad:
        wrong = ", ".join([f"[{t}]" for t in extra] + [f"suite.{k}" for k in bad])
        raise ConfigError(
            f"{path}: unknown {wrong}; valid: [suite] {sorted(SUITE_TABLE)}, "
            "[overrides], [task.NAME], [variant.NAME], [tune], [stats], [seeds], [probe.NAME]"
        )
    stats = data.get("stats", {})
    if set(stats) - {"margin"} or not isinstance(stats.get("margin", {}), dict):
        raise ConfigError(f"{path}: [stats] takes margin.<task> = <number> only (got {stats})")
    suite = {
        k if k in ("estimators", "seeds") else f"suite.{k}": v
        for k, v in data.get("suite", {}).items()
    }
    for key in ("suite.tasks", "estimators"):
        if isinstance(suite.get(key), list):
            suite[key] = ",".join(suite[key])
    variants = _variants(data.get("variant", {}), path)
    tune = read_tune(data["tune"], str(path)) if "tune" in data else None
    common = suite | _seeds(data.get("seeds", {}), path) | data.get("overrides", {})
    found = probes.parse(data.get("probe", {}), str(path))
    return Protocol(common, data.get("task", {}), variants, tune, stats.get("margin", {}), found)


def _seeds(table: Any, path: Path) -> dict[str, Any]:
    """A protocol's [seeds] table (initial, max, batch) as the suite's keys."""
    if not isinstance(table, dict) or set(table) - set(SEEDS_TABLE):
        raise ConfigError(
            f"{path}: [seeds] takes initial, max and batch (adaptive seeds), got {table}"
        )
    return {SEEDS_TABLE[key]: value for key, value in table.items()}


def check_name(name: str, what: str) -> None:
    """A suite id or variant name becomes a folder name: one safe path component."""
    if not SAFE_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"{what}={name!r} is not a valid name; use letters, digits, '_', '-' and '.' "
            "(no '..', no '/')"
        )


def _variants(tables: Any, path: Path) -> dict[str, dict]:
    """The protocol's [variant.NAME] tables, each checked: a safe name that no generated cell
    name can take, and a table with its estimator."""
    if not isinstance(tables, dict) or not all(isinstance(k, dict) for k in tables.values()):
        raise ConfigError(
            f'{path}: write each variant as a table, [variant.NAME] with estimator = "<estimator>"'
        )
    for name, keys in tables.items():
        check_name(name, f"{path}: [variant.NAME] name")
        if GENERATED.search(name) or name == VARIANCE:
            raise ConfigError(
                f"{path}: [variant.{name}] would collide with generated cell names "
                f"(-t<N>, -s<N>, {VARIANCE}); rename it"
            )
        if "estimator" not in keys:
            raise ConfigError(f'{path}: [variant.{name}] needs estimator = "<estimator>"')
    return tables


def reward_transforms(variants: dict[str, dict]) -> dict[str, tuple[str, str]]:
    """The variants that only transform their estimator's training reward (TRANSFORMS,
    the probes') -> (estimator, the transform as `key=value` items)."""
    found = {}
    for name, keys in variants.items():
        rest = {k: v for k, v in keys.items() if k not in ("estimator", "tasks")}
        if rest and set(rest) <= TRANSFORMS:
            label = ",".join(f"{k.removeprefix('reward.')}={v}" for k, v in sorted(rest.items()))
            found[name] = (keys["estimator"], label)
    return found
