import json

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from pgbench import estimators
from pgbench.config.verbs import resolve
from pgbench.train.trainer import train

TRAIN_METRICS = """reward_mean reward_std advantage_mean advantage_std loss kl entropy
completion_len grad_norm tokens step_time_s rollout_tokens_per_s wall_clock_s
peak_memory_mb""".split()
PHASES = ("generate", "reward", "old_logprobs", "reference", "advantages", "update", "optimizer")
TIMINGS = {
    "train/step_time_s",
    "train/rollout_tokens_per_s",
    "train/wall_clock_s",
    "train/peak_memory_mb",
}


def test_run_logs_params_metrics_artifacts_and_summary(run_overrides):
    summary = train(resolve(run_overrides))
    run_dir = run_overrides["output_dir"]
    assert json.loads(open(f"{run_dir}/summary.json").read()) == summary
    assert summary["steps"] == 4
    assert set(summary["eval_before"]) == set(summary["eval_after"]) == {"chrf", "bleu", "embed"}
    assert summary["model_path"] == run_overrides["model"]

    client = MlflowClient(run_overrides["tracking.uri"])
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["trainer.steps"] == "4" and params["estimator"] == "rloo"
    assert params["kl.coef"] == "0.05" and params["pgbench_version"]
    assert params["data.test_size"] == "40"
    for name in TRAIN_METRICS:
        history = client.get_metric_history(summary["run_id"], f"train/{name}")
        assert [m.step for m in history] == [1, 2, 3, 4], name
    assert [m.step for m in client.get_metric_history(summary["run_id"], "eval/chrf")] == [0, 2, 4]
    test_chrf = client.get_metric_history(summary["run_id"], "test/chrf")
    assert [m.value for m in test_chrf] == pytest.approx(
        [summary["eval_before"]["chrf"], summary["eval_after"]["chrf"]]
    )
    tokens = client.get_metric_history(summary["run_id"], "train/tokens")
    assert tokens[-1].value == summary["train"]["train/tokens"] > tokens[0].value > 0
    artifacts = {a.path for a in client.list_artifacts(summary["run_id"])}
    assert {"config.json", "summary.json", "samples.csv", "final"} <= artifacts


@pytest.mark.parametrize(
    "extra", [{}, {"rollout.staleness": "2", "loss.rollout_correction": "tis"}]
)
def test_crash_and_resume_ends_like_an_uninterrupted_run(run_overrides, tmp_path, extra):
    # with staleness the rollouts sampled ahead are part of the checkpoint
    overrides = (
        run_overrides
        | extra
        | {
            "trainer.steps": "5",
            "estimator": "reinforce",
            "estimator.baseline": "ema",
            "trainer.lr": "3e-3",
        }
    )
    straight = train(resolve(overrides | {"output_dir": str(tmp_path / "straight")}))

    class Crash(Exception):
        pass

    def crash_at_step_3(step, metrics):
        if step == 3:
            raise Crash

    crashed_dir = tmp_path / "crashed"
    with pytest.raises(Crash):
        train(resolve(overrides | {"output_dir": str(crashed_dir)}), on_step_end=crash_at_step_3)
    client = MlflowClient(overrides["tracking.uri"])
    run_id = json.loads((crashed_dir / "run.json").read_text())["run_id"]
    assert client.get_run(run_id).info.status == "FAILED"

    saved = json.loads((crashed_dir / "config.json").read_text())
    resumed = train(resolve(saved | {"resume": str(crashed_dir)}))
    assert resumed["run_id"] == run_id and client.get_run(run_id).info.status == "FINISHED"
    assert resumed["eval_after"] == straight["eval_after"]
    assert resumed["eval_before"] == straight["eval_before"]
    for key, value in straight["train"].items():
        if key not in TIMINGS and not key.startswith("timing/"):
            assert resumed["train"][key] == value, key
    weights = [
        load_file(f"{d}/checkpoints/step-000005/weights.safetensors")
        for d in (tmp_path / "straight", crashed_dir)
    ]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    assert (
        weights[0][name]
        != load_file(f"{tmp_path / 'straight'}/checkpoints/step-000004/weights.safetensors")[name]
    ).any()


@pytest.mark.parametrize(
    "extra",
    [
        {"lora.r": "4", "kl.estimator": "k3", "kl.placement": "loss"},
        {"lora.r": "4", "kl.estimator": "k3_plus", "kl.placement": "loss"},
        {"loss.aggregation": "seq_mean_token_sum_norm", "kl.coef": "0"},
        {"loss.entropy_coef": "0.01", "kl.coef": "0"},
        {"task.reward": "bertscore", "kl.coef": "0"},
        {"loss.policy": "clip_cov", "estimator": "ppo", "kl.coef": "0", "loss.cov_ratio": "0.1"},
        {"loss.aggregation": "prompt_mean", "kl.coef": "0", "estimator": "ppo"},
    ],
)
def test_shared_knob_variants_train(run_overrides, extra):
    summary = train(
        resolve(
            run_overrides | extra | {"trainer.lr": "1e-2", "trainer.steps": "3", "eval.every": "0"}
        )
    )
    final = run_overrides["output_dir"] + "/final"
    assert summary["steps"] == 3
    if "task.reward" in extra:  # a rewarded model metric is reported at every evaluation
        assert "bertscore" in summary["eval_after"] and "bertscore" in summary["eval_valid"]
    if "lora.r" in extra:
        # the adapter is saved; the reference is the same weights with it disabled, so KL moves
        assert open(final + "/adapter_config.json").read()
        assert summary["train"]["train/kl"] != 0
    else:
        assert summary["train"]["train/kl"] == 0


def test_every_estimator_trains_and_logs_the_same_metrics(run_overrides, tmp_path):
    names = None
    for estimator in estimators.REGISTRY.names():
        overrides = run_overrides | {
            "estimator": estimator,
            "trainer.steps": "2",
            "eval.every": "0",
            "output_dir": str(tmp_path / estimator),
        }
        config = resolve(overrides)
        summary = train(config)
        assert summary["steps"] == 2
        phases = {k: v for k, v in summary["train"].items() if k.startswith("timing/")}
        assert set(phases) == {f"timing/{p}_s" for p in PHASES}, estimator
        assert all(v >= 0 for v in phases.values())
        assert sum(phases.values()) <= summary["train"]["train/step_time_s"]
        assert phases["timing/generate_s"] > 0 and phases["timing/update_s"] > 0
        assert phases["timing/optimizer_s"] > 0
        assert phases["timing/reference_s"] > 0  # kl.coef = 0.05
        # one pass: the scoring forward is the update's; several: a separate no-grad forward
        several = config.trainer.epochs * config.trainer.minibatches > 1
        assert (phases["timing/old_logprobs_s"] > 0) == several, estimator
        # a value head adds its explained variance (CleanRL's diagnostic)
        logged = set(summary["train"]) - {"train/explained_variance"}
        value_head = "train/explained_variance" in summary["train"]
        assert value_head == config.estimator.uses_value_head, estimator
        names = names or logged
        assert logged == names, estimator
    weights = load_file(f"{tmp_path}/ppo/checkpoints/step-000002/weights.safetensors")
    assert "value_head.weight" in weights and weights["value_head.weight"].abs().sum() > 0
    assert (tmp_path / "ppo" / "final" / "value_head.safetensors").is_file()


def test_several_passes_clip_the_ratio(run_overrides):
    overrides = run_overrides | {
        "estimator": "grpo",
        "trainer.epochs": "3",
        "trainer.minibatches": "2",
        "trainer.lr": "5e-2",
        "trainer.steps": "2",
        "eval.every": "0",
    }
    summary = train(resolve(overrides))
    # the first minibatch of the first pass has ratio 1; later ones moved away and clip
    assert 0 < summary["train"]["train/clip_fraction"] <= 1
