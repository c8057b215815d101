"""A run killed with SIGKILL resumes into the same MLflow run, each step logged exactly once."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

from mlflow import MlflowClient

from pgbench.cli import main
from pgbench.config.verbs import resolve
from pgbench.train.trainer import train

TIMINGS = {"train/step_time_s", "train/rollout_tokens_per_s", "train/wall_clock_s"}
TIMINGS |= {"train/peak_memory_mb"}


def _histories(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(uri)
    keys = client.get_run(run_id).data.metrics
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        for key in keys
    }


def _kill_after_checkpoint(overrides: dict[str, str], step: int) -> None:
    """Start `pgbench run` and SIGKILL it as soon as the checkpoint of `step` is complete."""
    args = [f"{key}={value}" for key, value in overrides.items()]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pgbench", "run", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = f"{overrides['output_dir']}/checkpoints/step-{step:06d}/state.pt"
    deadline = time.monotonic() + 300
    while not os.path.exists(marker):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_sigkilled_run_resumes_with_every_step_logged_once(run_overrides, tmp_path):
    overrides = run_overrides | {
        "trainer.steps": "16",
        "checkpoint.every": "4",
        "eval.every": "4",
        "estimator": "grpo",
        "trainer.lr": "3e-3",
    }
    uri = overrides["tracking.uri"]
    straight = train(resolve(overrides | {"output_dir": str(tmp_path / "straight")}))

    killed_dir = tmp_path / "killed"
    _kill_after_checkpoint(overrides | {"output_dir": str(killed_dir)}, step=8)
    assert not (killed_dir / "summary.json").exists()
    run_id = json.loads((killed_dir / "run.json").read_text())["run_id"]
    assert MlflowClient(uri).get_run(run_id).info.status == "RUNNING"  # SIGKILL leaves it so

    saved = json.loads((killed_dir / "config.json").read_text())
    resumed = train(resolve(saved | {"resume": str(killed_dir)}))
    assert resumed["run_id"] == run_id
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
    assert resumed["eval_after"] == straight["eval_after"]

    expected, got = _histories(uri, straight["run_id"]), _histories(uri, run_id)
    assert got.keys() == expected.keys()
    for key, points in expected.items():
        steps = [step for step, _ in got[key]]
        assert steps == [step for step, _ in points], key  # each step once, none missing
        if key not in TIMINGS and not key.startswith("timing/"):
            assert got[key] == points, key
    with open(killed_dir / "samples.csv", newline="") as handle:
        rows = [(r["step"], r["split"], r["source"]) for r in csv.DictReader(handle)]
    assert len(rows) == len(set(rows))


def test_steps_after_the_last_checkpoint_are_not_logged_again(
    run_overrides, tmp_path, capsys, other_process_lock
):
    overrides = run_overrides | {"trainer.steps": "5", "checkpoint.every": "2", "eval.every": "0"}

    def crash_after_step_3(step: int, metrics: dict[str, float]) -> None:
        if step == 3:
            raise KeyboardInterrupt  # logged step 3; the last checkpoint is step 2

    run_dir = tmp_path / "crashed"
    try:
        train(resolve(overrides | {"output_dir": str(run_dir)}), on_step_end=crash_after_step_3)
    except KeyboardInterrupt:
        pass
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    history = MlflowClient(overrides["tracking.uri"]).get_metric_history
    assert [m.step for m in history(run_id, "train/loss")] == [1, 2, 3]
    saved = json.loads((run_dir / "config.json").read_text())
    # while another process holds the run's lock, a resume is refused and logs nothing
    with other_process_lock(run_dir / ".lock"):
        assert main(["run", f"resume={run_dir}"]) == 2
        assert "is being trained by another process" in capsys.readouterr().err
    assert [m.step for m in history(run_id, "train/loss")] == [1, 2, 3]
    train(resolve(saved | {"resume": str(run_dir)}))
    assert sorted(m.step for m in history(run_id, "train/loss")) == [1, 2, 3, 4, 5]
    assert sorted(m.step for m in history(run_id, "test/chrf")) == [0, 5]


def test_sync_command(run_overrides, capsys):
    summary = train(resolve(run_overrides | {"trainer.steps": "1", "eval.every": "0"}))
    assert main(["sync", summary["output_dir"]]) == 0
    assert "nothing to sync" in capsys.readouterr().out
    assert main(["sync"]) == 2
    assert "usage: pgbench sync <run dir>" in capsys.readouterr().err


def test_a_run_killed_before_its_first_checkpoint_resumes_into_the_same_mlflow_run(
    run_overrides, tmp_path
):
    # the suite's case: run.json exists, no checkpoint; the resumed run starts at step 0 and
    # logs its params again, which MLflow refuses if any value changed (it used to: `resume`)
    values = run_overrides | {"trainer.steps": "2", "eval.every": "0", "checkpoint.every": "0"}
    first = train(resolve(values))
    run_dir = tmp_path / "run"
    for path in sorted(run_dir.rglob("*"), reverse=True):  # keep run.json only
        if path.name != "run.json":
            path.unlink() if path.is_file() else path.rmdir()
    again = train(resolve(values | {"resume": str(run_dir)}))
    assert again["run_id"] == first["run_id"]
    assert not (run_dir / "tracking_buffer.jsonl").exists()  # nothing refused by MLflow
    run = MlflowClient(values["tracking.uri"]).get_run(first["run_id"])
    assert run.info.status == "FINISHED" and "resume" not in run.data.params
