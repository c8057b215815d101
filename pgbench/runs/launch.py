"""`suite.launcher=slurm`: a suite's workers as a SLURM job array, submitted through submitit.

The command queues the suite's cells in its Optuna study on the shared `suite.storage`
(PostgreSQL), submits `suite.workers` array jobs (`executor.map_array`), prints their ids, the
log folder and where the runs appear in MLflow, and returns. Each job runs `slurm_worker`: the
suite worker of pgbench/suite.py (`work`), which pops cells until none waits, then queues the
test phase of every column whose tuning has finished and, with adaptive seeds, the next seeds
of the columns with an undecided pair (`advance`), and goes on until nothing waits.

A job killed mid-cell stops sending heartbeats: its trial is failed and the cell queued again
(Optuna's RetryHeartbeatStaleTrialCallback); the next worker resumes it from its checkpoint in
the same MLflow run (the run directories lie under `output_dir`, which every node must share).

A cell that failed `suite.max_attempts` times (pgbench/runs/queue.py) is not queued again, so
workers and `suite.wait=true` stop retrying it; the report names it with its last error.

Re-running the command queues only cells without a finished, waiting or running trial and
submits only what tops the suite's queued or running jobs (squeue, by job name) up to
`suite.workers`, never more than cells wait. With `suite.wait=true` it then waits until no cell
waits or runs, submitting workers again when cells wait and none of the suite's jobs is left
(the same rule as sweeps, which needs no SLURM accounting), and writes the report.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from pgbench.runs.protocol import Plan
from pgbench.runs.queue import queue_cells
from pgbench.runs.suite import advance, conclude, first_phase, open_storage, open_suite, work
from pgbench.train.slurm import executor, fail_stale, live_jobs, mlflow_link, submit


def slurm_worker(plan: Plan) -> None:
    """One array job: run queued cells, queue the phases that became ready, until none waits."""
    import submitit

    label = submitit.JobEnvironment().job_id  # e.g. 1234_0: recorded in each trial it runs
    study = optuna.load_study(study_name=f"suite-{plan.id}", storage=open_storage(plan))
    while True:
        work(plan, label)
        plan = advance(plan, study)
        if not queue_cells(plan, study):
            return


def log_folder(plan: Plan) -> Path:
    """Where submitit writes the jobs' scripts, pickles and logs."""
    return Path(plan.slurm.folder or plan.out / "slurm").resolve()


def submit_workers(slurm: Any, plan: Plan, count: int) -> None:
    """Submit `count` suite workers as one job array; each runs with its job's CPUs only."""
    submit(slurm, slurm_worker, [(replace(plan, workers=1),)] * count, f"suite {plan.id}")


def requeue(plan: Plan, study: optuna.Study) -> tuple[Plan, int, int]:
    """Queue the cells of dead jobs, of finished tunings' test phases and any not yet queued;
    returns the plan and how many cells wait and run."""
    fail_stale(study)
    plan = advance(plan, study)
    waiting = queue_cells(plan, study, first_phase(plan, study))
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return plan, waiting, running


def launch_suite(plan: Plan) -> dict[str, Any] | None:
    """Submit the suite's workers; with suite.wait, wait and return the report's outcome (as
    run_suite), else None once the jobs are submitted. Nothing is submitted for a suite whose
    cells have all finished: its report is written at once."""
    job_name = f"pgbench-suite-{plan.id}"
    # submitit and sbatch are checked before anything is queued
    slurm = executor(plan.slurm, "suite.launcher", job_name, log_folder(plan))
    study, parent = open_suite(plan)
    plan, waiting, running = requeue(plan, study)
    alive = len(live_jobs(job_name))  # workers of an earlier command, queued or running
    print(f"suite {plan.id}: {len(plan.cells)} cells, {waiting} waiting, {running} running")
    if (count := min(plan.workers - alive, waiting)) > 0:
        submit_workers(slurm, plan, count)
    runs = f"runs tagged pgbench.suite = '{plan.id}'"
    print(f"  MLflow: {mlflow_link(parent, plan.tracking_uri, runs)}")
    if waiting + running and not plan.wait:
        print("  re-run the command with suite.wait=true to wait and write the report")
        return None
    plan = wait_for_cells(slurm, plan, study, job_name)
    return conclude(plan, parent)


def wait_for_cells(slurm: Any, plan: Plan, study: optuna.Study, job_name: str) -> Plan:
    """Poll the study every heartbeat until no cell waits or runs; cells that wait while none
    of the suite's jobs is queued or running (squeue; a killed job's cell, re-queued) get new
    workers."""
    while True:
        plan, waiting, running = requeue(plan, study)
        if not waiting and not running:
            return plan
        if waiting and not live_jobs(job_name):
            submit_workers(slurm, plan, min(plan.workers, waiting))
        time.sleep(plan.heartbeat_s)
