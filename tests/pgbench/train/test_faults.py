"""Numerical faults: non-finite rewards, losses or gradients skip the step, then stop the run."""

import json
import math
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from pgbench.config.verbs import resolve
from pgbench.errors import TrainingError
from pgbench.train import optimise as optimise_module
from pgbench.train.trainer import train


def _history(overrides: dict[str, str], key: str) -> list[float]:
    run_id = json.loads(open(f"{overrides['output_dir']}/run.json").read())["run_id"]
    client = MlflowClient(overrides["tracking.uri"])
    return [m.value for m in client.get_metric_history(run_id, key)]


def _keep_weights(overrides: dict[str, str], kept: dict[int, dict]):
    """A step-end callback that keeps each step's checkpointed weights (only 2 stay on disk)."""

    def keep(step: int, metrics: dict[str, float]) -> None:
        path = f"{overrides['output_dir']}/checkpoints/step-{step:06d}/weights.safetensors"
        kept[step] = load_file(path)

    return keep


def test_a_nan_reward_skips_that_step_only(run_overrides, monkeypatch):
    overrides = run_overrides | {"checkpoint.every": "1", "eval.every": "0", "trainer.lr": "1e-2"}
    config = resolve(overrides)
    reward, calls = config.task.reward, []

    def nan_on_second_call(completions, examples):
        calls.append(1)
        scores = reward(completions, examples)
        return [math.nan] + scores[1:] if len(calls) == 2 else scores

    monkeypatch.setattr(config.task, "reward", nan_on_second_call)
    kept: dict[int, dict] = {}
    summary = train(config, on_step_end=_keep_weights(overrides, kept))
    assert summary["steps"] == 4
    assert _history(overrides, "train/skipped_steps") == [0, 1, 1, 1]
    # step 2 changed nothing; steps 1 and 3 did
    before, skipped, after = (kept[s] for s in (1, 2, 3))
    assert all(torch.equal(before[k], skipped[k]) for k in before)
    assert any(not torch.equal(skipped[k], after[k]) for k in before)
    assert len(_history(overrides, "train/reward_mean")) == 3  # not logged for the skipped step


def test_a_nan_loss_skips_without_touching_the_weights(run_overrides, monkeypatch):
    overrides = run_overrides | {"checkpoint.every": "1", "eval.every": "0", "trainer.steps": "2"}
    real = optimise_module.accumulate_gradients
    calls = []

    def nan_loss_first(*args, **kwargs):
        stats = real(*args, **kwargs)
        calls.append(1)
        return stats | {"loss": math.inf} if len(calls) == 1 else stats

    monkeypatch.setattr(optimise_module, "accumulate_gradients", nan_loss_first)
    kept: dict[int, dict] = {}
    train(resolve(overrides), on_step_end=_keep_weights(overrides, kept))
    assert _history(overrides, "train/skipped_steps") == [1, 1]
    initial = load_file(f"{run_overrides['model']}/model.safetensors")
    step1 = kept[1]
    assert all(torch.equal(initial[k.removeprefix("policy.")], v) for k, v in step1.items())


def test_consecutive_faults_stop_the_run_naming_step_and_cause(run_overrides, monkeypatch):
    overrides = run_overrides | {"trainer.max_skipped": "2", "checkpoint.every": "1"}
    config = resolve(overrides)
    monkeypatch.setattr(
        config.task, "reward", lambda completions, examples: [math.nan] * len(completions)
    )
    with pytest.raises(TrainingError, match=r"step 2: non-finite reward, 2 steps in a row") as err:
        train(config)
    kept = str(err.value).rsplit("Last good checkpoint: ", 1)[1]
    assert kept.endswith("step-000001") and (Path(kept) / "weights.safetensors").is_file()
    run_id = json.loads(open(f"{overrides['output_dir']}/run.json").read())["run_id"]
    assert MlflowClient(overrides["tracking.uri"]).get_run(run_id).info.status == "FAILED"
    assert _history(overrides, "train/skipped_steps") == [1]


def test_a_nan_greedy_baseline_skips_that_step(run_overrides, monkeypatch, capsys):
    # remax scores 4 sampled x 3 completions, then 4 greedy ones; the second step's greedy
    # rewards are NaN: that step is skipped as a reward fault, not turned into a NaN loss
    overrides = run_overrides | {"estimator": "remax", "eval.every": "0", "checkpoint.every": "0"}
    config = resolve(overrides)
    reward, greedy_calls = config.task.reward, []

    def nan_greedy_on_second_step(completions, examples):
        scores = reward(completions, examples)
        if len(completions) == 4:  # the greedy batch: one per prompt
            greedy_calls.append(1)
            return [math.nan] * 4 if len(greedy_calls) == 2 else scores
        return scores

    monkeypatch.setattr(config.task, "reward", nan_greedy_on_second_step)
    summary = train(config)
    assert summary["steps"] == 4 and len(greedy_calls) == 4
    assert _history(overrides, "train/skipped_steps") == [0, 1, 1, 1]
    assert "step 2 skipped: non-finite reward" in capsys.readouterr().err
