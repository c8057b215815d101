"""A suite's queue: each cell queued once, trained by one process at a time, tried at most
`max_attempts` times.

One writer per run: a worker trains a cell only while it holds the cell's run-directory lock
(pgbench.train.rundir.run_dir_lock). A RUNNING trial is taken for a dead worker's, failed and
its cell queued again, only when no process holds that lock: on a journal, by the command that
holds the suite's lock (`<out>/suite.lock`; a second command on the same journal stops with one
line); on a database, when its heartbeat is stale (pgbench.sweeps.runner.connect).

Bounded retries: every trial that started a cell and failed (an error, or a dead worker) is an
attempt. A cell with `max_attempts` failed attempts is not queued again; the report names it with
its last error (the trial's user attr `error`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import optuna
from filelock import FileLock, Timeout
from optuna.trial import FrozenTrial, TrialState

from pgbench.errors import ConfigError
from pgbench.runs.protocol import Cell, Plan
from pgbench.train.rundir import run_dir_busy

LIVE = (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
KILLED = "stopped without an error: its worker was killed or lost"


@contextmanager
def suite_lock(plan: Plan) -> Iterator[None]:
    """On a journal, hold `<out>/suite.lock` while this command runs the suite; a second command
    stops with a one-line ConfigError instead of re-queuing the first one's cells."""
    if not plan.storage.endswith(".journal"):
        yield
        return
    plan.out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(plan.out / "suite.lock", is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(
            f"suite {plan.id} is already running: another command holds {lock.lock_file}; "
            "wait for it to finish (or stop it), then rerun this command to continue"
        ) from None
    try:
        yield
    finally:
        lock.release()


def queued(study: optuna.Study, number: int) -> bool:
    """The trial was popped from the queue (not a retry copy of a failed one)."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    return "fixed_params" in trial.system_attrs


def taken(study: optuna.Study, number: int, name: str) -> bool:
    """Another trial runs or ran this cell (two machines may queue a test phase at once)."""
    live = (TrialState.COMPLETE, TrialState.RUNNING)
    return any(
        t.user_attrs.get("cell") == name and t.number != number
        for t in study.get_trials(deepcopy=False, states=live)
    )


def attempts(study: optuna.Study) -> dict[str, list[FrozenTrial]]:
    """Per cell, its failed attempts (trials a worker started, by number; Ctrl-C is none)."""
    failed: dict[str, list[FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if "worker" in trial.user_attrs and not trial.user_attrs.get("interrupted"):
            failed.setdefault(trial.user_attrs["cell"], []).append(trial)
    return failed


def exhausted(plan: Plan, study: optuna.Study) -> dict[str, str]:
    """The cells that failed `plan.max_attempts` times, with their last error."""
    return {
        name: trials[-1].user_attrs.get("error", KILLED)
        for name, trials in attempts(study).items()
        if len(trials) >= plan.max_attempts
    }


def fail_dead(study: optuna.Study) -> None:
    """Fail the RUNNING trials of a journal whose run directory nobody holds: a killed command's
    (the caller holds the suite's lock, so no other command runs them)."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not run_dir_busy(trial.user_attrs.get("run_dir", "")):
            study.tell(trial.number, state=TrialState.FAIL)


def queue_cells(plan: Plan, study: optuna.Study, cells: list[Cell] | None = None) -> int:
    """Queue every cell of `cells` (default: the plan's) without a finished or live trial and
    with attempts left; returns how many wait to run."""
    if plan.storage.endswith(".journal"):
        fail_dead(study)
    skip = {t.user_attrs.get("cell") for t in study.get_trials(deepcopy=False, states=LIVE)}
    skip |= set(exhausted(plan, study))
    chosen = {c.name for c in (plan.cells if cells is None else cells)}
    for index, cell in enumerate(plan.cells):
        if cell.name in chosen and cell.name not in skip:
            study.enqueue_trial({"cell": index}, user_attrs={"cell": cell.name})
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
