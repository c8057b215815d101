import torch

from pgbench import estimators


def test_rloo_hand_computed():
    # K=3, rewards [1, 2, 6]: baselines are means of the other two: [4, 3.5, 1.5]
    rewards = torch.tensor([[1.0, 2.0, 6.0]])
    expected = torch.tensor([[1 - 4.0, 2 - 3.5, 6 - 1.5]])
    torch.testing.assert_close(estimators.get("rloo").advantages(rewards), expected)


def test_rloo_k2_is_half_difference_times_two():
    # K=2: A_1 = r_1 - r_2, A_2 = r_2 - r_1
    rewards = torch.tensor([[0.2, 0.7], [1.0, 1.0]])
    expected = torch.tensor([[-0.5, 0.5], [0.0, 0.0]])
    torch.testing.assert_close(estimators.get("rloo").advantages(rewards), expected)


def test_rloo_rows_sum_to_zero_and_ignore_constant_shift():
    rewards = torch.rand(5, 4, generator=torch.Generator().manual_seed(0))
    rloo = estimators.get("rloo")
    advantages = rloo.advantages(rewards)
    torch.testing.assert_close(advantages.sum(dim=1), torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(rloo.advantages(rewards + 3.0), advantages, atol=1e-6, rtol=0)


def test_rloo_all_equal_rewards_give_zero_advantage():
    assert torch.equal(
        estimators.get("rloo").advantages(torch.full((2, 4), 0.3)), torch.zeros(2, 4)
    )


def test_sequence_level_advantages_fold_kl_into_the_reward_and_broadcast_over_tokens():
    from pgbench.estimators import Batch

    # K=2; per-token KL penalties (already masked) sum to 0.3 and 0.1
    batch = Batch.shaped(
        rewards=torch.tensor([[1.0, 0.6]]),
        mask=torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
        kl_penalty=torch.tensor([[0.1, 0.2, 0.0], [0.1, 0.0, 0.0]]),
    )
    # shaped rewards [0.7, 0.5] -> RLOO [0.2, -0.2], on valid tokens only
    result = estimators.get("rloo").token_advantages(batch, {})
    expected = torch.tensor([[0.2, 0.2, 0.0], [-0.2, 0.0, 0.0]])
    torch.testing.assert_close(result.advantages, expected)
