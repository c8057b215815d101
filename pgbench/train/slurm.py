"""SLURM job arrays through submitit, shared by `suite.launcher=slurm` (pgbench/runs/launch.py)
and `sweep.launcher=slurm` (sweeps/launch.py): the executor with the `slurm.*` settings, the
submission of N workers as one array, and where to watch them in MLflow.

submitit pickles each job's arguments (a suite's plan, a sweep's config, with their storage and
tracking URLs as given) into `<folder>/<job id>_submitted.pkl`, on a disk other users may read:
the folder is made private (0700) and everything submitted into it is written 0600. Better
still, keep passwords out of the URLs: jobs inherit the environment (`PGPASSWORD`), and libpq
reads `~/.pgpass` on every node (docs/operations.md, "Credentials").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna

from pgbench.config.sections import SlurmConfig
from pgbench.config.urls import redact
from pgbench.errors import ConfigError
from pgbench.train.tracking import MLflowTracker


def executor(settings: SlurmConfig, key: str, job_name: str, folder: Path) -> Any:
    """A submitit SlurmExecutor writing to `folder`; a one-line error naming `key` (the
    launcher's key, e.g. suite.launcher) without submitit or sbatch."""
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"{key}=slurm needs submitit: pip install 'pgbench[slurm]'") from None
    if shutil.which("sbatch") is None:
        raise ConfigError(
            f"{key}=slurm: sbatch is not on PATH; run the command on a SLURM login node"
        )
    chosen = {
        "job_name": job_name,
        "time": settings.time_min,
        "cpus_per_task": settings.cpus_per_task,
        "partition": settings.partition or None,
        "gpus_per_task": settings.gpus_per_task or None,
        "mem": f"{settings.mem_gb}GB" if settings.mem_gb else None,
        "additional_parameters": settings.sbatch_flags(),
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)  # the jobs' pickles hold the URLs as given, passwords included
    slurm = submitit.SlurmExecutor(folder=folder)
    slurm.update_parameters(**{k: v for k, v in chosen.items() if v is not None})
    return slurm


def submit(slurm: Any, worker: Callable[..., None], args: Sequence[tuple], what: str) -> list[Any]:
    """Submit `worker(*a)` for each `a` in `args` as one job array; prints the job ids and logs."""
    with _private_files():
        jobs = slurm.map_array(worker, *zip(*args, strict=True))
    print(f"{what}: submitted {len(jobs)} SLURM workers: {', '.join(j.job_id for j in jobs)}")
    print(f"  logs: {slurm.folder}/<job id>_0_log.out (.err)")
    return jobs


@contextmanager
def _private_files() -> Iterator[None]:
    """Files and folders created meanwhile are readable by their owner only (umask 077)."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def live_jobs(job_name: str) -> list[str]:
    """Ids of this user's pending or running jobs named `job_name`, one per array task."""
    listed = subprocess.run(
        ["squeue", "--noheader", "--me", "--array", "--name", job_name, "--format", "%i"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


def mlflow_link(parent: MLflowTracker, uri: str, runs: str) -> str:
    """Where to watch the work: its parent run in the MLflow UI, or the store and `runs` (which
    runs to look for, e.g. a tag filter)."""
    if not uri.startswith(("http://", "https://")):
        return f"{redact(uri)} ({runs})"
    experiment = parent.client.get_run(parent.run_id).info.experiment_id
    base = redact(uri).rstrip("/")
    # MLflow 3's UI opens in its GenAI mode (traces) unless told it is model training
    run = f"{base}/#/experiments/{experiment}/runs/{parent.run_id}?workflowType=machine_learning"
    return f"{run} ({runs})"


def fail_stale(study: optuna.Study) -> None:
    """Fail the trials of dead jobs (no heartbeat for the grace period): the storage's retry
    callback queues each again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
