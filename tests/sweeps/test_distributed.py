import os
import signal
import subprocess
import sys
import time

import optuna
from mlflow import MlflowClient
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from pgbench.config import resolve
from pgbench.sweeps.runner import open_storage, run_sweep


def test_two_workers_share_a_postgresql_study(sweep_values, postgres_url):
    config = resolve(
        sweep_values
        | {
            "sweep.n_trials": "4",
            "sweep.workers": "2",
            "sweep.storage": postgres_url,
            "sweep.name": "shared",
        }
    )
    result = run_sweep(config)
    study = optuna.load_study(study_name="shared", storage=open_storage(config))
    finished = [t for t in study.trials if t.state != TrialState.RUNNING]
    assert len(finished) >= 4 and result["storage"] == postgres_url


def test_a_killed_workers_trial_is_retried(sweep_values, postgres_url, tmp_path):
    values = sweep_values | {
        "sweep.n_trials": "2",
        "sweep.storage": postgres_url,
        "sweep.name": "killed",
        "sweep.heartbeat_s": "1",
        "sweep.pruner": "none",
    }
    slow = values | {"trainer.steps": "400", "output_dir": str(tmp_path / "first")}
    worker = subprocess.Popen(
        [sys.executable, "-m", "pgbench", "sweep", *(f"{k}={v}" for k, v in slow.items())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    config = resolve(values)
    deadline = time.monotonic() + 120
    running = []
    while not running and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="killed", storage=open_storage(config))
            # a trial with its MLflow run has started its objective, so it has a heartbeat
            running = [
                t
                for t in study.get_trials(states=(TrialState.RUNNING,))
                if "mlflow_run_id" in t.user_attrs
            ]
        except KeyError:  # the study is not created yet
            pass
    assert running, "the first worker never started a trial"
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    time.sleep(3)  # longer than the grace period (2 heartbeats of 1 s)

    result = run_sweep(resolve(values | {"output_dir": str(tmp_path / "second")}))
    study = optuna.load_study(study_name="killed", storage=open_storage(config))
    killed = study.trials[running[0].number]
    assert killed.state == TrialState.FAIL
    retried = [
        t
        for t in study.trials
        if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number
    ]
    assert retried and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == killed.params
    assert result["trials"]["COMPLETE"] >= 1
    # the killed trial's MLflow run no longer claims to be running
    run = MlflowClient(values["tracking.uri"]).get_run(killed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and "stale" in run.data.tags["pgbench.fail_reason"]
