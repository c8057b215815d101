import os
import stat
from types import SimpleNamespace

import pytest

from pgbench.config.sections import SlurmConfig
from pgbench.errors import ConfigError
from pgbench.train import slurm


def test_the_executor_takes_the_slurm_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")
    settings = SlurmConfig(time_min=30, cpus_per_task=2, extra="--qos=high --exclusive")
    executor = slurm.executor(settings, "suite.launcher", "pgbench-suite-x", tmp_path)
    assert executor.parameters == {  # an empty partition, 0 GPUs, 0 GB: the cluster's defaults
        "job_name": "pgbench-suite-x",
        "time": 30,
        "cpus_per_task": 2,
        "additional_parameters": {"qos": "high", "exclusive": True},
    }
    settings = SlurmConfig(partition="gpu", gpus_per_task=1, mem_gb=16)
    parameters = slurm.executor(settings, "sweep.launcher", "job", tmp_path).parameters
    assert (parameters["partition"], parameters["gpus_per_task"], parameters["mem"]) == (
        "gpu",
        1,
        "16GB",
    )


def test_without_sbatch_the_error_names_the_launcher_key(tmp_path, monkeypatch):
    monkeypatch.setattr(slurm.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="^sweep.launcher=slurm: sbatch is not on PATH"):
        slurm.executor(SlurmConfig(), "sweep.launcher", "job", tmp_path)


def test_the_mlflow_link_hides_passwords():
    stored = slurm.mlflow_link(None, "postgresql://alice:secret@db/mlflow", "tag suite=x")
    assert stored == "postgresql://alice:***@db/mlflow (tag suite=x)"
    run = SimpleNamespace(info=SimpleNamespace(experiment_id="7"))
    parent = SimpleNamespace(run_id="abc", client=SimpleNamespace(get_run=lambda run_id: run))
    link = slurm.mlflow_link(parent, "http://bob:pw@mlflow:5000/", "its child runs")
    assert link == (
        "http://bob:***@mlflow:5000/#/experiments/7/runs/abc?workflowType=machine_learning"
        " (its child runs)"
    )


def _worker(storage: str) -> None:
    """A job's function: its argument holds a URL with a password, as a suite's plan does."""


def test_the_jobs_pickles_are_private_to_their_owner(tmp_path, monkeypatch):
    # a stand-in sbatch on PATH: submitit writes the pickles and script, then reads the job id
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'Submitted batch job 4242'\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    loose = os.umask(0o002)  # a group-shared project disk
    try:
        folder = tmp_path / "out" / "slurm"
        executor = slurm.executor(SlurmConfig(), "suite.launcher", "pgbench-suite-x", folder)
        args = [("postgresql://alice:s3cret@db/pg",), ("postgresql://alice:s3cret@db/pg",)]
        jobs = slurm.submit(executor, _worker, args, "suite x")
        assert os.umask(0o002) == 0o002  # restored after the submission
    finally:
        os.umask(loose)
    assert [job.job_id for job in jobs] == ["4242_0", "4242_1"]
    pickles = sorted(p.name for p in folder.glob("*_submitted.pkl"))
    assert pickles == ["4242_0_submitted.pkl", "4242_1_submitted.pkl"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    written = [p for p in folder.rglob("*") if not p.is_symlink()]
    assert {stat.S_IMODE(p.stat().st_mode) for p in written if p.is_file()} == {0o600}
    assert {stat.S_IMODE(p.stat().st_mode) for p in written if p.is_dir()} <= {0o700}
