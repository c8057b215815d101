"""`sweep.launcher=slurm`: a sweep's workers as a SLURM job array, submitted through submitit.

The command creates (or loads) the study on the shared `sweep.storage` (PostgreSQL) and its
parent MLflow run, submits `sweep.workers` array jobs (pgbench/train/slurm.py, shared with suites),
prints their ids, the log folder and where the trials appear in MLflow, and returns. Each job
is one sweep worker (`work` in sweeps/runner.py): it runs trials until the study has
`sweep.n_trials` finished ones, each a nested MLflow run, and records its job id in them.

A job killed mid-trial stops sending heartbeats: its trial is failed and queued again with the
same params (Optuna's RetryHeartbeatStaleTrialCallback), for another worker to run.

Re-running the command counts the sweep's jobs still queued or running (squeue, by job name)
and submits only what tops them up to `sweep.workers`, and never more workers than trials are
missing (neither finished nor running). With `sweep.wait=true` it then waits until the study
has its trials and none runs, submitting workers again when trials are missing and none of the
sweep's jobs is left, and writes best.json as a local sweep does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from pgbench.config.verbs import SweepArgs
from pgbench.sweeps.runner import FINISHED, conclude, load, open_study, study_name, sweep_dir, work
from pgbench.train.slurm import executor, fail_stale, live_jobs, mlflow_link, submit


def slurm_worker(values: dict[str, Any], worker: int) -> None:
    """One array job: a sweep worker with this job's CPUs, its trials labelled with its job id."""
    import submitit

    label = submitit.JobEnvironment().job_id  # e.g. 1234_0
    work(values | {"sweep.workers": 1}, worker, label=label)


def missing(config: SweepArgs, study: optuna.Study) -> tuple[int, int]:
    """How many trials are neither finished nor running, and how many run (dead jobs' trials
    are failed first, so their retries count as missing)."""
    fail_stale(study)
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return max(0, config.sweep.n_trials - finished - running), running


def submit_workers(slurm: Any, config: SweepArgs, study: optuna.Study, count: int) -> None:
    """Submit `count` sweep workers as one job array; sampler seeds differ from earlier ones."""
    values, first = config.to_flat(), len(study.trials)
    args = [(values, first + index) for index in range(count)]
    submit(slurm, slurm_worker, args, f"sweep {study.study_name}")


def launch_sweep(config: SweepArgs) -> dict[str, Any] | None:
    """Submit the sweep's workers; with sweep.wait, wait and return the outcome (as run_sweep),
    else None once the jobs are submitted."""
    folder = Path(config.slurm.folder or sweep_dir(config) / "slurm").resolve()
    name = study_name(config)
    job_name = f"pgbench-sweep-{name}"
    # submitit and sbatch are checked before the study or any folder is created
    slurm = executor(config.slurm, "sweep.launcher", job_name, folder)
    study, parent = open_study(config)
    left, running = missing(config, study)
    alive = len(live_jobs(job_name))  # workers of an earlier command, queued or running
    print(f"sweep {name}: {left} trials missing, {running} running, {alive} workers queued")
    if (count := min(config.sweep.workers - alive, left)) > 0:
        submit_workers(slurm, config, study, count)
    runs = f"nested runs of sweep-{name}, tagged pgbench.sweep = '{name}'"
    print(f"  MLflow: {mlflow_link(parent, config.tracking.uri, runs)}")
    if left + running and not config.sweep.wait:
        print("  re-run the command with sweep.wait=true to wait and write best.json")
        return None
    while left + running:
        time.sleep(config.sweep.heartbeat_s)
        left, running = missing(config, study)
        if left and not live_jobs(job_name):  # a killed job's trial waits for a worker
            submit_workers(slurm, config, study, min(config.sweep.workers, left))
    return conclude(config, load(config), parent)
