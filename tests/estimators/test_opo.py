import pytest
import torch

from pgbench import estimators
from pgbench.estimators import Batch


def test_opo_length_weighted_baseline_hand_computed():
    # group 0: rewards [1, 0], lengths [1, 3] -> b = (1*1 + 3*0) / 4 = 0.25 -> [0.75, -0.25]
    # group 1: rewards [0.5, 1], lengths [3, 1] -> b = (1.5 + 1) / 4 = 0.625 -> [-0.125, 0.375]
    rewards = torch.tensor([[1.0, 0.0], [0.5, 1.0]])
    lengths = torch.tensor([[1, 3], [3, 1]])
    expected = torch.tensor([[0.75, -0.25], [-0.125, 0.375]])
    torch.testing.assert_close(estimators.get("opo").advantages(rewards, {}, lengths), expected)


def test_opo_counts_policy_tokens_of_kl_shaped_rewards_and_broadcasts_them():
    # K=3. Row 0: policy, tool result, policy -> 2 tokens; row 1: 1 token; row 2: 3 tokens.
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    penalty = torch.tensor([[0.1, 5.0, 0.1], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    batch = Batch.shaped(torch.tensor([[1.2, 0.0, 0.5]]), mask, penalty)
    # shaped rewards [1.2 - 0.2, 0, 0.5] = [1, 0, 0.5]; lengths [2, 1, 3]
    # b = (2*1 + 1*0 + 3*0.5) / 6 = 3.5 / 6 = 7/12 -> A = [5/12, -7/12, -1/12]
    a, b, c = 5 / 12, -7 / 12, -1 / 12
    expected = torch.tensor([[a, 0.0, a], [b, 0.0, 0.0], [c, c, c]])
    result = estimators.get("opo").token_advantages(batch, {})
    assert result.returns is None
    torch.testing.assert_close(result.advantages, expected)


def test_opo_length_weighted_advantages_sum_to_zero_and_equal_lengths_are_dr_grpo():
    generator = torch.Generator().manual_seed(0)
    rewards = torch.rand(5, 4, generator=generator)
    lengths = torch.randint(1, 20, (5, 4), generator=generator)
    advantages = estimators.get("opo").advantages(rewards, {}, lengths)
    weighted = (advantages * lengths).sum(dim=1)  # sum_i |o_i| A_i = 0 in each group
    torch.testing.assert_close(weighted, torch.zeros(5), atol=1e-5, rtol=0)
    same = estimators.get("opo").advantages(rewards, {}, torch.full((5, 4), 7))
    torch.testing.assert_close(same, estimators.get("grpo", scale="none").advantages(rewards))


def test_opo_all_equal_rewards_and_empty_groups_give_zero_advantages():
    opo = estimators.get("opo")
    lengths = torch.tensor([[1, 2, 3], [4, 4, 1]])
    torch.testing.assert_close(
        opo.advantages(torch.full((2, 3), 0.7), {}, lengths), torch.zeros(2, 3)
    )
    # a group whose completions have no policy tokens: b = 0, masked advantages 0, no NaN
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    batch = Batch.shaped(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), mask, torch.zeros(4, 2))
    advantages = opo.token_advantages(batch, {}).advantages
    # group 0: lengths [2, 1] -> b = 2/3 -> [1/3, -2/3]
    expected = torch.tensor([[1 / 3, 1 / 3], [-2 / 3, 0.0], [0.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(advantages, expected)


def test_opo_needs_lengths_and_two_samples_per_prompt():
    with pytest.raises(ValueError, match="lengths"):
        estimators.get("opo").advantages(torch.zeros(1, 2))
    assert estimators.REGISTRY.get_class("opo").min_samples_per_prompt == 2
