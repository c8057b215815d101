"""sweep.launcher=slurm: bad settings fail before anything is created, and a sweep runs as a
SLURM job array on a real single-node cluster (tests/conftest.py), tracked by a real MLflow
server."""

import json
import re
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from pgbench.cli import main
from pgbench.config.verbs import SweepArgs, resolve
from pgbench.errors import ConfigError
from pgbench.sweeps.launch import launch_sweep
from pgbench.sweeps.runner import open_storage

PG = "postgresql://u:secret@db.example:5432/optuna"
SERVER = {"sweep.storage": PG, "tracking.uri": "http://mlflow:5000"}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({}, r"^sweep.launcher=slurm needs sweep.storage=post.*got the local optuna.db or "),
        ({"sweep.storage": "sqlite:///o.db"}, r"needs sweep.storage=.*got sqlite:///o.db$"),
        ({"sweep.storage": PG}, r"tracking.uri every node reaches: .*got sqlite:///mlflow.db$"),
        (SERVER | {"slurm.extra": "qos"}, r"slurm.extra: 'qos' is not an sbatch flag"),
        ({"sweep.launcher": "ray"}, r"sweep.launcher='ray' is not valid; choose one of: local, "),
    ],
)
def test_bad_slurm_settings_fail_in_one_line(keys, message):
    with pytest.raises(ConfigError, match=message) as raised:
        resolve({"task": "fr_en", "sweep.launcher": "slurm"} | keys, SweepArgs)
    assert "\n" not in str(raised.value) and "secret" not in str(raised.value)


def test_without_sbatch_nothing_is_created(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here, as on a machine outside SLURM
    keys = SERVER | {"sweep.launcher": "slurm", "output_dir": str(tmp_path / "out")}
    with pytest.raises(ConfigError, match="^sweep.launcher=slurm: sbatch is not on PATH"):
        launch_sweep(resolve({"task": "fr_en"} | keys, SweepArgs))
    assert not (tmp_path / "out").exists()  # failed before the study or any folder


def test_a_sweep_runs_as_a_slurm_array(
    sweep_values, postgres_url, mlflow_server, slurm_cluster, capsys, queue_drains
):
    values = sweep_values | {
        "sweep.n_trials": "3",
        "sweep.workers": "2",
        "sweep.storage": postgres_url,
        "sweep.name": "slurm-sweep",
        "sweep.pruner": "none",  # every trial runs to its end
        "sweep.heartbeat_s": "2",
        "sweep.launcher": "slurm",
        "tracking.uri": mlflow_server.url,
        "slurm.time_min": "20",
        "threads": "1",
    }
    args = [f"{k}={v}" for k, v in values.items()]
    assert main(["sweep", *args]) == 0
    printed = capsys.readouterr().out
    jobs = re.search(r"submitted 2 SLURM workers: (\S+), (\S+)\n", printed).groups()
    assert f"{mlflow_server.url}/#/experiments/" in printed and "sweep.wait=true" in printed
    assert "?workflowType=machine_learning (nested runs of sweep-slurm-sweep" in printed

    # the same command, waiting: the two jobs are still queued or running, so none is added
    assert main(["sweep", *args, "sweep.wait=true"]) == 0
    printed = capsys.readouterr().out
    assert "submitted" not in printed and "best valid score" in printed
    study = optuna.load_study(
        study_name="slurm-sweep", storage=open_storage(resolve(values, SweepArgs))
    )
    # two workers may both start a third trial before either sees three finished
    assert len(study.trials) in (3, 4)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    ran_in = {t.user_attrs["worker"] for t in study.trials}
    assert ran_in <= set(jobs) and len(ran_in) == 2  # each array job ran trials
    assert queue_drains(), "a worker job did not end once the study had its trials"

    best = json.loads((Path(values["output_dir"]) / "best.json").read_text())
    client = MlflowClient(mlflow_server.url)
    parent = client.get_run(best["parent_run_id"])
    runs = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(r.info.run_id for r in runs) == sorted(
        t.user_attrs["mlflow_run_id"] for t in study.trials
    )
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["pgbench.trial_state"] == "COMPLETE"
        assert run.data.tags["pgbench.sweep"] == "slurm-sweep" and "eval/chrf" in run.data.metrics
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["sweep/complete_trials"] == len(study.trials)
