import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pgbench.cli import main
from pgbench.config.verbs import resolve
from pgbench.errors import ConfigError, DataError
from pgbench.train.tracking import SPOOL, MLflowTracker, NullTracker, sync, sync_pending
from pgbench.train.trainer import train


@pytest.fixture(autouse=True)
def _empty_store(mlflow_store, tmp_path) -> None:
    """Each test's tmp_path/mlflow.db: a copy of the session's empty store (no migrations)."""
    shutil.copyfile(mlflow_store, tmp_path / "mlflow.db")


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


def _offline(tracker: MLflowTracker, monkeypatch) -> None:
    """MLflow goes away: a real HTTP client on a closed local port, no retries."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    tracker.client = MlflowClient("http://127.0.0.1:9")


def test_a_torn_last_line_is_skipped_and_said_and_spoils_no_later_record(tmp_path, capsys):
    tracker, uri = _tracker(tmp_path)
    tracker.offline = True
    tracker.log_metrics({"train/loss": 1.0}, 1)
    spool = tmp_path / "run" / SPOOL
    with spool.open("a") as handle:  # the run is SIGKILLed (or the disk fills) mid-write
        handle.write('{"kind": "metrics", "step": 2, "ti')
    tracker.log_metrics({"train/loss": 0.5}, 3)  # the resumed run appends: a line of its own
    tracker.log_artifact(tmp_path / "rotated")  # a folder deleted before the sync
    assert sync(tmp_path / "run") == 3
    err = [line for line in capsys.readouterr().err.splitlines() if "pgbench" in line]
    assert "skipped 1 torn line(s)" in err[0] and "uploading the other 3" in err[0]
    assert err[1].endswith("rotated: no longer on disk") and len(err) == 2
    assert _steps(uri, tracker.run_id, "train/loss") == [(1, 1.0), (3, 0.5)]


def test_a_resumed_run_uploads_its_spool_first_and_a_later_sync_sets_no_stale_status(
    tmp_path, monkeypatch, capsys
):
    tracker, uri = _tracker(tmp_path)
    tracker.log_metrics({"train/loss": 1.0}, 1)
    _offline(tracker, monkeypatch)
    tracker.log_metrics({"train/loss": 0.5}, 2)
    tracker.finish("KILLED")  # Ctrl-C while MLflow is down: spooled
    spool = tmp_path / "run" / SPOOL
    spooled = spool.read_text()
    resumed = MLflowTracker(uri, "exp", run_id=tracker.run_id, spool=spool, once_per_step=True)
    assert "uploaded 2 records buffered" in capsys.readouterr().err and not spool.exists()
    client = MlflowClient(uri)
    assert client.get_run(tracker.run_id).info.status == "RUNNING"
    resumed.log_metrics({"train/loss": 0.4}, 2)  # replayed from the checkpoint: kept once
    resumed.log_metrics({"train/loss": 0.25}, 3)
    live = client.get_run(tracker.run_id)
    spool.write_text(spooled)  # e.g. a copy the resume never saw: the KILLED is older
    assert sync(tmp_path / "run") == 2
    assert client.get_run(tracker.run_id).info.status == "RUNNING"  # the live run survives
    assert "skipped its buffered KILLED status" in capsys.readouterr().err
    resumed.finish()
    spool.write_text(spooled)
    assert sync(tmp_path / "run") == 2
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.end_time >= live.info.start_time
    assert _steps(uri, tracker.run_id, "train/loss") == [(1, 1.0), (2, 0.5), (3, 0.25)]


def test_records_appended_while_a_sync_uploads_are_kept_for_the_next(tmp_path, monkeypatch):
    from pgbench.train import tracking

    tracker, uri = _tracker(tmp_path)
    tracker.offline = True  # the run goes on buffering while `pgbench sync` runs beside it
    tracker.log_metrics({"train/loss": 1.0}, 1)
    tracker.log_metrics({"train/loss": 0.5}, 2)
    real = tracking.replay

    def replay_while_the_run_appends(client, run_id, record):
        if record["step"] in (1, 3):  # the spool is renamed and its upload began: one more
            tracker.log_metrics({"train/loss": record["step"] / 10}, record["step"] + 2)
        real(client, run_id, record)

    monkeypatch.setattr(tracking, "replay", replay_while_the_run_appends)
    # steps 1-2 taken; step 3 came in meanwhile: the new spool is taken next, and step 5, come
    # in during that upload, waits in a third spool for the next sync
    assert sync(tmp_path / "run") == 3
    assert _steps(uri, tracker.run_id, "train/loss") == [(1, 1.0), (2, 0.5), (3, 0.1)]
    monkeypatch.setattr(tracking, "replay", real)
    assert sync(tmp_path / "run") == 1
    assert _steps(uri, tracker.run_id, "train/loss")[-1] == (5, 0.3)
    synced = (tmp_path / "run" / "tracking_buffer.synced.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in synced] == [1, 2, 3, 5]
    assert sync(tmp_path / "run") == 0


def test_a_sync_that_fails_midway_is_taken_again_first(tmp_path, monkeypatch):
    from pgbench.train import tracking

    tracker, uri = _tracker(tmp_path)
    tracker.offline = True
    tracker.log_metrics({"train/loss": 1.0}, 1)
    tracker.log_metrics({"train/loss": 0.5}, 2)
    real = tracking.replay

    def fail_on_step_2(client, run_id, record):
        if record.get("step") == 2:
            raise ConnectionError("MLflow went away again")
        real(client, run_id, record)

    monkeypatch.setattr(tracking, "replay", fail_on_step_2)
    with pytest.raises(ConnectionError):
        sync(tmp_path / "run")
    tracker.log_metrics({"train/loss": 0.25}, 3)  # a new spool beside the half-synced one
    monkeypatch.setattr(tracking, "replay", real)
    assert sync(tmp_path / "run") == 3
    assert _steps(uri, tracker.run_id, "train/loss") == [(1, 1.0), (2, 0.5), (3, 0.25)]


def test_sync_pending_uploads_before_a_read_and_says_when_it_cannot(tmp_path):
    tracker, uri = _tracker(tmp_path)
    run_dir = tmp_path / "run"
    assert sync_pending(run_dir) == 0 and sync_pending(tmp_path / "no-run") == 0
    tracker.offline = True
    tracker.log_metrics({"eval/chrf": 40.0}, 4)  # the valid curve's tail, still buffered
    tracker.finish()
    assert sync_pending(run_dir, uri) == 2
    assert _steps(uri, tracker.run_id, "eval/chrf") == [(4, 40.0)]
    tracker.log_metrics({"eval/chrf": 41.0}, 5)
    (run_dir / "run.json").write_text(
        json.dumps({"run_id": tracker.run_id, "tracking_uri": "http://127.0.0.1:9"})
    )
    with pytest.raises(ConfigError, match="is unreachable"):
        sync_pending(run_dir)


def test_a_kill_during_an_outage_is_not_replayed_over_the_resumed_finish(
    run_overrides, monkeypatch, capsys
):
    # MLflow goes away after step 1 and Ctrl-C at step 2 spools KILLED; the run is resumed
    # once MLflow is back and finishes online: it stays FINISHED, with every step once
    values = run_overrides | {"trainer.steps": "3", "eval.every": "0", "checkpoint.every": "1"}
    uri, run_dir = values["tracking.uri"], Path(values["output_dir"])
    tracker = MLflowTracker(uri, "pgbench", run_name="run", spool=run_dir / SPOOL)

    def outage_then_ctrl_c(step: int, metrics: dict[str, float]) -> None:
        if step == 1:
            _offline(tracker, monkeypatch)
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(resolve(values), tracker, on_step_end=outage_then_ctrl_c)
    spooled = [json.loads(line) for line in (run_dir / SPOOL).read_text().splitlines()]
    assert spooled[-1]["kind"] == "finish" and spooled[-1]["status"] == "KILLED"
    assert main(["run", f"resume={run_dir}"]) == 0  # uploads the spool first, then goes on
    assert "records buffered in" in capsys.readouterr().err
    assert main(["sync", str(run_dir)]) == 0 and "nothing to sync" in capsys.readouterr().out
    run = MlflowClient(uri).get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert [step for step, _ in _steps(uri, tracker.run_id, "train/loss")] == [1, 2, 3]


OPENER = """
import os, sys, time
from pathlib import Path
from pgbench.train.tracking import MLflowTracker
go = Path(sys.argv[2])
(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():  # every process has imported mlflow: start together
    time.sleep(0.01)
MLflowTracker(sys.argv[1], "race").finish()
"""


def test_runs_that_start_at_once_on_a_new_sqlite_store_all_open_it(tmp_path):
    # without the lock all but one die making the tables (`duplicate column name: step`)
    uri, go = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}", tmp_path / "go"
    (tmp_path / "new").mkdir()
    procs = [
        subprocess.Popen([sys.executable, "-c", OPENER, uri, str(go)], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    errors = [proc.communicate(timeout=120)[1].decode()[-300:] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, errors
    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("race").experiment_id]
    )
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
