"""Run directories (pgbench.train.rundir): resume=auto, saved configs read back, one writer."""

import json

import pytest

from pgbench.cli import main
from pgbench.config.verbs import resolve
from pgbench.train.rundir import (
    LOCK,
    RunDirBusyError,
    check_run_dir_free,
    run_dir_busy,
    run_dir_lock,
    saved_run_values,
)
from pgbench.train.trainer import train


def test_resume_auto_continues_the_unfinished_run_with_the_same_config(
    run_overrides, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    overrides = {k: v for k, v in run_overrides.items() if k != "output_dir"}
    overrides |= {"trainer.steps": "4", "eval.every": "0"}

    def crash_at_step_3(step: int, metrics: dict[str, float]) -> None:
        if step == 3:
            raise KeyboardInterrupt

    try:
        train(resolve(overrides | {"output_dir": "runs/first"}), on_step_end=crash_at_step_3)
    except KeyboardInterrupt:
        pass
    args = [f"{k}={v}" for k, v in overrides.items()]
    assert main(["run", *args, "trainer.lr=1e-3", "resume=auto"]) == 0  # another config
    assert "starting a new one" in capsys.readouterr().out
    assert not (tmp_path / "runs/first/summary.json").exists()
    assert main(["run", *args, "resume=auto"]) == 0
    assert "continuing runs/first" in capsys.readouterr().out
    summary = json.loads((tmp_path / "runs/first/summary.json").read_text())
    assert summary["steps"] == 4


def test_a_config_saved_before_the_knobs_moved_resumes_with_the_same_meaning():
    old_ppo = {"estimator": "ppo", "estimator.epochs": 3, "estimator.minibatches": 2}
    old_ppo |= {"estimator.clip": 0.3, "loss.clip_low": 0.0, "loss.clip_high": 0.28}
    config = resolve(saved_run_values(old_ppo))
    assert (config.trainer.epochs, config.trainer.minibatches) == (3, 2)
    assert (config.loss.clip_low, config.loss.clip_high) == (0.3, 0.28)  # 0 was "the estimator's"
    old_reinforce = {"estimator": "reinforce", "loss.clip_low": 0.0}  # no clip: unclipped
    config = resolve(saved_run_values(old_reinforce))
    assert (config.loss.clip_low, config.loss.clip_high) == (0.0, 0.0)
    assert config.trainer.epochs == config.trainer.minibatches == 1


def test_a_saved_config_drops_only_the_keys_of_other_verbs():
    # config.json files written when one Config held every verb's keys
    old = resolve({}).to_flat() | {"estimators": "rloo", "seeds": 3, "sweep.n_trials": 20}
    assert saved_run_values(old) == resolve({}).to_flat()
    assert "trainer.lrr" in saved_run_values(old | {"trainer.lrr": 1})


def test_a_run_directory_has_one_writer_until_its_process_ends(tmp_path, other_process_lock):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with other_process_lock(run_dir / LOCK):
        assert run_dir_busy(run_dir)
        with pytest.raises(RunDirBusyError, match=f"^output_dir={run_dir} is being trained by"):
            with run_dir_lock(run_dir):
                pass
    assert not run_dir_busy(run_dir)  # released with its process
    with run_dir_lock(run_dir), run_dir_lock(run_dir):  # re-entrant within one process
        assert run_dir_busy(run_dir)
    # the lock file alone does not make the directory "taken" for a new run
    assert [p.name for p in run_dir.iterdir()] == [LOCK]
    check_run_dir_free(resolve({"output_dir": str(run_dir)}))


def test_a_lock_on_a_new_folder_leaves_nothing_when_the_run_wrote_nothing(tmp_path):
    failed, written = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    with pytest.raises(RuntimeError), run_dir_lock(failed):
        raise RuntimeError("bad data, found before any file is written")
    assert not (tmp_path / "runs").exists()  # the folders it made are gone again
    with run_dir_lock(written):
        (written / "run.json").write_text("{}")
    assert sorted(p.name for p in written.iterdir()) == [LOCK, "run.json"]
