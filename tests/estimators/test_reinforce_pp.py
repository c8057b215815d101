import torch

from pgbench import estimators
from pgbench.estimators import Batch


def test_returns_sum_kl_to_the_end_and_are_whitened_over_valid_tokens():
    # one prompt, K=2; row 0 has 3 tokens, row 1 has 2 (third masked)
    batch = Batch.shaped(
        rewards=torch.tensor([[1.0, 0.0]]),
        mask=torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]),
        kl_penalty=torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0]]),
    )
    # token rewards: row 0 [-0.1, -0.2, 1 - 0.3], row 1 [-0.5, -0.5, (masked)]
    # returns G_t = sum_{s>=t}: row 0 [0.4, 0.5, 0.7], row 1 [-1.0, -0.5]
    returns = torch.tensor([0.4, 0.5, 0.7, -1.0, -0.5])
    whitened = (returns - returns.mean()) / (returns.var() + 1e-8) ** 0.5
    result = estimators.get("reinforce_pp").token_advantages(batch, {})
    assert result.returns is None
    torch.testing.assert_close(result.advantages[batch.mask.bool()], whitened)
    assert result.advantages[1, 2] == 0


def test_without_kl_every_token_of_a_sequence_shares_its_advantage():
    batch = Batch.shaped(torch.tensor([[0.2, 0.8]]), torch.ones(2, 4), torch.zeros(2, 4))
    advantages = estimators.get("reinforce_pp").token_advantages(batch, {}).advantages
    assert (
        torch.allclose(advantages[0], advantages[0, 0]) and advantages[0, 0] < 0 < advantages[1, 0]
    )


def test_invariant_to_a_constant_added_to_all_rewards():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    penalty = torch.rand(4, 3, generator=torch.Generator().manual_seed(0)) * 0.1
    rewards = torch.tensor([[0.3, 0.9], [0.1, 0.5]])
    pp = estimators.get("reinforce_pp")
    base = pp.token_advantages(Batch.shaped(rewards, mask, penalty), {}).advantages
    shifted = pp.token_advantages(Batch.shaped(rewards + 5.0, mask, penalty), {}).advantages
    torch.testing.assert_close(base, shifted, atol=1e-5, rtol=1e-5)


def test_the_reward_lands_on_the_last_policy_token_after_a_tool_result():
    # row 0: policy, policy, result, result, policy, pad; reward 1 on its last policy token
    # (position 4, not mask.sum() - 1 = 2). row 1: three policy tokens, reward 0.
    # Returns over valid tokens: [1, 1, 1] and [0, 0, 0]: mean 0.5, unbiased std
    # sqrt(6 * 0.25 / 5) = sqrt(0.3), so A = +-0.5 / sqrt(0.3) = +-0.9129.
    mask = torch.tensor([[1.0, 1, 0, 0, 1, 0], [1, 1, 1, 0, 0, 0]])
    batch = Batch.shaped(torch.tensor([[1.0, 0.0]]), mask, torch.zeros(2, 6))
    out = estimators.get("reinforce_pp").token_advantages(batch, {}).advantages
    a = 0.5 / 0.3**0.5
    expected = torch.tensor([[a, a, 0, 0, a, 0], [-a, -a, -a, 0, 0, 0]])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_returns_equal_up_to_rounding_give_near_zero_advantages():
    # rewards 0.1 + 3e-8 and 0.1 differ only by float32 rounding; with 1 / (std + 1e-8) they
    # would whiten to about +-0.87; rsqrt(var + eps) keeps them near 0
    batch = Batch.shaped(torch.tensor([[0.1 + 3e-8, 0.1]]), torch.ones(2, 3), torch.zeros(2, 3))
    advantages = estimators.get("reinforce_pp").token_advantages(batch, {}).advantages
    assert advantages.abs().max() < 1e-2
