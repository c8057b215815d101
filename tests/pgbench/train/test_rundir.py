"""Run directories (pgbench.train.rundir): resume=auto finds the unfinished run of a config."""

import json

from pgbench.cli import main
from pgbench.config.verbs import resolve
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
