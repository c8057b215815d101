import pytest
import torch

from pgbench import estimators
from pgbench.estimators import Batch


def test_remax_hand_computed():
    # P=2, K=3; greedy rewards 0.4 and 0.9 are each prompt's baseline
    rewards = torch.tensor([[0.5, 1.0, 0.2], [0.0, 0.3, 0.9]])
    baseline = torch.tensor([0.4, 0.9])
    expected = torch.tensor([[0.1, 0.6, -0.2], [-0.9, -0.6, 0.0]])
    result = estimators.get("remax").advantages(rewards, baseline=baseline)
    torch.testing.assert_close(result, expected)


def test_remax_one_sample_per_prompt_is_the_papers_setting():
    # K=1: A = r - r_greedy, positive when the sample beat the greedy completion
    rewards = torch.tensor([[0.7], [0.2]])
    result = estimators.get("remax").advantages(rewards, baseline=torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(result, torch.tensor([[0.2], [-0.3]]))
    assert estimators.REGISTRY.get_class("remax").min_samples_per_prompt == 1


def test_kl_is_folded_into_the_samples_reward_not_the_greedy_baseline():
    # K=2; per-token KL penalties (already masked) sum to 0.3 and 0.1
    batch = Batch.shaped(
        rewards=torch.tensor([[1.0, 0.6]]),
        mask=torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
        kl_penalty=torch.tensor([[0.1, 0.2, 0.0], [0.1, 0.0, 0.0]]),
        baseline=torch.tensor([0.8]),
    )
    # shaped rewards [1 - 0.3, 0.6 - 0.1] = [0.7, 0.5]; minus the greedy 0.8: [-0.1, -0.3],
    # broadcast over each sample's valid tokens
    result = estimators.get("remax").token_advantages(batch, {})
    expected = torch.tensor([[-0.1, -0.1, 0.0], [-0.3, 0.0, 0.0]])
    torch.testing.assert_close(result.advantages, expected)
    assert result.returns is None


def test_tool_result_tokens_get_no_advantage():
    # row 0: policy, policy, tool result, policy; row 1: one policy token then padding
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    batch = Batch.shaped(torch.tensor([[1.0, 0.0]]), mask, torch.zeros(2, 4), None, torch.ones(1))
    # A = [1 - 1, 0 - 1] = [0, -1]
    result = estimators.get("remax").token_advantages(batch, {}).advantages
    torch.testing.assert_close(result, torch.tensor([[0.0, 0.0, 0.0, 0.0], [-1.0, 0, 0, 0]]))


def test_a_constant_added_to_rewards_and_baseline_cancels():
    generator = torch.Generator().manual_seed(0)
    rewards, baseline = torch.rand(4, 3, generator=generator), torch.rand(4, generator=generator)
    remax = estimators.get("remax")
    base = remax.advantages(rewards, baseline=baseline)
    torch.testing.assert_close(remax.advantages(rewards + 2.0, baseline=baseline + 2.0), base)


def test_a_missing_or_misshaped_baseline_is_a_clear_error():
    remax = estimators.get("remax")
    batch = Batch.shaped(torch.tensor([[1.0, 0.0]]), torch.ones(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="remax needs the greedy baseline"):
        remax.token_advantages(batch, {})
    with pytest.raises(ValueError, match=r"expected \(2,\): one greedy reward per prompt"):
        remax.advantages(torch.zeros(2, 3), baseline=torch.zeros(3))


def test_only_remax_asks_for_the_greedy_rollout():
    needs = {name: estimators.REGISTRY.get_class(name).needs_greedy for name in ["remax", "rloo"]}
    assert needs == {"remax": True, "rloo": False}
