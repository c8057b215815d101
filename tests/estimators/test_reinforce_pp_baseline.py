import torch

from pgbench import estimators
from pgbench.estimators import Batch


def test_group_mean_of_shaped_rewards_then_whitened_over_valid_tokens():
    # P=2, K=2. Lengths 2, 1 | 2, 1 (the fourth column is padding).
    batch = Batch.shaped(
        rewards=torch.tensor([[1.0, 0.0], [0.5, 0.5]]),
        mask=torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]]),
        kl_penalty=torch.tensor([[0.05, 0.15], [0.2, 9.0], [0.0, 0.0], [0.0, 0.0]]),
    )
    # shaped rewards: [1 - 0.2, 0 - 0.2] = [0.8, -0.2] and [0.5, 0.5]
    # group means 0.3 and 0.5 -> centred [0.5, -0.5] and [0, 0]
    # per valid token: [0.5, 0.5 | -0.5 | 0, 0 | 0]: mean 0.5 / 6 = 1/12
    # deviations 5/12, 5/12, -7/12, -1/12 x3: squares (25 + 25 + 49 + 3) / 144 = 17/24
    # unbiased var (17/24) / 5 = 17/120
    scale = (17 / 120 + 1e-8) ** -0.5
    a, b, c = 5 / 12 * scale, -7 / 12 * scale, -1 / 12 * scale
    expected = torch.tensor([[a, a], [b, 0.0], [c, c], [c, 0.0]])
    result = estimators.get("reinforce_pp_baseline").token_advantages(batch, {})
    assert result.returns is None
    torch.testing.assert_close(result.advantages, expected)


def test_kl_enters_once_per_sequence_so_its_tokens_share_one_advantage():
    # a different KL on every token does not make a return to go: row 0's tokens stay equal
    penalty = torch.tensor([[0.1, 0.0, 0.3], [0.0, 0.0, 0.0]])
    batch = Batch.shaped(torch.tensor([[1.0, 0.0]]), torch.ones(2, 3), penalty)
    advantages = estimators.get("reinforce_pp_baseline").token_advantages(batch, {}).advantages
    assert torch.allclose(advantages[0], advantages[0, 0]) and advantages[0, 0] > 0
    # K=2, one group: centred +-0.3 on 3 tokens each -> mean 0, unbiased var 6 * 0.09 / 5
    expected = 0.3 / (6 * 0.09 / 5) ** 0.5
    torch.testing.assert_close(advantages[0, 0], torch.tensor(expected))


def test_identical_returns_give_zero_not_amplified_rounding_noise():
    # float32 group means of [0.9] * 3 and [0.5] * 3 are off by ~6e-8 and 0: centred rewards
    # differ by rounding only. (x - mean) / (std + 1e-8) would blow that up to ~0.9.
    rewards = torch.tensor([[0.9, 0.9, 0.9], [0.5, 0.5, 0.5]])
    batch = Batch.shaped(rewards, torch.ones(6, 2), torch.zeros(6, 2))
    advantages = estimators.get("reinforce_pp_baseline").token_advantages(batch, {}).advantages
    assert advantages.abs().max() < 1e-3
    centred = (rewards - rewards.mean(dim=1, keepdim=True)).flatten()
    naive = (centred - centred.mean()) / (centred.std() + 1e-8)
    assert naive.abs().max() > 0.5  # the test can tell the two apart on this machine


def test_all_equal_rewards_give_zero_advantages():
    batch = Batch.shaped(torch.full((2, 4), 0.25), torch.ones(8, 3), torch.zeros(8, 3))
    advantages = estimators.get("reinforce_pp_baseline").token_advantages(batch, {}).advantages
    torch.testing.assert_close(advantages, torch.zeros(8, 3))


def test_invariant_to_a_constant_added_to_all_rewards_and_zero_on_masked_tokens():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    penalty = torch.rand(4, 3, generator=torch.Generator().manual_seed(0)) * 0.1
    rewards = torch.tensor([[0.3, 0.9], [0.1, 0.5]])
    estimator = estimators.get("reinforce_pp_baseline")
    base = estimator.token_advantages(Batch.shaped(rewards, mask, penalty), {}).advantages
    shifted = estimator.token_advantages(Batch.shaped(rewards + 5.0, mask, penalty), {})
    torch.testing.assert_close(base, shifted.advantages, atol=1e-5, rtol=1e-5)
    assert (base[mask == 0] == 0).all()
    # whitened: zero mean, unit (unbiased) variance over the valid tokens
    valid = base[mask.bool()]
    torch.testing.assert_close(valid.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(valid.var(), torch.tensor(1.0), atol=1e-5, rtol=0)


def test_needs_two_samples_per_prompt():
    assert estimators.REGISTRY.get_class("reinforce_pp_baseline").min_samples_per_prompt == 2
