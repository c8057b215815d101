"""A throwaway MLflow store, and runs logged into it by hand."""

import shutil
from collections.abc import Callable

import pytest
from mlflow import MlflowClient


@pytest.fixture
def client(mlflow_store, tmp_path) -> MlflowClient:
    """A client of an empty SQLite store (a copy of the session's)."""
    shutil.copyfile(mlflow_store, tmp_path / "mlflow.db")
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture
def log_run(client) -> Callable[..., str]:
    """`log_run(experiment_id, params, {metric: [(step, value)]}, tags, status)` -> run id."""

    def log(experiment, params, history=None, tags=None, status="FINISHED") -> str:
        run_id = client.create_run(experiment, tags=tags or {}).info.run_id
        for key, value in params.items():
            client.log_param(run_id, key, value)
        for name, points in (history or {}).items():
            for step, value in points:
                client.log_metric(run_id, name, value, step=step)
        client.set_terminated(run_id, status)
        return run_id

    return log
