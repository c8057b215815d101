import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from pgbench.config.urls import redact
from pgbench.config.verbs import SweepArgs, resolve
from pgbench.sweeps.runner import open_storage, run_sweep


def sweep_config(values):
    """The `pgbench sweep` configuration of `values`."""
    return resolve(values, SweepArgs)


def test_two_workers_share_a_postgresql_study(sweep_values, postgres_url):
    config = sweep_config(
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
    assert len(finished) >= 4 and result["storage"] == redact(postgres_url)
    assert ":***@" in result["storage"]


def test_a_killed_workers_trial_is_retried(
    sweep_values, postgres_url, tmp_path, kill_worker, retry_of
):
    values = sweep_values | {
        "sweep.n_trials": "2",
        "sweep.storage": postgres_url,
        "sweep.name": "killed",
        "sweep.heartbeat_s": "1",
        "sweep.pruner": "none",
    }
    slow = values | {"trainer.steps": "400", "output_dir": str(tmp_path / "first")}
    config = sweep_config(values)
    killed = kill_worker(
        ["sweep", *(f"{k}={v}" for k, v in slow.items())],
        "killed",
        lambda: open_storage(config),
        # a trial with its MLflow run has started its objective, so it has a heartbeat
        lambda t: "mlflow_run_id" in t.user_attrs,
    )

    result = run_sweep(sweep_config(values | {"output_dir": str(tmp_path / "second")}))
    study = optuna.load_study(study_name="killed", storage=open_storage(config))
    killed, retry = retry_of(study, killed.number)
    assert retry.params == killed.params
    assert result["trials"]["COMPLETE"] >= 1
    # the killed trial's MLflow run no longer claims to be running
    run = MlflowClient(values["tracking.uri"]).get_run(killed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and "stale" in run.data.tags["pgbench.fail_reason"]
