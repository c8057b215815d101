import json

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pgbench.errors import DataError
from pgbench.train.tracking import SPOOL, MLflowTracker, NullTracker, sync


def _tracker(tmp_path, spool=True) -> tuple[MLflowTracker, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tracker = MLflowTracker(uri, "exp", spool=run_dir / SPOOL if spool else None)
    (run_dir / "run.json").write_text(json.dumps({"run_id": tracker.run_id, "tracking_uri": uri}))
    return tracker, uri


def _steps(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key)]


def test_outage_mid_run_buffers_and_sync_uploads_everything(tmp_path, monkeypatch):
    tracker, uri = _tracker(tmp_path)
    tracker.log_params({"trainer.lr": 1e-4})
    tracker.log_metrics({"train/loss": 1.0}, 1)
    # The server goes away: a real HTTP client on a closed local port, no retries.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    tracker.client = MlflowClient("http://127.0.0.1:9")
    tracker.log_metrics({"train/loss": 0.5, "train/kl": 0.1}, 2)
    tracker.log_metrics({"train/loss": 0.25}, 3)
    tracker.finish()
    spool = tmp_path / "run" / SPOOL
    kinds = [json.loads(line)["kind"] for line in spool.read_text().splitlines()]
    assert kinds == ["metrics", "metrics", "finish"]
    assert _steps(uri, tracker.run_id, "train/loss") == [(1, 1.0)]
    assert MlflowClient(uri).get_run(tracker.run_id).info.status == "RUNNING"

    assert sync(tmp_path / "run") == 3
    assert _steps(uri, tracker.run_id, "train/loss") == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert _steps(uri, tracker.run_id, "train/kl") == [(2, 0.1)]
    run = MlflowClient(uri).get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.params["trainer.lr"] == "0.0001"
    assert not spool.exists() and (tmp_path / "run" / "tracking_buffer.synced.jsonl").is_file()
    assert sync(tmp_path / "run") == 0


def test_sync_twice_logs_each_point_once(tmp_path):
    tracker, uri = _tracker(tmp_path)
    tracker.offline = True  # everything goes to the spool
    tracker.log_metrics({"train/loss": 2.0}, 1)
    spool = tmp_path / "run" / SPOOL
    saved = spool.read_text()
    assert sync(tmp_path / "run") == 1
    spool.write_text(saved)  # e.g. a sync that crashed after uploading, run again
    assert sync(tmp_path / "run") == 1
    assert _steps(uri, tracker.run_id, "train/loss") == [(1, 2.0)]


def test_without_spool_errors_propagate(tmp_path, monkeypatch):
    tracker, _ = _tracker(tmp_path, spool=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    tracker.client = MlflowClient("http://127.0.0.1:9")
    with pytest.raises(MlflowException):
        tracker.log_metrics({"train/loss": 1.0}, 1)


def test_sync_needs_a_run_directory(tmp_path):
    with pytest.raises(DataError, match="not a pgbench run directory"):
        sync(tmp_path)


def test_tags_and_a_dead_workers_run_go_through_the_tracker(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = MLflowTracker(uri, "tags", run_name="parent")
    parent.set_tags({"pgbench.best_params": "{}"})
    dead = MLflowTracker(uri, "tags", run_name="dead")  # its worker dies: never finished
    done = MLflowTracker(uri, "tags", run_name="done")
    done.finish("FINISHED")
    for run in (dead, done):
        parent.fail_if_running(run.run_id, {"pgbench.fail_reason": "stale"})
    client = MlflowClient(uri)
    assert client.get_run(parent.run_id).data.tags["pgbench.best_params"] == "{}"
    assert client.get_run(dead.run_id).info.status == "FAILED"
    assert client.get_run(dead.run_id).data.tags["pgbench.fail_reason"] == "stale"
    assert client.get_run(done.run_id).info.status == "FINISHED"
    assert "pgbench.fail_reason" not in client.get_run(done.run_id).data.tags
    null = NullTracker()
    null.set_tags({"a": "b"})
    assert null.tags == {"a": "b"}


def test_a_worker_that_loses_the_race_to_create_the_experiment_joins_it(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = MLflowTracker(uri, "exp")
    # another worker created "exp" between this one's lookup and its create_experiment
    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", _missing_once(MlflowClient))
    second = MLflowTracker(uri, "exp")
    client = MlflowClient(uri)
    assert client.get_run(second.run_id).info.experiment_id == (
        client.get_run(first.run_id).info.experiment_id
    )


def _missing_once(cls):
    real, calls = cls.get_experiment_by_name, []

    def lookup(self, name):
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    return lookup


def test_a_resumed_run_keeps_its_first_params(tmp_path):
    # a cell resumed by another copy of pgbench logs another git_commit: MLflow would refuse it
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = MLflowTracker(uri, "exp", spool=tmp_path / "spool.jsonl")
    first.log_params({"git_commit": "aaa", "task": "arith"})
    resumed = MLflowTracker(uri, "exp", run_id=first.run_id, spool=tmp_path / "spool.jsonl")
    resumed.log_params({"git_commit": "bbb", "task": "arith", "model_path": "/x"})
    params = MlflowClient(uri).get_run(first.run_id).data.params
    assert params == {"git_commit": "aaa", "task": "arith", "model_path": "/x"}
    assert not resumed.offline and not (tmp_path / "spool.jsonl").exists()
