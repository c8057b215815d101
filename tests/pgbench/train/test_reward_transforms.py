"""The reward.* probes: each transform on hand-computed rewards, their order and seeding, the
greedy baseline, and evaluation that never sees them (issue 41)."""

import logging
import shutil
from dataclasses import replace

import pytest
import torch
from mlflow import MlflowClient

from pgbench.config.sections import LoraConfig, RewardConfig
from pgbench.config.verbs import check, resolve
from pgbench.errors import ConfigError
from pgbench.models.policy import load_policy
from pgbench.tasks import Example
from pgbench.tasks.arith import Arith, parse_answer
from pgbench.train.reward_transforms import transform, transform_rollout
from pgbench.train.rollout import collect_rollout
from pgbench.train.trainer import train
from tests.tasks.test_arith import (
    MICRO_ARITH_TASK,
    micro_arith_policy,  # noqa: F401 (a fixture)
    two_steps,
)

CPU = torch.device("cpu")
PLAIN = RewardConfig()


def stream(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_scale_and_offset_are_exact():
    rewards = torch.tensor([[0.0, 1.0], [1.0, 0.5]])  # [P=2, K=2]
    # 2 * r - 1: 0 -> -1, 1 -> 1, 0.5 -> 0
    out = transform(rewards, replace(PLAIN, scale=2.0, offset=-1.0), stream())
    assert torch.equal(out, torch.tensor([[-1.0, 1.0], [1.0, 0.0]]))


def test_the_default_knobs_leave_the_tensors_as_they_are():
    rewards, baseline = torch.tensor([[0.25, 2.0]]), torch.tensor([0.5])
    out, out_baseline = transform_rollout(rewards, baseline, PLAIN, seed=3)
    assert out is rewards and out_baseline is baseline


def test_flip_with_p_0_and_p_1_is_exact_and_comes_before_scale_and_offset():
    rewards = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    assert torch.equal(transform(rewards, replace(PLAIN, flip=0.0), stream()), rewards)
    assert torch.equal(transform(rewards, replace(PLAIN, flip=1.0), stream()), 1 - rewards)
    # flipped first, then 10 * r + 5: 0 -> 1 -> 15 and 1 -> 0 -> 5 (the other order: 1 - 15)
    both = replace(PLAIN, flip=1.0, scale=10.0, offset=5.0)
    expected = torch.tensor([[15.0, 5.0, 5.0], [15.0, 15.0, 5.0]])
    assert torch.equal(transform(rewards, both, stream()), expected)


def test_flip_with_p_half_flips_half_of_a_large_batch():
    rewards = torch.zeros(100_000)
    out = transform(rewards, replace(PLAIN, flip=0.5), stream(7))
    assert set(out.unique().tolist()) == {0.0, 1.0}
    # binomial share: std sqrt(0.25 / 1e5) = 0.0016, so 0.01 is six standard deviations
    assert out.mean().item() == pytest.approx(0.5, abs=0.01)
    small = transform(rewards, replace(PLAIN, flip=0.2), stream(7)).mean().item()
    assert small == pytest.approx(0.2, abs=0.01)


def test_flip_refuses_graded_rewards_naming_the_reward_and_passes_nan():
    with pytest.raises(ConfigError, match=r"reward\.flip=0\.1 .* task\.reward=chrf gave 0\.5"):
        transform(torch.tensor([0.0, 0.5]), replace(PLAIN, flip=0.1), stream(), "task.reward=chrf")
    out = transform(torch.tensor([1.0, float("nan")]), replace(PLAIN, flip=1.0), stream())
    assert out[0] == 0 and out[1].isnan()  # a NaN step is the trainer's to skip
    graded = torch.tensor([0.5, 0.25])  # graded rewards take noise (and no flip)
    assert transform(graded, replace(PLAIN, noise_std=0.1), stream()).shape == (2,)


def test_noise_has_the_asked_mean_and_std():
    rewards = torch.full((200_000,), 0.3)
    noisy = transform(rewards, replace(PLAIN, noise_std=0.5), stream(1))
    # std error of the mean 0.5 / sqrt(2e5) = 0.0011; of the std 0.5 / sqrt(4e5) = 0.0008
    assert (noisy - rewards).mean().item() == pytest.approx(0.0, abs=0.006)
    assert (noisy - rewards).std().item() == pytest.approx(0.5, abs=0.005)


def test_permute_shuffles_the_whole_batch_across_prompts():
    rewards = torch.arange(24.0).view(4, 6)  # [P=4, K=6], all distinct
    out = transform(rewards, replace(PLAIN, permute=True), stream(2))
    assert out.shape == (4, 6)
    assert torch.equal(out.flatten().sort().values, rewards.flatten())  # the same multiset
    assert not torch.equal(out, rewards)
    # across prompts, not only within each prompt's group: some row holds another's rewards
    assert any(
        set(row.tolist()) != set(orig.tolist()) for row, orig in zip(out, rewards, strict=True)
    )


def test_the_same_seed_draws_the_same_and_another_seed_does_not():
    cfg = replace(PLAIN, flip=0.3, noise_std=1.0, permute=True)
    rewards = (torch.arange(32) % 3 == 0).float().view(8, 4)  # [P=8, K=4] of 0/1
    baseline = (torch.arange(8) % 2).float()  # [P]
    first = transform_rollout(rewards, baseline, cfg, seed=11)
    again = transform_rollout(rewards, baseline, cfg, seed=11)
    other = transform_rollout(rewards, baseline, cfg, seed=12)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    # the sampled rewards draw first: the same with or without a greedy baseline
    assert torch.equal(transform_rollout(rewards, None, cfg, seed=11)[0], first[0])


def test_the_greedy_baseline_gets_the_same_transforms():
    cfg = replace(PLAIN, flip=1.0, scale=2.0, offset=1.0)
    rewards, baseline = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([1.0, 0.0])  # [P]
    out, out_baseline = transform_rollout(rewards, baseline, cfg, seed=0)
    # flipped then 2 * r + 1: 1 -> 0 -> 1 and 0 -> 1 -> 3
    assert torch.equal(out, torch.tensor([[1.0, 3.0], [1.0, 1.0]]))
    assert torch.equal(out_baseline, torch.tensor([1.0, 3.0]))
    # permuted: the baseline is shuffled among the prompts too
    baseline = torch.arange(8.0)  # [P=8]
    permuted = transform_rollout(torch.zeros(8, 2), baseline, replace(PLAIN, permute=True), 0)[1]
    assert torch.equal(permuted.sort().values, baseline) and not torch.equal(permuted, baseline)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("reward.flip", "1.5", "reward.flip must be <= 1.0 (got 1.5)"),
        ("reward.flip", "-0.1", "reward.flip must be >= 0.0 (got -0.1)"),
        ("reward.noise_std", "-1", "reward.noise_std must be >= 0.0 (got -1.0)"),
        ("reward.permute", "maybe", "reward.permute='maybe' is not a boolean; use true or false"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key_and_the_valid_range(key, value, message):
    for checker in (check, resolve):  # before torch, and when resolving
        with pytest.raises(ConfigError) as err:
            checker({key: value})
        assert str(err.value) == message


def test_collect_rollout_transforms_rewards_and_baseline_and_keeps_the_raw_mean(run_overrides):
    overrides = run_overrides | {"estimator": "remax"}
    policy = load_policy(overrides["model"], LoraConfig(), CPU)
    plain = resolve(overrides)
    shifted = resolve(overrides | {"reward.scale": "2", "reward.offset": "-1"})
    examples = plain.task.splits().train[:4]
    torch.manual_seed(5)
    raw = collect_rollout(plain, policy, examples, CPU, seed=5)
    torch.manual_seed(5)
    out = collect_rollout(shifted, policy, examples, CPU, seed=5)
    assert raw.rewards.std() > 0  # chrF: graded, and not all equal
    torch.testing.assert_close(out.rewards, 2 * raw.rewards - 1)
    torch.testing.assert_close(out.baseline, 2 * raw.baseline - 1)
    raw_mean = raw.rewards.mean().item()
    assert raw.reward_metrics["train/reward_raw_mean"] == pytest.approx(raw_mean)
    assert out.reward_metrics["train/reward_raw_mean"] == pytest.approx(raw_mean)
    flipped = resolve(overrides | {"reward.flip": "0.2"})  # chrF is graded: refused
    with pytest.raises(ConfigError, match=r"flip=0\.2 flips 0/1 rewards, but task\.reward=chrf"):
        collect_rollout(flipped, policy, examples, CPU, seed=5)


def test_a_rollout_of_the_same_step_draws_the_same_noise(run_overrides):
    """What a resumed run relies on: the pipeline passes each step's seed (step_seed)."""
    config = resolve(run_overrides | {"reward.noise_std": "0.5", "reward.permute": "true"})
    policy = load_policy(run_overrides["model"], LoraConfig(), CPU)
    examples = config.task.splits().train[:4]
    draws = []
    for seed in (5, 5, 6):
        torch.manual_seed(5)  # the same completions each time: only the transforms' seed moves
        draws.append(collect_rollout(config, policy, examples, CPU, seed=seed).rewards)
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def digit_count_reward(task: Arith, texts: list[str], examples: list[Example]) -> list[float]:
    """1 for an answer with as many digits as the reference, else 0 (an Arith.reward)."""
    answers = [str(parse_answer(text)) for text in texts]
    return [float(len(a) == len(e.references[0])) for a, e in zip(answers, examples, strict=True)]


SHIFTED = {"reward.scale": "10", "reward.offset": "5"}


def history(uri: str, run_id: str, metric: str) -> list[float]:
    """The values of `metric`, by step."""
    logged = MlflowClient(uri).get_metric_history(run_id, metric)
    return [m.value for m in sorted(logged, key=lambda m: m.step)]


def test_training_sees_the_transform_and_evaluation_the_true_accuracy(
    micro_arith_policy,  # noqa: F811 (the fixture)
    mlflow_store,
    tmp_path,
    monkeypatch,
):
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # the micro policy never gets a sum right (its greedy answer is 111111): reward an answer
    # of the right length instead, in training and evaluation alike
    monkeypatch.setattr(Arith, "reward", digit_count_reward)
    shutil.copyfile(mlflow_store, tmp_path / "mlflow.db")
    logged = {}
    for name, knobs in {"plain": {}, "shifted": SHIFTED}.items():
        overrides = two_steps("arith", micro_arith_policy, MICRO_ARITH_TASK, tmp_path / name)
        overrides |= {"estimator": "rloo", "eval.every": "1", "eval.test": "false"}
        overrides |= {"cache_dir": str(tmp_path / f"cache-{name}")}  # no shared start eval
        summary = train(resolve(overrides | knobs))
        uri, run_id = overrides["tracking.uri"], summary["run_id"]
        metrics = ("eval/accuracy", "train/reward_mean", "train/reward_raw_mean")
        logged[name] = {metric: history(uri, run_id, metric) for metric in metrics}
    plain, shifted = logged["plain"], logged["shifted"]
    # training logs the transformed reward 10 * r + 5 beside the task's own mean
    assert len(shifted["train/reward_mean"]) == 2
    for reward, raw in zip(
        shifted["train/reward_mean"], shifted["train/reward_raw_mean"], strict=True
    ):
        assert 0 <= raw <= 1 and reward == pytest.approx(10 * raw + 5, abs=1e-5)
    assert max(shifted["train/reward_raw_mean"]) > 0  # the scale was put to work
    assert plain["train/reward_mean"] == pytest.approx(plain["train/reward_raw_mean"])
    # evaluation scores the true accuracy (transformed, it would be 100 * (10 r + 5) >= 500):
    # the same starting policy, the same number, and every later one a percentage
    assert len(shifted["eval/accuracy"]) == 3  # steps 0, 1, 2
    assert 0 < plain["eval/accuracy"][0] < 100  # 9 of the 16 valid sums have 6 digits
    assert shifted["eval/accuracy"][0] == plain["eval/accuracy"][0]
    assert all(0 <= accuracy <= 100 for accuracy in shifted["eval/accuracy"])
