import json
import threading
import time
import warnings

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from pgbench.config.verbs import SweepArgs, resolve
from pgbench.errors import ConfigError
from pgbench.sweeps.runner import connect, run_sweep, storage_url
from pgbench.train.rundir import run_dir_lock


def sweep_config(values):
    """The `pgbench sweep` configuration of `values`."""
    return resolve(values, SweepArgs)


def nested_runs(uri, parent_run_id):
    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )
    return client, parent, runs


def test_three_trials_become_nested_runs_and_resume_by_name(sweep_values):
    result = run_sweep(sweep_config(sweep_values | {"sweep.n_trials": "3"}))
    assert result["trials"]["COMPLETE"] + result["trials"]["PRUNED"] == 3
    client, parent, runs = nested_runs(sweep_values["tracking.uri"], result["parent_run_id"])
    assert len(runs) == 3
    assert sorted(r.data.tags["pgbench.trial"] for r in runs) == ["0", "1", "2"]
    for run in runs:
        assert run.data.tags["pgbench.trial_state"] in ("COMPLETE", "PRUNED")
        assert "trainer.lr" in run.data.params and "eval/chrf" in run.data.metrics
        history = client.get_metric_history(run.info.run_id, "train/reward_mean")
        assert len(history) >= 1
    assert parent.data.metrics["sweep/best_value"] == pytest.approx(result["best_value"])
    assert result["command"].startswith("pgbench run task=fr_en estimator=rloo")
    assert f"trainer.lr={result['best_params']['trainer.lr']}" in result["command"]
    best = json.loads(open(sweep_values["output_dir"] + "/best.json").read())
    assert best["best_trial"] == result["best_trial"]

    # the same command with a larger budget resumes the study and its parent run
    again = run_sweep(sweep_config(sweep_values | {"sweep.n_trials": "4"}))
    assert again["parent_run_id"] == result["parent_run_id"]
    assert sum(again["trials"].values()) == 4
    assert len(nested_runs(sweep_values["tracking.uri"], result["parent_run_id"])[2]) == 4


def test_failing_trials_are_marked_and_the_sweep_goes_on(sweep_values, tmp_path):
    space = tmp_path / "space.json"
    space.write_text(
        json.dumps(
            {
                "task.test_file": {
                    "type": "categorical",
                    "choices": ["", str(tmp_path / "missing.tsv")],
                },
            }
        )
    )
    result = run_sweep(
        sweep_config(
            sweep_values
            | {"sweep.n_trials": "5", "sweep.space": str(space), "sweep.pruner": "none"}
        )
    )
    assert sum(result["trials"].values()) == 5
    assert result["trials"]["FAIL"] >= 1 and result["trials"]["COMPLETE"] >= 1
    study = optuna.load_study(
        study_name="fr_en-rloo", storage=storage_url(sweep_config(sweep_values))
    )
    _, _, runs = nested_runs(sweep_values["tracking.uri"], result["parent_run_id"])
    by_trial = {int(r.data.tags["pgbench.trial"]): r for r in runs}
    for trial in study.trials:
        run = by_trial[trial.number]
        if trial.params["task.test_file"]:
            assert trial.state == optuna.trial.TrialState.FAIL
            assert run.data.tags["pgbench.trial_state"] == "FAIL"
            assert "does not exist" in run.data.tags["pgbench.fail_reason"]
            assert run.info.status == "FAILED"
        else:
            assert trial.state == optuna.trial.TrialState.COMPLETE
            assert run.info.status == "FINISHED"


def test_two_workers_share_a_journal_study(sweep_values):
    config = sweep_config(sweep_values | {"sweep.n_trials": "4", "sweep.workers": "2"})
    assert storage_url(config).endswith("optuna.journal")
    result = run_sweep(config)
    assert sum(result["trials"].values()) >= 4
    _, _, runs = nested_runs(sweep_values["tracking.uri"], result["parent_run_id"])
    assert len(runs) == sum(result["trials"].values())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"sweep.storage": "nowhere"}, "sweep.storage=nowhere"),
        ({"sweep.space": "/no/space.json"}, "cannot read a JSON search space"),
    ],
)
def test_bad_sweep_settings_fail_before_work(sweep_values, extra, message):
    with pytest.raises(ConfigError, match=message):
        run_sweep(sweep_config(sweep_values | extra))


def test_space_keys_are_checked_against_the_config(sweep_values, tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"trainer.lrr": {"type": "float", "low": 1e-5, "high": 1e-3}}))
    with pytest.raises(ConfigError, match="search space key trainer.lrr.*did you mean trainer.lr"):
        run_sweep(sweep_config(sweep_values | {"sweep.space": str(space)}))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed")
def test_a_failed_heartbeat_does_not_stop_the_heartbeats(tmp_path, monkeypatch):
    # Optuna's heartbeat thread ends at the first exception of record_heartbeat (a dropped
    # connection): the trial would then look dead and be re-run beside its live worker
    from optuna.storages import RDBStorage
    from optuna.storages._heartbeat import HeartbeatThread

    storage = connect(f"sqlite:///{tmp_path / 'hb.db'}", 1, "sweep.storage")
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    beats = []
    real = RDBStorage.record_heartbeat

    def flaky(self, trial_id):
        beats.append(trial_id)
        if len(beats) == 1:
            raise optuna.exceptions.StorageInternalError("server closed the connection")
        real(self, trial_id)

    monkeypatch.setattr(RDBStorage, "record_heartbeat", flaky)
    thread = HeartbeatThread(trial._trial_id, storage)
    with pytest.warns(UserWarning, match="heartbeat of trial .* not recorded"):
        thread.start()
        deadline = time.monotonic() + 10
        while len(beats) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        thread.join()
    assert beats == [trial._trial_id] * 2  # the second beat, 1 s later, was recorded


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed")
def test_a_stale_trial_whose_run_directory_is_held_is_not_failed(tmp_path, monkeypatch):
    from optuna.storages import RDBStorage

    storage = connect(f"sqlite:///{tmp_path / 'stale.db'}", 1, "sweep.storage")
    study = optuna.create_study(storage=storage)
    live, dead = study.ask(), study.ask()
    for trial in (live, dead):
        trial.set_user_attr("run_dir", str(tmp_path / f"run{trial.number}"))
    # both heartbeats stale (a suspended job, a killed one) without waiting the grace period
    monkeypatch.setattr(
        RDBStorage, "_get_stale_trial_ids", lambda self, study_id: [live._trial_id, dead._trial_id]
    )
    held, done = threading.Event(), threading.Event()

    def suspended_worker() -> None:  # still holds its run directory
        with run_dir_lock(tmp_path / "run0"):
            held.set()
            done.wait(10)

    worker = threading.Thread(target=suspended_worker)
    worker.start()
    held.wait(10)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    finally:
        done.set()
        worker.join()
    # the dead one failed (and queued again by the retry callback); the held one runs on
    assert [t.state for t in study.trials[:2]] == [TrialState.RUNNING, TrialState.FAIL]
