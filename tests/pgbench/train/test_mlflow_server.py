"""Tracking through a real `mlflow server` (PostgreSQL backend store, local artifact root; the
fixture is in tests/conftest.py): runs, sweeps and suites read back with MlflowClient, and the
server taken away mid-run and before a run."""

import json
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pgbench.cli import main
from pgbench.config.verbs import resolve
from pgbench.train.tracking import SPOOL
from pgbench.train.trainer import train


@pytest.fixture
def served(run_overrides, mlflow_server, monkeypatch, request) -> dict[str, str]:
    """The micro run's keys, tracked by the server in an experiment of this test's own; MLflow
    told not to retry, so a stopped server is noticed at once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    yield run_overrides | {
        "tracking.uri": mlflow_server.url,
        "tracking.experiment": request.node.name,
    }
    if mlflow_server.process is None:  # a test that stopped it failed before restarting it
        mlflow_server.start()


def _history(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_a_run_is_read_back_from_the_server(served, mlflow_server, tmp_path):
    args = [f"{k}={v}" for k, v in served.items()]
    assert main(["run", *args, "estimator=grpo"]) == 0
    run_id = json.loads(Path(served["output_dir"], "run.json").read_text())["run_id"]
    client = MlflowClient(mlflow_server.url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["estimator"] == "grpo" and run.data.params["trainer.steps"] == "4"
    assert run.data.tags["mlflow.runName"] == "run"  # the run directory's name
    assert _history(client, run_id, "train/loss") == [1, 2, 3, 4]
    assert _history(client, run_id, "eval/chrf") == [0, 2, 4]  # eval.every=2, and before
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.json", "summary.json", "samples.csv", "final"} <= artifacts
    summary = json.loads(
        Path(client.download_artifacts(run_id, "summary.json", tmp_path)).read_text()
    )
    assert summary["run_id"] == run_id


def test_a_server_stopped_mid_run_loses_and_duplicates_nothing(served, mlflow_server):
    def outage(step: int, metrics: dict[str, float]) -> None:
        if step == 2:  # step 2 is logged; steps 3-4, the evals, artifacts and status are not
            mlflow_server.stop()

    summary = train(resolve(served), on_step_end=outage)
    run_dir = served["output_dir"]
    spooled = [json.loads(line) for line in open(f"{run_dir}/{SPOOL}")]
    assert [r["step"] for r in spooled if r["kind"] == "metrics" and "train/loss" in r["metrics"]]
    assert spooled[-1]["kind"] == "finish" and spooled[-1]["status"] == "FINISHED"

    mlflow_server.start()
    assert main(["sync", run_dir]) == 0
    assert main(["sync", run_dir]) == 0  # nothing left: adds nothing twice
    client = MlflowClient(mlflow_server.url)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert _history(client, run.info.run_id, "train/loss") == [1, 2, 3, 4]
    assert _history(client, run.info.run_id, "eval/chrf") == [0, 2, 4]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "samples.csv", "final"} <= artifacts


def test_a_run_started_while_the_server_is_down_fails_fast(served, mlflow_server, capsys):
    mlflow_server.stop()
    started = time.monotonic()
    assert main(["run", *(f"{k}={v}" for k, v in served.items())]) == 2
    assert time.monotonic() - started < 30
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"pgbench run: error: tracking.uri={mlflow_server.url} is unreachable")
    assert "\n" not in error
    mlflow_server.start()
    assert not Path(served["output_dir"]).exists()


def test_a_sweep_and_a_suite_log_nested_and_tagged_runs(served, mlflow_server, tmp_path):
    fast = served | {"trainer.steps": "2", "eval.every": "0", "checkpoint.every": "0"}
    sweep = fast | {"task": "fr_en", "estimator": "rloo", "sweep.n_trials": "2"}
    sweep |= {"sweep.name": "served", "output_dir": str(tmp_path / "sweep")}
    assert main(["sweep", *(f"{k}={v}" for k, v in sweep.items())]) == 0
    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name(served["tracking.experiment"]).experiment_id
    parent = client.search_runs([experiment], "attributes.run_name = 'sweep-served'")[0]
    children = client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(r.data.tags["pgbench.trial"] for r in children) == ["0", "1"]
    assert all(_history(client, r.info.run_id, "train/loss") == [1, 2] for r in children)

    suite = fast | {"tasks": "fr_en", "estimators": "reinforce,rloo", "seeds": "1"}
    suite |= {"suite.id": "served", "output_dir": str(tmp_path / "suite")}
    assert main(["suite", *(f"{k}={v}" for k, v in suite.items())]) == 0
    runs = client.search_runs([experiment], "tags.`pgbench.suite` = 'served'")
    assert sorted(r.data.tags["pgbench.estimator"] for r in runs) == ["reinforce", "rloo"]
    suites = client.get_experiment_by_name("pgbench-suites").experiment_id
    (head,) = client.search_runs([suites], "tags.`pgbench.suite_of` = 'served'")
    assert {"runs.csv", "suite.md"} <= {a.path for a in client.list_artifacts(head.info.run_id)}
