"""A suite's plan: its protocol read, and every cell's config resolved before anything runs.

A suite is a shipped protocol (`suite=cpu`, `suite=gpu`: pgbench/protocols/*.toml), the user's
TOML file (`suite=path.toml`) or inline keys (`tasks=arith,fr_en estimators=rloo,grpo seeds=10
trainer.steps=100`). Keys apply in the order: protocol `[overrides]`, protocol `[task.NAME]`,
command line. A protocol's `[variant.NAME]` tables are extra columns; its `[tune]` table
(pgbench/runs/tuning.py) tunes every column of a task before its test seeds run.

Cells: `<task>-<column>-s<seed>` runs a column at the shared defaults;
`<task>-<column>-t<p>-s<seed>` runs it at tuning point p, on a tuning seed (tuning phase) or
on a test seed (test phase, the selected point only). A point whose config is the defaults'
is the defaults cell. The protocol file's tables: pgbench/runs/protocol_file.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgbench.config.compose import accepts, output_path
from pgbench.config.sections import SlurmConfig
from pgbench.config.urls import redact_values
from pgbench.config.verbs import Config, SuiteArgs, VarianceArgs, resolve
from pgbench.errors import ConfigError
from pgbench.estimators import CATALOG as ESTIMATORS
from pgbench.reports import probes, sequential, verdicts
from pgbench.runs.protocol_file import (
    VARIANCE,
    Protocol,
    check_name,
    protocol_path,
    read_protocol,
    reward_transforms,
)
from pgbench.runs.tuning import Tune
from pgbench.tasks import CATALOG as TASKS

ALIASES = {"suite": "suite.protocol", "tasks": "suite.tasks"}  # short CLI keys
NOT_PASSED = ("output_dir", "resume")  # the suite's own keys, not its cells'


@dataclass(frozen=True)
class Cell:
    """One run of the suite: its task, column, seed, tuning point and whole flat config."""

    task: str
    estimator: str  # the column it is ranked in: an estimator, or a protocol [variant.NAME]
    seed: int
    values: dict[str, Any]  # Config.to_flat() of the run (a variance cell: VarianceArgs's)
    point: int | None = None  # the tuning point; None: the shared defaults
    tuning: bool = False  # a tuning-phase run (a tuning seed, no test split)

    @property
    def name(self) -> str:
        at = "" if self.point is None else f"-t{self.point}"
        return f"{self.task}-{self.estimator}{at}-s{self.seed}"


@dataclass(frozen=True)
class Plan:
    """Everything the workers need; picklable, so spawned processes get a copy."""

    id: str
    out: Path
    storage: str  # a .journal path or an RDB URL
    workers: int
    threads: int
    heartbeat_s: int
    tracking_uri: str
    cells: list[Cell]  # queued from the start: tuning runs, runs at defaults, variance cells
    tune: Tune | None = None
    # (task, column, point) -> that point's test-phase cells, queued once it is selected
    candidates: dict[tuple[str, str, int], list[Cell]] = field(default_factory=dict)
    points: dict[tuple[str, str, int], dict[str, Any]] = field(default_factory=dict)  # its keys
    launcher: str = "local"  # suite.launcher: processes here, or a SLURM job array
    wait: bool = False  # slurm: wait for the jobs and write the report
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    proxy: str = ""  # suite.proxy: a proxy suite's output folder, for the transfer finding
    max_attempts: int = 3  # suite.max_attempts: failed attempts after which a cell is given up
    margins: dict[str, float] = field(default_factory=dict)  # task -> equivalence margin
    design: sequential.Design | None = None  # adaptive seeds: the looks; None: fixed seeds
    # adaptive seeds: (task, column at the defaults) -> its cells up to the most seeds
    reserve: dict[tuple[str, str], list[Cell]] = field(default_factory=dict)
    probes: list[probes.Probe] = field(default_factory=list)  # [probe.NAME]: known effects
    # the property card: a variant that only transforms its estimator's reward -> (its
    # estimator, the transform)
    properties: dict[str, tuple[str, str]] = field(default_factory=dict)

    def all_cells(self) -> list[Cell]:
        """Every cell the suite may run, each once."""
        cells = {c.name: c for c in self.cells}
        for group in [*self.candidates.values(), *self.reserve.values()]:
            cells.update({c.name: c for c in group})
        return list(cells.values())


def _checked(values: dict[str, Any], where: str, verb: type = Config) -> Any:
    try:
        return resolve(values, verb)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}" if where else str(err)) from None


def _keys_of(verb: type, values: dict[str, Any]) -> dict[str, Any]:
    """The keys of a suite's `values` that a cell of `verb` (Config, VarianceArgs) takes."""
    return {k: v for k, v in values.items() if accepts(verb, k) and k not in NOT_PASSED}


def cell_config(cell: Cell) -> Config | VarianceArgs:
    """The cell's resolved configuration: a run's, or a variance cell's."""
    return resolve(cell.values, VarianceArgs if cell.estimator == VARIANCE else Config)


def _same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: v for k, v in a.items() if k != "output_dir"} == {
        k: v for k, v in b.items() if k != "output_dir"
    }


@dataclass
class _Planner:
    """Builds the cells of one suite: checks each against the protocol file, then resolves it."""

    out: Path
    where: str  # the protocol file, named in its errors
    base: dict[str, Any]  # the keys of every run (protocol and command line)
    from_file: dict[str, Any]  # the protocol's keys alone

    def cell(self, task: str, column: str, keys: dict, seed: int, **kind: Any) -> Cell:
        cell = Cell(task, column, seed, {}, **kind)
        run = {"task": task, **keys, "seed": seed, "output_dir": str(self.out / cell.name)}
        _checked(self.from_file | run, f"{self.where} (cell {cell.name})")  # names the file
        resolved = _checked(self.base | run, f"cell {cell.name}")
        if not kind.get("tuning") and not resolved.eval.test:
            raise ConfigError(
                "eval.test=false: a suite ranks its runs by their test metric; remove the key "
                "(tuning runs skip the test split by themselves)"
            )
        return Cell(task, column, seed, resolved.to_flat(), **kind)

    def tuned(
        self, task: str, column: str, keys: dict, tune: Tune, test_seeds: int, defaults: list[Cell]
    ) -> tuple[list[Cell], dict[tuple[str, str, int], list[Cell]], dict[int, dict]]:
        """A column's tuning cells and, per point, its test-phase cells and its keys."""
        fixed = {k for k in keys if k != "estimator"}
        points = tune.points(keys["estimator"], fixed)
        tuning, candidates = [], {}
        for point, values in enumerate(points):
            try:
                for seed in tune.seeds:
                    run = keys | values | {"eval.test": False}
                    tuning.append(self.cell(task, column, run, seed, point=point, tuning=True))
                tests = [
                    self.cell(task, column, keys | values, s, point=point)
                    for s in range(test_seeds)
                ]
            except ConfigError as err:
                keys_tuned = ", ".join(values)
                raise ConfigError(f"[tune] {keys_tuned} of column {column}: {err}") from None
            same = defaults and _same_run(tests[0].values, defaults[0].values)
            candidates[(task, column, point)] = defaults if same else tests
        return tuning, candidates, dict(enumerate(points))


def _columns(config: SuiteArgs, variants: dict[str, dict], task: str) -> dict[str, dict]:
    # a column from outside pgbench (pkg.module:Class) is labelled with its path-safe name
    columns = {ESTIMATORS.run_name(n): {"estimator": n} for n in config.estimator_names()}
    for name, keys in variants.items():
        if task in keys.get("tasks", [task]):
            columns[name] = {k: v for k, v in keys.items() if k != "tasks"}
    return columns


def _variance_cell(config: SuiteArgs, values: dict[str, Any], task: str, out: Path) -> Cell:
    """A cell measuring the estimators' gradient variance on this task's policy."""
    name = Cell(task, VARIANCE, 0, {}).name
    run = {
        "task": task,
        "output_dir": str(out / name),
        "estimators": ",".join(config.estimator_names()),
    }
    resolved = _checked(_keys_of(VarianceArgs, values) | run, name, VarianceArgs)
    return Cell(task, VARIANCE, 0, resolved.to_flat())


def plan_suite(overrides: dict[str, Any]) -> Plan:
    """Resolve and check every cell's config before anything runs."""
    cli = {ALIASES.get(k, k): v for k, v in overrides.items()}
    for key in ("task", "estimator", "seed"):
        if key in cli:
            raise ConfigError(f"{key}= does not apply to a suite; use tasks=, estimators=, seeds=")
    source = str(cli.get("suite.protocol", ""))
    path = protocol_path(source) if source else None
    protocol = read_protocol(path) if path else Protocol({}, {}, {})
    where = str(path) if path else ""
    _checked(protocol.common, where, SuiteArgs)  # a bad key in the file is named as the file's
    config = _checked(protocol.common | cli, "", SuiteArgs)
    names = _task_names(config, protocol, where)
    suite_id = config.suite.id or (path.stem if path else _digest(protocol.common | cli))
    check_name(suite_id, "suite.id")
    out = output_path(config, id=suite_id)
    cells, candidates, points, reserve = _plan_cells(config, protocol, names, out, where, cli)
    storage = config.suite.storage or str((out / "suite.journal").resolve())
    margins = verdicts.margins(
        names, protocol.margins | verdicts.parse_margins(config.suite.margin)
    )
    return Plan(
        suite_id,
        out,
        storage,
        config.suite.workers,
        config.threads,
        config.suite.heartbeat_s,
        config.tracking.uri,
        sorted(cells, key=lambda c: not c.tuning),  # the tuning phase first
        protocol.tune,
        candidates,
        points,
        config.suite.launcher,
        config.suite.wait,
        config.slurm,
        config.suite.proxy,
        config.suite.max_attempts,
        margins,
        _design(config, protocol, names),
        reserve,
        _probes(config, protocol, names, where),
        reward_transforms(protocol.variants),
    )


def _probes(
    config: SuiteArgs, protocol: Protocol, names: list[str], where: str
) -> list[probes.Probe]:
    """The protocol's probes, each naming a task of the suite and two of its columns."""
    for probe in protocol.probes:
        if probe.task not in names:
            raise ConfigError(f"{where}: [probe.{probe.name}] task {probe.task} is not in {names}")
        columns = _columns(config, protocol.variants, probe.task)
        for column in (probe.a, probe.b):
            if column not in columns:
                raise ConfigError(
                    f"{where}: [probe.{probe.name}] names {column}, not a column of "
                    f"{probe.task}: {sorted(columns)}"
                )
    return protocol.probes


def _design(config: SuiteArgs, protocol: Protocol, names: list[str]) -> sequential.Design | None:
    """Adaptive seeds (suite.seeds_max > 0): the looks, judging every pair of every task."""
    if not config.suite.seeds_max:
        return None
    columns = [len(_columns(config, protocol.variants, task)) for task in names]
    pairs = sum(k * (k - 1) // 2 for k in columns)
    return sequential.Design.of(
        config.seeds, config.suite.seeds_max, config.suite.seeds_batch, pairs
    )


def _task_names(config: SuiteArgs, protocol: Protocol, where: str) -> list[str]:
    """The suite's tasks, checked against the protocol's tables, its tuning seeds and proxy."""
    names = [t.strip() for t in config.suite.tasks.split(",") if t.strip()]
    if not names:
        raise ConfigError(
            "no tasks: give suite=<cpu|cpu_offpolicy|gpu|file.toml> or tasks=NAME,..."
        )
    tune = protocol.tune
    unknown = sorted(set(protocol.per_task) - set(names)) or sorted(
        set(tune.tasks) - set(names) if tune else ()
    )
    if unknown:
        raise ConfigError(f"{where}: {unknown[0]} is not among the suite's tasks {names}")
    if tune:
        tune.check_seeds(max(config.seeds, config.suite.seeds_max))
    proxy = Path(config.suite.proxy)
    for name in ("runs.csv", "pairs.csv") if config.suite.proxy else ():
        if not (proxy / name).is_file():
            raise ConfigError(f"suite.proxy={proxy}: no {name} there; run the proxy suite first")
    return [TASKS.run_name(name) for name in names]  # path-safe: cells' folders


def _digest(values: dict[str, Any]) -> str:
    """The id of an unnamed suite: a hash of its keys. It does not change with a password (the
    saved configs never hold one), nor with where the cells run (suite.launcher, suite.wait,
    suite.proxy, slurm.*), how often a failing one is tried (suite.max_attempts), how the
    report judges them (suite.margin) or up to how many seeds (suite.seeds_max, seeds_batch):
    a re-run may wait for them, retry them, re-judge them or add seeds."""
    where_run = ("suite.launcher", "suite.wait", "suite.proxy", "suite.max_attempts")
    where_run += ("suite.margin", "suite.seeds_max", "suite.seeds_batch")
    what = {k: v for k, v in values.items() if k not in where_run and not k.startswith("slurm.")}
    shown = redact_values(what)
    return hashlib.sha1(json.dumps(shown, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _plan_cells(
    config: SuiteArgs, protocol: Protocol, names: list[str], out: Path, where: str, cli: dict
) -> tuple[list[Cell], dict, dict, dict]:
    """Every cell of every task (tuning cells, test candidates, default cells), the tuned
    columns' candidates, each tuning point's values and the untuned columns' cells up to the
    most seeds (`Plan.reserve`: with adaptive seeds, the seeds a look may add)."""
    common, tune = protocol.common, protocol.tune
    cells, candidates, points, reserve = [], {}, {}, {}
    seeds = max(config.seeds, config.suite.seeds_max)  # adaptive: up to the max
    for task in names:
        extra = {
            f"task.{k}" if "." not in k else k: v
            for k, v in protocol.per_task.get(task, {}).items()
        }
        planner = _Planner(
            out, where, _keys_of(Config, common | cli) | extra, _keys_of(Config, common) | extra
        )
        if config.suite.variance:
            cells.append(_variance_cell(config, common | cli | extra, task, out))
        tuned = tune is not None and tune.tunes(task)
        columns = _columns(config, protocol.variants, task)
        defaults = {
            label: [planner.cell(task, label, keys, s) for s in range(seeds)]
            for label, keys in columns.items()
        }
        if tuned:
            for label, keys in columns.items():
                tuning, tests, values = planner.tuned(
                    task, label, keys, tune, seeds, defaults[label]
                )
                cells += tuning
                candidates |= tests
                points |= {(task, label, p): v for p, v in values.items()}
        if not tuned or tune.defaults:  # seed-major: every column's first seeds finish first
            cells += [defaults[label][s] for s in range(config.seeds) for label in columns]
        if not tuned:
            reserve |= {(task, label): defaults[label] for label in columns}
    return cells, candidates, points, reserve
