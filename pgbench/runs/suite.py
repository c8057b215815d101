"""`pgbench suite`: a declared protocol of tasks x estimators x seeds at fixed budgets.

The plan (every cell's config, resolved and checked before the first run) comes from
pgbench/runs/protocol.py; a protocol's `[tune]` table (pgbench/runs/tuning.py) adds tuning.

Scheduler: one Optuna study `suite-<id>` whose queue holds one enqueued trial per unfinished
cell; `suite.workers=N` local processes pop cells from it, each with cores // N torch threads.
The storage is `<output_dir>/suite.journal`, or `suite.storage=postgresql://...` for workers
on several machines, with heartbeats (a dead worker's cell is re-queued);
`suite.launcher=slurm` submits the workers as a SLURM job array (pgbench/runs/launch.py).

Phases: the tuning runs, the runs at shared defaults and the variance cells are queued first.
When every tuning run of a column has finished, its selected point (`tuning.select`, valid
split and tuning seeds only) is queued on the test seeds; an unfinished column is never tested.

Resume: the same command (same suite id) continues. A cell whose run directory has
summary.json is never trained again; one with only run.json resumes from its last checkpoint,
in the same MLflow run. One writer per run, at most `max_attempts` failed attempts per cell,
and one command per journal: pgbench/runs/queue.py.

Outputs: runs.csv (tuned columns at their selected point) and the report of
reports/suite_report.py, artifacts of the MLflow run `suite-<id>`; cell runs are tagged
pgbench.suite, .task, .estimator (the column), .seed, .phase (tune or test) and .point.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import threading
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from pgbench import tasks
from pgbench.config.verbs import resolve
from pgbench.hardware import use_threads
from pgbench.reports import sequential
from pgbench.reports.tables import area_under_curve
from pgbench.runs.protocol import VARIANCE, Cell, Plan, cell_config, plan_suite
from pgbench.runs.queue import exhausted, queue_cells, queued, suite_lock, taken
from pgbench.runs.suite_tables import (
    board_columns,
    notes,
    phases,
    run_rows,
    selected,
    tuned,
    variance,
)
from pgbench.train.rundir import RunDirBusyError, run_dir_lock
from pgbench.train.tracking import (
    SPOOL,
    MLflowTracker,
    check_reachable,
    metric_history,
    sync_pending,
    write_json,
)

__all__ = ["plan_suite", "run_suite", "run_cell", "open_storage", "queue_cells"]

PARENT_ATTR = "mlflow_parent_run_id"


def open_storage(plan: Plan) -> optuna.storages.BaseStorage:
    """The study's storage: a journal file, or an RDB with heartbeats (as pgbench sweep)."""
    from pgbench.sweeps.runner import connect

    return connect(plan.storage, plan.heartbeat_s, "suite.storage")


def run_cell(plan: Plan, cell: Cell) -> dict[str, Any]:
    """Train one cell, resume it if it was killed mid-run, or read it if it finished; a
    variance cell measures (`pgbench variance`) and returns {estimator: total_variance}. The
    cell's run-directory lock is held throughout: RunDirBusyError if another process holds it."""
    run_dir = Path(cell.values["output_dir"])
    with run_dir_lock(run_dir):
        return _run_cell(plan, cell, run_dir)


def _run_cell(plan: Plan, cell: Cell, run_dir: Path) -> dict[str, Any]:
    from pgbench.runs.variance import run_variance
    from pgbench.train.trainer import train

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
            "pgbench.phase": "tune" if cell.tuning else "test",
            "pgbench.point": "defaults" if cell.point is None else str(cell.point),
        }
        tracker = MLflowTracker(
            plan.tracking_uri,
            config.mlflow_experiment,
            run_name=f"suite-{plan.id}-{cell.name}",
            tags=tags,
        )
    return train(config, tracker)


def valid_auc(uri: str, run_id: str, metric: str) -> float:
    """The area under a run's valid curve per step (reports.tables.area_under_curve)."""
    points = metric_history(uri, run_id, metric)
    if not points:
        return float("nan")
    history = pd.DataFrame(points, columns=["step", "value"]).assign(run_id=run_id, metric=metric)
    return float(area_under_curve(history, metric).iloc[0])


def _record(plan: Plan, cell: Cell, trial: optuna.Trial, summary: dict[str, Any]) -> float:
    """Store a finished run's numbers in its trial; returns the trial's value (the test
    metric, or for a tuning run the valid-split objective)."""
    metric = tasks.REGISTRY.get_class(cell.task).metric
    # the valid curve is read from MLflow: a tail buffered during an outage goes up first
    sync_pending(Path(summary["output_dir"]), plan.tracking_uri)
    final = summary["eval_valid"].get(metric, float("nan"))
    attrs = {
        "run_id": summary["run_id"],
        "valid_final": final,
        "valid_auc": valid_auc(plan.tracking_uri, summary["run_id"], f"eval/{metric}"),
        "tokens": summary["train"].get("train/tokens", float("nan")),
        "wall_clock_s": summary["train"].get("train/wall_clock_s", float("nan")),
    }
    if not cell.tuning:
        attrs["start"] = summary["eval_before"][metric]
    for key, value in attrs.items():  # the study, not the run folders, is shared by machines
        trial.set_user_attr(key, value)
    return attrs[plan.tune.objective] if cell.tuning else summary["eval_after"][metric]


def attempt(plan: Plan, cell: Cell, trial: optuna.Trial, worker: int | str) -> dict[str, Any]:
    """Run the cell as one attempt of the trial: its worker and run directory recorded, its
    error kept as user attr `error` (pgbench.runs.queue counts failed attempts)."""
    trial.set_user_attr("worker", str(worker))
    trial.set_user_attr("run_dir", cell.values["output_dir"])
    try:
        return run_cell(plan, cell)
    except RunDirBusyError as err:  # the process that holds it trains the cell: no attempt
        raise optuna.TrialPruned(str(err)) from None
    except KeyboardInterrupt:
        trial.set_user_attr("interrupted", True)
        raise
    except Exception as err:
        trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:500])
        raise


def work(plan: Plan, worker: int | str) -> None:
    """One worker: train queued cells until the queue is empty; `worker` (a number here, a
    SLURM job id there) is recorded in each of its trials as user attr `worker`."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    threads = use_threads(plan.threads, plan.workers)
    study = optuna.load_study(study_name=f"suite-{plan.id}", storage=open_storage(plan))
    by_name = {cell.name: cell for cell in plan.all_cells()}

    def objective(trial: optuna.Trial) -> float:
        if not queued(study, trial.number):  # another worker took the last cell
            raise optuna.TrialPruned("no queued cell")
        trial.suggest_int("cell", 0, len(plan.cells) - 1)  # the queued index, as a param
        cell = by_name[trial.user_attrs["cell"]]  # the name, robust to a protocol's new cells
        if taken(study, trial.number, cell.name):
            raise optuna.TrialPruned(f"{cell.name} is run by another trial")
        print(f"suite {plan.id}: worker {worker} ({threads} threads) runs {cell.name}")
        summary = attempt(plan, cell, trial, worker)
        if cell.estimator == VARIANCE:
            trial.set_user_attr(VARIANCE, summary)
            return 0.0
        return _record(plan, cell, trial, summary)

    def stop_when_empty(study: optuna.Study, trial: FrozenTrial) -> None:
        if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            study.stop()

    with warnings.catch_warnings():  # RDB: a dead worker's cell is queued again now
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        study.optimize(
            objective, callbacks=[stop_when_empty], catch=(Exception,), gc_after_trial=True
        )


def _finished(study: optuna.Study) -> dict[str, FrozenTrial]:
    return {t.user_attrs["cell"]: t for t in study.get_trials(states=(TrialState.COMPLETE,))}


def promote(plan: Plan, study: optuna.Study) -> Plan:
    """The plan with the test phase of every column whose tuning has finished (with adaptive
    seeds, its first look's seeds)."""
    known = {c.name for c in plan.cells}
    first = plan.design.looks[0] if plan.design else None
    new = []
    for row in selected(plan, _finished(study)).itertuples():
        group = plan.candidates[(row.task, row.estimator, row.point)]
        new += [c for c in group if c.name not in known and (first is None or c.seed < first)]
    tuning = sum(c.tuning for c in plan.cells)  # the test phase next, before the rest
    return replace(plan, cells=plan.cells[:tuning] + new + plan.cells[tuning:]) if new else plan


def extend(plan: Plan, study: optuna.Study) -> Plan:
    """Adaptive seeds: the plan with the next look's seeds of every column that still has an
    undecided pair, once every seed of its last look has finished (reports/sequential.py).
    It depends on the finished runs alone, so a resumed suite extends as the first one did."""
    if plan.design is None:
        return plan
    finished = _finished(study)
    columns = board_columns(plan, selected(plan, finished))
    runs = [c for cells in columns.values() for c in cells if c.name in finished]
    scores = pd.DataFrame(
        [(c.task, c.estimator, c.seed, finished[c.name].value) for c in runs],
        columns=["task", "estimator", "seed", "value"],
    )
    table = sequential.verdict_table(scores, plan.margins, plan.design)
    need = sequential.targets(table, plan.design, list(columns))
    known = {c.name for c in plan.cells}
    new = [c for k, cells in columns.items() for c in cells if c.seed < need[k]]
    new = sorted((c for c in new if c.name not in known), key=lambda c: c.seed)
    return replace(plan, cells=plan.cells + new) if new else plan


def advance(plan: Plan, study: optuna.Study) -> Plan:
    """The plan with every cell that became ready: tested tunings, added seeds."""
    return extend(promote(plan, study), study)


def _helper(target: Callable[[Plan, int], None], plan: Plan, worker: int) -> None:
    """A spawned worker; the interrupt that the main process forwards ends it quietly."""
    with contextlib.suppress(KeyboardInterrupt):
        target(plan, worker)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run_workers(plan: Plan, target: Callable[[Plan, int], None] = work) -> None:
    """Worker 0 here, the others spawned. Ctrl-C or SIGTERM (kill, a scheduler's stop) here
    interrupts every worker, each marking its run KILLED, so the same command resumes them."""
    context = multiprocessing.get_context("spawn")
    helpers = [
        context.Process(target=_helper, args=(target, plan, w)) for w in range(1, plan.workers)
    ]
    for process in helpers:
        process.start()
    here = threading.current_thread() is threading.main_thread()  # where handlers may be set
    previous = signal.signal(signal.SIGTERM, _interrupt) if here else None
    try:
        target(plan, 0)
    except BaseException:
        for process in helpers:
            if process.is_alive():
                os.kill(process.pid, signal.SIGINT)
        raise
    finally:
        if here:
            signal.signal(signal.SIGTERM, previous)
        for process in helpers:
            process.join()


def first_phase(plan: Plan, study: optuna.Study) -> list[Cell] | None:
    """The cells to queue first: the tuning runs alone while any is unfinished, so that the
    test phase is queued before the other cells; else every cell (None)."""
    tuning = [c for c in plan.cells if c.tuning]
    finished = _finished(study)
    return None if all(c.name in finished for c in tuning) else tuning


def open_suite(plan: Plan) -> tuple[optuna.Study, MLflowTracker]:
    """Check tracking and rewards, create (or load) the suite's study and its MLflow run."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # workers print their cells
    check_reachable(plan.tracking_uri)
    for task in dict.fromkeys(c.task for c in plan.cells):  # a missing reward model fails now
        cell_config(next(c for c in plan.cells if c.task == task)).task.check_reward()
    plan.out.mkdir(parents=True, exist_ok=True)
    names = [c.name for c in plan.all_cells()]
    write_json(plan.out / "cells.json", {"id": plan.id, "cells": names})
    study = optuna.create_study(
        study_name=f"suite-{plan.id}",
        storage=open_storage(plan),
        direction="maximize",
        load_if_exists=True,
    )
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
    return study, parent


def run_suite(plan: Plan) -> dict[str, Any]:
    """Run (or continue) every cell with the workers, phase by phase, then write the tables;
    on a journal, while holding the suite's lock (pgbench.runs.queue.suite_lock)."""
    with suite_lock(plan):
        study, parent = open_suite(plan)
        plan = advance(plan, study)  # resumed: tunings and looks finished before
        tuning = [c for c in plan.cells if c.tuning]
        queue = first_phase(plan, study)
        while True:
            waiting = queue_cells(plan, study, queue)
            print(
                f"suite {plan.id}: {len(plan.cells)} cells ({len(tuning)} tuning), {waiting} to "
                f"run now, {plan.workers} workers"
            )
            _run_workers(plan)
            more = advance(plan, study)
            if queue is None and len(more.cells) == len(plan.cells):
                break
            plan, queue = more, None  # the test phase of the columns just tuned, then the rest
        return conclude(plan, parent)


def conclude(plan: Plan, parent: MLflowTracker) -> dict[str, Any]:
    """runs.csv and the report (reports/suite_report.py) from the study's finished trials."""
    study = optuna.load_study(study_name=f"suite-{plan.id}", storage=open_storage(plan))
    finished, failed = _finished(study), exhausted(plan, study)
    chosen = selected(plan, finished)
    board, defaults, waiting = phases(plan, chosen)
    names = dict.fromkeys(c.name for c in [*plan.cells, *board])
    missing = [name for name in names if name not in finished and name not in failed]
    runs = run_rows([c for c in board if c.name in finished], finished)
    runs.to_csv(plan.out / "runs.csv", index=False)
    for name, error in failed.items():
        print(f"suite {plan.id}: {name} failed {plan.max_attempts} attempts; last error: {error}")
    done = len([c for c in plan.cells if c.name in finished])
    title = (
        f"# Suite {plan.id}\n\n{done} of {len(plan.cells)} queued cells finished: {len(runs)} "
        f"ranked training runs and {len(variance(plan, finished))} gradient-variance cells."
    ) + notes(plan, missing, failed, waiting)
    leaderboard = _report(plan, title, runs, finished, failed, chosen, board, defaults)
    for path in sorted(plan.out.iterdir()):
        if path.suffix in (".csv", ".md", ".html", ".png"):
            parent.log_artifact(path)
    parent.log_metrics({"suite/finished_runs": len(runs), "suite/missing_runs": len(missing)}, 0)
    parent.finish("FINISHED" if not (missing or waiting or failed) else "FAILED")
    return {
        "id": plan.id,
        "out": str(plan.out),
        "runs": len(runs),
        "missing": missing + [f"{w} (test phase)" for w in waiting],
        "failed": failed,
        "leaderboard": leaderboard,
        "parent_run_id": parent.run_id,
    }


def _report(
    plan: Plan,
    title: str,
    runs: pd.DataFrame,
    finished: dict[str, FrozenTrial],
    failed: dict[str, str],
    chosen: pd.DataFrame,
    board: list[Cell],
    defaults: list[Cell],
) -> pd.DataFrame | None:
    """Write the report (suite.md alone without a finished run); returns its leaderboard."""
    from pgbench.reports.suite_report import failed_section, write_report

    if not len(runs):
        (plan.out / "suite.md").write_text("\n\n".join([title, *failed_section(failed)]) + "\n")
        return None
    # the same starting policy per task: its test score, logged by every test-phase run
    start = {c.task: finished[c.name].user_attrs["start"] for c in board if c.name in finished}
    tables = tuned(plan, finished, chosen, defaults)
    proxy = Path(plan.proxy) if plan.proxy else None
    report = write_report(
        plan.out,
        title,
        runs,
        start,
        variance(plan, finished),
        plan.tracking_uri,
        tables,
        proxy,
        failed,
        plan.margins,
        plan.design,
        (plan.probes, plan.properties),
    )
    return report["leaderboard"]
