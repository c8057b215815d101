import pytest
import torch

from pgbench import estimators


def test_grpo_group_scale_hand_computed():
    # rewards [1, 2, 6]: mean 3, unbiased std sqrt(((-2)^2 + (-1)^2 + 3^2) / 2) = sqrt(7)
    grpo = estimators.get("grpo", eps=1e-4)
    expected = torch.tensor([[-2.0, -1.0, 3.0]]) / (7**0.5 + 1e-4)
    torch.testing.assert_close(grpo.advantages(torch.tensor([[1.0, 2.0, 6.0]])), expected)


def test_grpo_batch_scale_uses_std_of_all_rewards():
    rewards = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    # batch std of [0, 2, 1, 1] = sqrt((1 + 1 + 0 + 0) / 3)
    expected = torch.tensor([[-1.0, 1.0], [0.0, 0.0]]) / ((2 / 3) ** 0.5 + 1e-4)
    torch.testing.assert_close(estimators.get("grpo", scale="batch").advantages(rewards), expected)


def test_grpo_all_equal_rewards_and_k2():
    grpo = estimators.get("grpo")
    assert torch.equal(grpo.advantages(torch.full((2, 3), 0.7)), torch.zeros(2, 3))
    # K=2, rewards [0, 1]: centred [-0.5, 0.5], std = sqrt(0.5)
    expected = torch.tensor([[-0.5, 0.5]]) / (0.5**0.5 + 1e-4)
    torch.testing.assert_close(grpo.advantages(torch.tensor([[0.0, 1.0]])), expected)


def test_grpo_none_is_k_minus_1_over_k_of_rloo_and_rows_sum_to_zero():
    rewards = torch.rand(6, 4, generator=torch.Generator().manual_seed(3))
    plain = estimators.get("grpo", scale="none").advantages(rewards)
    rloo = estimators.get("rloo").advantages(rewards)
    # RLOO: A = K/(K-1) (r - mean), so Dr. GRPO's A = (K-1)/K * RLOO's
    torch.testing.assert_close(plain, rloo * 3 / 4)
    torch.testing.assert_close(plain.sum(1), torch.zeros(6), atol=1e-6, rtol=0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_invariant_to_constant_shift(scale):
    rewards = torch.rand(3, 5, generator=torch.Generator().manual_seed(1))
    grpo = estimators.get("grpo", scale=scale)
    torch.testing.assert_close(
        grpo.advantages(rewards + 10), grpo.advantages(rewards), atol=1e-5, rtol=1e-5
    )
