"""A suite's queue (pgbench.runs.queue): live cells never re-queued, bounded attempts, and the
suite's lock on a journal. No training: trials are popped and told as a worker would."""

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pgbench.errors import ConfigError
from pgbench.runs.queue import attempts, exhausted, queue_cells, suite_lock
from pgbench.runs.suite import open_storage, plan_suite, work
from pgbench.train.rundir import run_dir_lock


def two_cells(tmp_path, **fields):
    plan = plan_suite(
        {"tasks": "fr_en", "estimators": "rloo", "seeds": "2", "output_dir": str(tmp_path)}
    )
    plan = replace(plan, **fields)
    study = optuna.create_study(study_name=f"suite-{plan.id}", storage=open_storage(plan))
    return plan, study


def start(plan, study):
    """Pop the next queued cell as a worker does (pgbench.runs.suite.attempt)."""
    trial = study.ask()
    cell = plan.cells[trial.suggest_int("cell", 0, len(plan.cells) - 1)]
    trial.set_user_attr("worker", "w0")
    trial.set_user_attr("run_dir", cell.values["output_dir"])
    return trial


@contextlib.contextmanager
def held_elsewhere(lock: Callable[[], AbstractContextManager]) -> Iterator[None]:
    """`lock()` held by another thread (a lock owner of its own) while the block runs."""
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock():
            held.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        yield
    finally:
        done.set()
        holder.join()


def test_a_running_cell_is_requeued_only_once_its_run_directory_is_free(tmp_path):
    plan, study = two_cells(tmp_path)
    assert queue_cells(plan, study) == 2
    start(plan, study)  # cell 0 runs
    run_dir = Path(plan.cells[0].values["output_dir"])
    with held_elsewhere(lambda: run_dir_lock(run_dir)):  # its worker trains cell 0
        assert queue_cells(plan, study) == 1  # cell 1 waits; cell 0 is live, not queued again
        assert study.trials[0].state == TrialState.RUNNING
    assert queue_cells(plan, study) == 2  # its worker is gone: failed, queued again
    assert study.trials[0].state == TrialState.FAIL


def test_a_cell_that_failed_max_attempts_times_is_not_queued_again(tmp_path):
    plan, study = two_cells(tmp_path, max_attempts=2)
    queue_cells(plan, study)
    interrupted = start(plan, study)  # cell 0, stopped by Ctrl-C: not an attempt
    interrupted.set_user_attr("interrupted", True)
    study.tell(interrupted, state=TrialState.FAIL)
    study.tell(start(plan, study), 1.0)  # cell 1 finishes
    for error in ("RuntimeError: first", "RuntimeError: second"):
        assert queue_cells(plan, study) == 1  # cell 0 again
        trial = start(plan, study)
        trial.set_user_attr("error", error)
        study.tell(trial, state=TrialState.FAIL)
    assert queue_cells(plan, study) == 0  # given up: a SLURM worker or suite.wait stops here
    assert exhausted(plan, study) == {"fr_en-rloo-s0": "RuntimeError: second"}
    assert [t.number for t in attempts(study)["fr_en-rloo-s0"]] == [2, 3]  # not 0


def test_a_worker_prunes_a_cell_whose_run_directory_another_process_holds(tmp_path):
    plan, study = two_cells(tmp_path)
    plan = replace(plan, cells=plan.cells[:1])
    queue_cells(plan, study)
    run_dir = Path(plan.cells[0].values["output_dir"])
    with held_elsewhere(lambda: run_dir_lock(run_dir)):
        work(plan, 0)  # raises nothing, trains nothing
    (trial,) = study.get_trials()
    assert trial.state == TrialState.PRUNED and not attempts(study)
    # the worker wrote nothing there, so the folder the holder's lock made is gone with it
    assert not run_dir.exists()


def test_a_second_holder_of_a_journal_suite_is_refused_in_one_line(tmp_path):
    plan, _ = two_cells(tmp_path)
    with held_elsewhere(lambda: suite_lock(plan)):  # the first command
        with pytest.raises(ConfigError, match=f"^suite {plan.id} is already running: another"):
            with suite_lock(plan):
                pass
    with suite_lock(plan):  # free again once the first command ends
        assert (plan.out / "suite.lock").is_file()
