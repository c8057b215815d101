"""`pgbench suite`: a declared protocol of tasks x estimators x seeds at fixed budgets.

A suite is a shipped protocol (`suite=cpu`, `suite=gpu`: pgbench/protocols/*.toml), the user's
TOML file (`suite=path.toml`) or inline keys (`tasks=arith,fr_en estimators=rloo,grpo seeds=10
trainer.steps=100`). Keys apply in the order: protocol `[overrides]`, protocol `[task.NAME]`,
command line. Every cell's config is resolved and checked before the first run starts.

Scheduler: one Optuna study `suite-<id>` whose queue holds one enqueued trial per unfinished
cell (`study.enqueue_trial({"cell": i})`); `suite.workers=N` processes on this machine pop
cells from it, each with torch threads = cores // N. The storage is
`<output_dir>/suite.journal` (JournalFileBackend), or `suite.storage=postgresql://...` for
workers on several machines, with heartbeats: a cell whose worker died is re-queued.

Resume rule: the same command (same suite id) continues. A cell whose run directory
`<output_dir>/<task>-<estimator>-s<seed>` has summary.json is finished and never trained
again; one with only run.json was killed mid-run and resumes from its last checkpoint, in the
same MLflow run. Trials left RUNNING in a local journal by a killed suite are failed and
their cells queued again.

Outputs: runs.csv and the report of reports/suite_report.py (leaderboards, pairs, findings,
suite.md, suite.html, figures), logged as artifacts of the MLflow run `suite-<id>`; cell runs
are tagged pgbench.suite, .task, .estimator (the column: estimator or variant) and .seed.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from pgbench import tasks
from pgbench.compose import accepts
from pgbench.config import Config, SuiteArgs, VarianceArgs, resolve
from pgbench.errors import ConfigError
from pgbench.hardware import use_threads
from pgbench.tracking import SPOOL, MLflowTracker, check_reachable, write_json
from pgbench.urls import redact_values

PROTOCOLS = Path(__file__).parent / "protocols"
ALIASES = {"suite": "suite.protocol", "tasks": "suite.tasks"}  # short CLI keys
# keys of a protocol's [suite] table
SUITE_TABLE = {"tasks", "estimators", "seeds", "id", "variance"}
NOT_PASSED = ("output_dir", "resume")  # the suite's own keys, not its cells'
PARENT_ATTR = "mlflow_parent_run_id"
RUNS = ["task", "estimator", "seed", "metric", "value", "run_id"]
VARIANCE = "variance"  # the column name of a task's `pgbench variance` cell


@dataclass(frozen=True)
class Cell:
    """One run of the suite: its task, estimator (or variant name), seed and whole flat config."""

    task: str
    estimator: str  # the column it is ranked in: an estimator, or a protocol [variant.NAME]
    seed: int
    values: dict[str, Any]  # Config.to_flat() of the run (a variance cell: VarianceArgs's)

    @property
    def name(self) -> str:
        return f"{self.task}-{self.estimator}-s{self.seed}"


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
    cells: list[Cell]


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


def read_protocol(path: Path) -> tuple[dict[str, Any], dict[str, dict], dict[str, dict]]:
    """(keys for every run, keys per task, variants) of a protocol TOML file."""
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    extra = sorted(set(data) - {"suite", "overrides", "task", "variant"})
    bad = sorted(set(data.get("suite", {})) - SUITE_TABLE)
    if extra or bad:
        wrong = ", ".join([f"[{t}]" for t in extra] + [f"suite.{k}" for k in bad])
        raise ConfigError(
            f"{path}: unknown {wrong}; valid: [suite] {sorted(SUITE_TABLE)}, "
            "[overrides], [task.NAME], [variant.NAME]"
        )
    suite = {
        k if k in ("estimators", "seeds") else f"suite.{k}": v
        for k, v in data.get("suite", {}).items()
    }
    for key in ("suite.tasks", "estimators"):
        if isinstance(suite.get(key), list):
            suite[key] = ",".join(suite[key])
    variants = data.get("variant", {})
    for name, keys in variants.items():
        if "estimator" not in keys:
            raise ConfigError(f'{path}: [variant.{name}] needs estimator = "<estimator>"')
    return suite | data.get("overrides", {}), data.get("task", {}), variants


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


def plan_suite(overrides: dict[str, Any]) -> Plan:
    """Resolve and check every cell's config before anything runs."""
    cli = {ALIASES.get(k, k): v for k, v in overrides.items()}
    for key in ("task", "estimator", "seed"):
        if key in cli:
            raise ConfigError(f"{key}= does not apply to a suite; use tasks=, estimators=, seeds=")
    source = str(cli.get("suite.protocol", ""))
    path = protocol_path(source) if source else None
    common, per_task, variants = read_protocol(path) if path else ({}, {}, {})
    where = str(path) if path else ""
    _checked(common, where, SuiteArgs)  # a bad key in the file is named as the file's
    config = _checked(common | cli, "", SuiteArgs)
    names = [t.strip() for t in config.suite.tasks.split(",") if t.strip()]
    if not names:
        raise ConfigError("no tasks: give suite=<cpu|gpu|file.toml> or tasks=NAME,...")
    # the id does not change with a password (the saved configs never hold one)
    shown = redact_values(common | cli)
    digest = hashlib.sha1(json.dumps(shown, sort_keys=True, default=str).encode())
    suite_id = config.suite.id or (path.stem if path else digest.hexdigest()[:8])
    out = Path(config.output_dir or f"runs/suite-{suite_id}")
    base, from_file = _keys_of(Config, common | cli), _keys_of(Config, common)
    cells = []
    for task in names:
        extra = {f"task.{k}" if "." not in k else k: v for k, v in per_task.get(task, {}).items()}
        columns = {name: {"estimator": name} for name in config.estimator_names()}
        for name, keys in variants.items():
            if task in keys.get("tasks", [task]):
                columns[name] = {k: v for k, v in keys.items() if k != "tasks"}
        if config.suite.variance:  # the estimators' gradient variance on this task's policy
            cell = Cell(task, VARIANCE, 0, {})
            run = {"task": task, "output_dir": str(out / cell.name)}
            estimators = ",".join(config.estimator_names())
            values = _keys_of(VarianceArgs, common | cli | extra) | run
            resolved = _checked(values | {"estimators": estimators}, cell.name, VarianceArgs)
            cells.append(Cell(task, VARIANCE, 0, resolved.to_flat()))
        for seed in range(config.seeds):
            for label, keys in columns.items():
                cell = Cell(task, label, seed, {})
                run = {"task": task, **keys, "seed": seed, "output_dir": str(out / cell.name)}
                _checked(from_file | extra | run, f"{where} (cell {cell.name})")  # names the file
                resolved = _checked(base | extra | run, f"cell {cell.name}")
                cells.append(Cell(task, label, seed, resolved.to_flat()))
    unknown = sorted(set(per_task) - set(names))
    if unknown:
        raise ConfigError(f"{where}: [task.{unknown[0]}] is not among the suite's tasks {names}")
    storage = config.suite.storage or str((out / "suite.journal").resolve())
    return Plan(
        suite_id,
        out,
        storage,
        config.suite.workers,
        config.threads,
        config.suite.heartbeat_s,
        config.tracking.uri,
        cells,
    )


def open_storage(plan: Plan) -> optuna.storages.BaseStorage:
    """The study's storage: a journal file, or an RDB with heartbeats (as pgbench sweep)."""
    from pgbench.sweeps.runner import connect

    return connect(plan.storage, plan.heartbeat_s, "suite.storage")


def run_cell(plan: Plan, cell: Cell) -> dict[str, Any]:
    """Train one cell, resume it if it was killed mid-run, or read it if it finished; a
    variance cell measures (`pgbench variance`) and returns {estimator: total_variance}."""
    from pgbench.trainer import train
    from pgbench.variance import run_variance

    run_dir = Path(cell.values["output_dir"])
    if cell.estimator == VARIANCE:
        table, _ = run_variance(cell_config(cell))
        return dict(zip(table.estimator, table.total_variance, strict=True))
    if (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text())
    run_info = run_dir / "run.json"
    resumed = run_info.is_file()  # killed mid-run: continue its checkpoint and MLflow run
    config = resolve(cell.values | ({"resume": str(run_dir)} if resumed else {}))
    if resumed:
        run_id = json.loads(run_info.read_text())["run_id"]
        tracker = MLflowTracker(
            plan.tracking_uri,
            config.mlflow_experiment,
            run_id=run_id,
            spool=run_dir / SPOOL,
            once_per_step=True,
        )
    else:
        tags = {
            "pgbench.suite": plan.id,
            "pgbench.task": cell.task,
            "pgbench.estimator": cell.estimator,
            "pgbench.seed": str(cell.seed),
        }
        tracker = MLflowTracker(
            plan.tracking_uri,
            config.mlflow_experiment,
            run_name=f"suite-{plan.id}-{cell.name}",
            tags=tags,
        )
    return train(config, tracker)


def _queued(study: optuna.Study, number: int) -> bool:
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    return "fixed_params" in trial.system_attrs


def work(plan: Plan, worker: int) -> None:
    """One worker: train queued cells until the queue is empty."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    threads = use_threads(plan.threads, plan.workers)
    study = optuna.load_study(study_name=f"suite-{plan.id}", storage=open_storage(plan))
    by_name = {cell.name: cell for cell in plan.cells}

    def objective(trial: optuna.Trial) -> float:
        if not _queued(study, trial.number):  # another worker took the last cell
            raise optuna.TrialPruned("no queued cell")
        trial.suggest_int("cell", 0, len(plan.cells) - 1)  # the queued index, as a param
        cell = by_name[trial.user_attrs["cell"]]  # the name, robust to a protocol's new cells
        print(f"suite {plan.id}: worker {worker} ({threads} threads) runs {cell.name}")
        summary = run_cell(plan, cell)
        if cell.estimator == VARIANCE:
            trial.set_user_attr(VARIANCE, summary)
            return 0.0
        metric = tasks.REGISTRY.get_class(cell.task).metric
        # the study, not the run directories, is the record shared by every machine
        trial.set_user_attr("run_id", summary["run_id"])
        trial.set_user_attr("start", summary["eval_before"][metric])
        return summary["eval_after"][metric]

    def stop_when_empty(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            study.stop()

    with warnings.catch_warnings():  # RDB: a dead worker's cell is queued again now
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        study.optimize(
            objective, callbacks=[stop_when_empty], catch=(Exception,), gc_after_trial=True
        )


def _queue(plan: Plan, study: optuna.Study) -> int:
    """Queue every cell without a finished or live trial; returns how many wait to run."""
    if plan.storage.endswith(".journal"):  # one machine: RUNNING trials are a killed suite's
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(trial.number, state=TrialState.FAIL)
    live = (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
    taken = {t.user_attrs.get("cell") for t in study.get_trials(deepcopy=False, states=live)}
    todo = [i for i, cell in enumerate(plan.cells) if cell.name not in taken]
    for index in todo:
        study.enqueue_trial({"cell": index}, user_attrs={"cell": plan.cells[index].name})
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def run_suite(plan: Plan) -> dict[str, Any]:
    """Run (or continue) every cell with the workers, then write and log the tables."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # workers print their cells
    check_reachable(plan.tracking_uri)
    for task in dict.fromkeys(c.task for c in plan.cells):  # a missing reward model fails now
        cell_config(next(c for c in plan.cells if c.task == task)).task.check_reward()
    plan.out.mkdir(parents=True, exist_ok=True)
    write_json(plan.out / "cells.json", {"id": plan.id, "cells": [c.name for c in plan.cells]})
    study = optuna.create_study(
        study_name=f"suite-{plan.id}",
        storage=open_storage(plan),
        direction="maximize",
        load_if_exists=True,
    )
    queued = _queue(plan, study)
    parent_id = study.user_attrs.get(PARENT_ATTR, "")
    parent = MLflowTracker(
        plan.tracking_uri,
        "pgbench-suites",
        run_id=parent_id,
        run_name=f"suite-{plan.id}",
        tags={"pgbench.suite_of": plan.id},
    )
    if not parent_id:
        study.set_user_attr(PARENT_ATTR, parent.run_id)
    print(f"suite {plan.id}: {len(plan.cells)} cells, {queued} to run, {plan.workers} workers")
    context = multiprocessing.get_context("spawn")
    helpers = [context.Process(target=work, args=(plan, w)) for w in range(1, plan.workers)]
    for process in helpers:
        process.start()
    try:
        work(plan, 0)
    finally:
        for process in helpers:
            process.join()
    return _conclude(
        plan, optuna.load_study(study_name=f"suite-{plan.id}", storage=open_storage(plan)), parent
    )


def _conclude(plan: Plan, study: optuna.Study, parent: MLflowTracker) -> dict[str, Any]:
    """runs.csv and the report (reports/suite_report.py) from the study's finished trials."""
    from pgbench.reports.suite_report import write_report

    rows, start, missing = [], {}, []
    finished = {t.user_attrs["cell"]: t for t in study.get_trials(states=(TrialState.COMPLETE,))}
    variance = {}  # task -> {estimator: total gradient variance}
    for cell in plan.cells:
        if cell.name not in finished:
            missing.append(cell.name)
            continue
        trial = finished[cell.name]
        if cell.estimator == VARIANCE:
            variance[cell.task] = trial.user_attrs[VARIANCE]
            continue
        metric = tasks.REGISTRY.get_class(cell.task).metric
        rows.append(
            [cell.task, cell.estimator, cell.seed, metric, trial.value, trial.user_attrs["run_id"]]
        )
        start[cell.task] = trial.user_attrs["start"]  # the same starting policy per task
    runs = pd.DataFrame(rows, columns=RUNS)
    runs.to_csv(plan.out / "runs.csv", index=False)
    done = len(plan.cells) - len(missing)
    title = (
        f"# Suite {plan.id}\n\n{done} of {len(plan.cells)} cells finished: {len(runs)} training "
        f"runs and {len(variance)} gradient-variance cells."
    )
    if missing:
        title += f" Missing (rerun the command to retry): {', '.join(missing)}."
    report = {"leaderboard": None}
    if len(runs):
        report = write_report(plan.out, title, runs, start, variance, plan.tracking_uri)
    else:
        (plan.out / "suite.md").write_text(title + "\n")
    for path in sorted(plan.out.iterdir()):
        if path.suffix in (".csv", ".md", ".html", ".png"):
            parent.log_artifact(path)
    parent.log_metrics({"suite/finished_runs": len(runs), "suite/missing_runs": len(missing)}, 0)
    parent.finish("FINISHED" if not missing else "FAILED")
    return {
        "id": plan.id,
        "out": str(plan.out),
        "runs": len(runs),
        "missing": missing,
        "leaderboard": report["leaderboard"],
        "parent_run_id": parent.run_id,
    }
