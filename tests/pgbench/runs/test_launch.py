"""suite.launcher=slurm: bad settings fail before anything is submitted, and a suite runs as a
SLURM job array on a real single-node cluster (tests/conftest.py), one job killed mid-cell."""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from pgbench.cli import main
from pgbench.errors import ConfigError
from pgbench.runs.launch import launch_suite
from pgbench.runs.suite import open_storage, plan_suite

INLINE = {"tasks": "arith", "estimators": "rloo", "seeds": "1"}
PG = "postgresql://u:secret@db.example:5432/optuna"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({}, r"needs suite.storage=postgresql://\.\.\. .*got the local journal file$"),
        ({"suite.storage": "runs/q.journal"}, r"needs suite.storage=.*got runs/q.journal$"),
        ({"suite.storage": PG}, r"tracking.uri every node reaches: .*got sqlite:///mlflow.db$"),
        (
            {"suite.storage": PG, "tracking.uri": "http://mlflow:5000", "slurm.extra": "qos=hi"},
            r"slurm.extra: 'qos=hi' is not an sbatch flag; use --key=value or --flag",
        ),
        ({"slurm.gpus": "1"}, r"unknown key 'slurm.gpus'; did you mean slurm.gpus_per_task"),
        ({"suite.launcher": "pbs"}, r"suite.launcher='pbs' is not valid; choose one of: local, "),
        ({"slurm.time_min": "0"}, r"slurm.time_min must be >= 1 \(got 0\)"),
    ],
)
def test_bad_slurm_settings_fail_in_one_line(keys, message):
    with pytest.raises(ConfigError, match=message) as raised:
        plan_suite(INLINE | {"suite.launcher": "slurm"} | keys)
    assert "\n" not in str(raised.value) and "secret" not in str(raised.value)


def test_without_sbatch_nothing_is_queued(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here, as on a machine outside SLURM
    keys = {"suite.storage": PG, "tracking.uri": "http://mlflow:5000", "suite.launcher": "slurm"}
    plan = plan_suite(INLINE | keys | {"output_dir": str(tmp_path / "out")})
    with pytest.raises(ConfigError, match="sbatch is not on PATH; run the command on a SLURM"):
        launch_suite(plan)
    assert not (tmp_path / "out").exists()  # failed before the study or any folder


def test_where_cells_run_does_not_change_the_suite_id():
    plain = plan_suite(INLINE)
    keys = {"suite.storage": PG, "tracking.uri": "http://mlflow:5000", "suite.launcher": "slurm"}
    slurm = plan_suite(INLINE | keys | {"suite.wait": "true", "slurm.partition": "gpu"})
    assert slurm.id != plan_suite(INLINE | {"seeds": "2"}).id  # what runs does change it
    assert (
        slurm.id
        == plan_suite(INLINE | {"suite.storage": PG, "tracking.uri": keys["tracking.uri"]}).id
    )
    assert slurm.launcher == "slurm" and slurm.wait and slurm.slurm.partition == "gpu"
    assert plain.launcher == "local"


def _running_cell(plan, out, timeout_s=300) -> optuna.trial.FrozenTrial:
    """The first trial a SLURM worker runs, once its run directory exists (inside the cell)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name=f"suite-{plan.id}", storage=open_storage(plan))
        except KeyError:
            study = None
        for trial in study.get_trials(states=(TrialState.RUNNING,)) if study else []:
            if (out / trial.user_attrs.get("cell", "?") / "run.json").is_file():
                return trial
        time.sleep(0.2)
    pytest.fail("no SLURM worker started a cell")


def _freeze(job: str, timeout_s: float = 30) -> list[int]:
    """SIGSTOP every process of SLURM array task `job` (e.g. 1_0, found by the task's
    environment) and wait until each is stopped; returns their pids. `scancel --signal` cannot
    do this: it returns before slurmd delivers the signal, and a signal it delivers to a
    stopped step continues it first, so the cell could finish in between."""
    array, task = job.split("_")
    wanted = {f"SLURM_ARRAY_JOB_ID={array}".encode(), f"SLURM_ARRAY_TASK_ID={task}".encode()}
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if wanted <= set(environ.read_bytes().split(b"\0")):
                pids.append(int(environ.parent.name))
        except OSError:  # a process that ended meanwhile
            continue
    assert pids, f"no process of job {job} on this node"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        while stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] not in "TtZX":
            assert time.monotonic() < deadline, f"process {pid} of job {job} did not stop"
            time.sleep(0.05)
    return pids


def test_a_suite_on_slurm_survives_a_cancelled_worker(
    run_overrides,
    postgres_url,
    mlflow_server,
    slurm_cluster,
    tmp_path,
    capsys,
    retry_of,
    queue_drains,
):
    out = tmp_path / "suite"
    values = run_overrides | {
        "tasks": "fr_en",
        "estimators": "rloo",
        "seeds": "3",
        "trainer.steps": "30",
        "eval.every": "0",
        "checkpoint.every": "10",
        "output_dir": str(out),
        "tracking.uri": mlflow_server.url,
        "suite.id": "slurm1",
        "suite.storage": postgres_url,
        "suite.heartbeat_s": "1",
        "suite.launcher": "slurm",
        "suite.workers": "2",
        "slurm.time_min": "20",
        "threads": "1",
    }
    args = [f"{k}={v}" for k, v in values.items()]
    assert main(["suite", *args]) == 0
    printed = capsys.readouterr().out
    jobs = re.search(r"submitted 2 SLURM workers: (\S+), (\S+)", printed).groups()
    assert f"{mlflow_server.url}/#/experiments/" in printed

    plan = plan_suite(values)
    victim = _running_cell(plan, out)
    assert victim.user_attrs["worker"] in jobs
    run_dir = out / victim.user_attrs["cell"]
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    job = victim.user_attrs["worker"]
    frozen = _freeze(job)  # stopped where it is, before the cell can finish
    assert not (run_dir / "summary.json").exists(), "the cell finished before it was stopped"
    for pid in frozen:  # as a node that dies: no process of the job runs another instruction
        os.kill(pid, signal.SIGKILL)
    subprocess.run(["scancel", job], check=True)

    # the same command, waiting: the cancelled job's cell is queued again and finished
    assert main(["suite", *args, "suite.wait=true"]) == 0
    study = optuna.load_study(study_name="suite-slurm1", storage=open_storage(plan))
    killed, retry = retry_of(study, victim.number)
    assert retry.user_attrs["cell"] == killed.user_attrs["cell"]
    done = [t.user_attrs["cell"] for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert sorted(done) == ["fr_en-rloo-s0", "fr_en-rloo-s1", "fr_en-rloo-s2"]  # each once
    # SLURM saw the killed step end abnormally: FAILED when our SIGKILL lands before scancel
    log = (out / "slurm" / f"{job}_0_log.err").read_text()
    assert re.search(r"\*\*\* STEP \S+ ON \S+ (CANCELLED|FAILED)", log), log[-300:]
    assert queue_drains(), "a worker job did not end once no cell was left"

    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("fr_en").experiment_id
    runs = client.search_runs([experiment], "tags.`pgbench.suite` = 'slurm1'")
    assert sorted(r.data.tags["pgbench.seed"] for r in runs) == ["0", "1", "2"]
    assert all(r.info.status == "FINISHED" for r in runs)
    # the cancelled cell resumed in its own MLflow run: every step logged once, in order
    assert run_id in {r.info.run_id for r in runs}
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert steps == list(range(1, 31))
    table = pd.read_csv(out / "runs.csv")
    assert sorted(table.seed) == [0, 1, 2] and set(table.run_id) == {r.info.run_id for r in runs}
    assert "## Leaderboard" in (out / "suite.md").read_text()


def test_a_job_and_suite_wait_give_up_a_cell_after_max_attempts(tmp_path, monkeypatch):
    import submitit

    from pgbench.runs import suite
    from pgbench.runs.launch import slurm_worker, wait_for_cells

    storage = f"sqlite:///{tmp_path / 'q.db'}"
    plan = plan_suite(INLINE | {"output_dir": str(tmp_path), "suite.storage": storage})
    study = optuna.create_study(study_name=f"suite-{plan.id}", storage=open_storage(plan))
    calls = []

    def broken(plan, cell):
        calls.append(cell.name)
        raise ValueError("loss is NaN past max_skipped")

    monkeypatch.setattr(suite, "run_cell", broken)
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: type("Job", (), {"job_id": "7_0"}))
    slurm_worker(plan)  # returns: the cell is not queued again after its third failure
    assert calls == ["arith-rloo-s0"] * 3
    assert [t.user_attrs["worker"] for t in study.trials] == ["7_0"] * 3
    # suite.wait=true: nothing waits or runs, so no job is submitted (slurm=None) and it returns
    assert wait_for_cells(None, plan, study, "pgbench-suite-none") == plan
