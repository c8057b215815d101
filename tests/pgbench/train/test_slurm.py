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
