"""A suite's tables, from its study's finished trials: the selected tuning points, the cells
each column is ranked by, runs.csv's rows and the report's tuning tables."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from optuna.trial import FrozenTrial

from pgbench import tasks
from pgbench.runs.protocol import VARIANCE, Cell, Plan
from pgbench.runs.tuning import SELECTION, select

RUNS = ["task", "estimator", "seed", "metric", "value", "run_id"]
TUNING = ["task", "estimator", "point", "seed", "objective", "run_id", "tokens", "wall_clock_s"]


def tuning_frame(plan: Plan, finished: dict[str, FrozenTrial]) -> pd.DataFrame:
    """Every finished training run as rows task, estimator, point, seed, split, value: its
    valid objective, and for a test-phase run its test metric (which selection ignores)."""
    rows = []
    for cell in plan.all_cells():
        trial = finished.get(cell.name)
        if trial is None or cell.estimator == VARIANCE:
            continue
        key = {"task": cell.task, "estimator": cell.estimator, "point": cell.point}
        key |= {"seed": cell.seed}
        objective = trial.user_attrs.get(plan.tune.objective)  # absent: a run of an untuned suite
        if objective is not None:
            rows.append(key | {"split": "valid", "value": objective})
        if not cell.tuning:
            rows.append(key | {"split": "test", "value": trial.value})
    return pd.DataFrame(rows, columns=["task", "estimator", "point", "seed", "split", "value"])


def selected(plan: Plan, finished: dict[str, FrozenTrial]) -> pd.DataFrame:
    """The selected point of every tuned column whose tuning runs have all finished."""
    if plan.tune is None:
        return pd.DataFrame(columns=SELECTION)
    tuning = [c for c in plan.cells if c.tuning]
    unfinished = {(c.task, c.estimator) for c in tuning if c.name not in finished}
    complete = {(c.task, c.estimator) for c in tuning} - unfinished
    table = tuning_frame(plan, finished)
    pairs = zip(table.task, table.estimator, strict=True)
    table = table[np.array([pair in complete for pair in pairs], dtype=bool)]
    return select(table, plan.tune.seeds)


def run_rows(cells: list[Cell], finished: dict[str, FrozenTrial]) -> pd.DataFrame:
    rows = []
    for cell in cells:
        trial = finished[cell.name]
        metric = tasks.REGISTRY.get_class(cell.task).metric
        run_id = trial.user_attrs["run_id"]
        rows.append([cell.task, cell.estimator, cell.seed, metric, trial.value, run_id])
    return pd.DataFrame(rows, columns=RUNS)


def tuning_rows(plan: Plan, finished: dict[str, FrozenTrial]) -> pd.DataFrame:
    """The finished tuning runs (TUNING columns) with the tuned keys' values."""
    rows = []
    for cell in plan.cells:
        if cell.tuning and cell.name in finished:
            trial = finished[cell.name]
            attrs = [trial.user_attrs[k] for k in ("run_id", "tokens", "wall_clock_s")]
            tuned = plan.points[(cell.task, cell.estimator, cell.point)]
            rows.append(
                [cell.task, cell.estimator, cell.point, cell.seed, trial.value, *attrs, tuned]
            )
    frame = pd.DataFrame(rows, columns=[*TUNING, "keys"])
    keys = pd.json_normalize(frame.pop("keys").tolist()) if len(frame) else pd.DataFrame()
    return pd.concat([frame, keys], axis=1)


def phases(plan: Plan, chosen: pd.DataFrame) -> tuple[list[Cell], list[Cell], list[str]]:
    """(the leaderboard's cells, the shared-defaults cells of tuned tasks, unfinished tunings):
    a tuned column is ranked at its selected point (`chosen`), any other at the defaults; the
    tuned columns are ranked at the defaults too unless the protocol says `defaults = false`."""
    queued = {c.name for c in plan.cells}  # adaptive seeds: only the looks reached
    board = [
        c
        for row in chosen.itertuples()
        for c in plan.candidates[(row.task, row.estimator, row.point)]
        if c.name in queued
    ]
    tuned = {(c.task, c.estimator) for c in plan.cells if c.tuning}
    defaults = [c for c in plan.cells if c.point is None and c.estimator != VARIANCE]
    board += [c for c in defaults if (c.task, c.estimator) not in tuned]
    waiting = sorted(
        f"{t}-{e}" for t, e in tuned - set(zip(chosen.task, chosen.estimator, strict=True))
    )
    if plan.tune is None or not plan.tune.defaults:  # a selected point may be the defaults'
        return board, [], waiting
    return board, [c for c in defaults if (c.task, c.estimator) in tuned], waiting


def board_columns(plan: Plan, chosen: pd.DataFrame) -> dict[tuple[str, str], list[Cell]]:
    """Every test cell each (task, column) of the leaderboard may run, up to the most seeds:
    a tuned column's at its selected point (`chosen`), any other's at the defaults."""
    columns = {
        (row.task, row.estimator): plan.candidates[(row.task, row.estimator, row.point)]
        for row in chosen.itertuples()
    }
    return columns | plan.reserve


def notes(plan: Plan, missing: list[str], failed: dict[str, str], waiting: list[str]) -> str:
    """The report title's sentences on what waits, what is missing and what failed for good."""
    title = ""
    if waiting:
        title += f" Not tested, their tuning unfinished: {', '.join(waiting)}."
    if missing:
        title += f" Missing (rerun the command to retry): {', '.join(missing)}."
    if failed:
        title += (
            f" Failed {plan.max_attempts} times, not retried (raise suite.max_attempts to retry):"
            f" {', '.join(failed)}."
        )
    return title


def variance(plan: Plan, finished: dict[str, FrozenTrial]) -> dict[str, dict[str, float]]:
    """Each task's gradient variance per estimator, from its finished variance cell."""
    cells = [c for c in plan.cells if c.estimator == VARIANCE and c.name in finished]
    return {c.task: finished[c.name].user_attrs[VARIANCE] for c in cells}


def tuned(
    plan: Plan, finished: dict[str, FrozenTrial], chosen: pd.DataFrame, defaults: list[Cell]
) -> dict[str, Any] | None:
    """A tuned suite's tables for the report: its tuning runs, selection and shared defaults."""
    if plan.tune is None:
        return None
    return {
        "tuning": tuning_rows(plan, finished),
        "selection": chosen,
        "defaults": run_rows([c for c in defaults if c.name in finished], finished),
        "objective": plan.tune.objective,
    }
