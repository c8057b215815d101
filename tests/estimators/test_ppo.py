import pytest
import torch

from pgbench import estimators
from pgbench.estimators import Batch
from pgbench.estimators.ppo import gae


def gae_loop(rewards, values, mask, gamma, lam):
    """Direct implementation: delta_t and the discounted sum, row by row, token by token."""
    out = torch.zeros_like(rewards)
    for i in range(rewards.shape[0]):
        length = int(mask[i].sum())
        for t in range(length):
            total = 0.0
            for step in range(t, length):
                next_value = values[i, step + 1] if step + 1 < length else 0.0
                delta = rewards[i, step] + gamma * next_value - values[i, step]
                total += (gamma * lam) ** (step - t) * delta
            out[i, t] = total
    return out


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_a_direct_loop(gamma, lam):
    generator = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 5, generator=generator), torch.randn(3, 5, generator=generator)
    mask = torch.tensor([[1.0] * 5, [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    torch.testing.assert_close(
        gae(rewards, values, mask, gamma, lam), gae_loop(rewards, values, mask, gamma, lam)
    )


def test_gae_hand_computed():
    # rewards [0, 1], values [0.5, 0.25], gamma = lam = 1:
    # delta_1 = 1 - 0.25 = 0.75; delta_0 = 0 + 0.25 - 0.5 = -0.25; A_0 = -0.25 + 0.75 = 0.5
    out = gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.25]]), torch.ones(1, 2), 1.0, 1.0)
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.75]]))


def test_ppo_returns_and_whitened_advantages():
    ppo = estimators.get("ppo", gamma=1.0, lam=1.0)
    batch = Batch.shaped(
        rewards=torch.tensor([[1.0, 0.0]]),
        mask=torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
        kl_penalty=torch.zeros(2, 2),
        values=torch.tensor([[0.5, 0.25], [0.1, 7.0]]),
    )
    result = ppo.token_advantages(batch, {})
    # with gamma = lam = 1 the return is the final reward: R = [[1, 1], [0, -]]
    torch.testing.assert_close(result.returns, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    raw = torch.tensor([0.5, 0.75, -0.1])  # A = R - V on valid tokens
    torch.testing.assert_close(
        result.advantages[batch.mask.bool()], (raw - raw.mean()) / (raw.var() + 1e-8) ** 0.5
    )


def test_value_loss_is_clipped_around_the_old_value():
    ppo = estimators.get("ppo", value_clip=0.2)
    # V moved from 0 to 1, target 1: unclipped error 0, clipped V = 0.2 -> error 0.64; max -> 0.32
    loss = ppo.value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]))
    torch.testing.assert_close(loss, torch.tensor([[0.32]]))


def test_gae_skips_tool_result_tokens():
    # mask [1, 1, 0, 0, 1]: a tool result at positions 2-3 whose values (9) must not count.
    # rewards [0, 0, 0, 0, 1], values [0.5, 0.5, 9, 9, 0.5], gamma = 1, lam = 0.5:
    # delta_4 = 1 - 0.5 = 0.5 -> A_4 = 0.5
    # delta_1 = 0 + V_4 - V_1 = 0 (the next state of token 1 is token 4) -> A_1 = 0.5 * 0.5
    # delta_0 = 0 + V_1 - V_0 = 0 -> A_0 = 0.5 * 0.25 = 0.125; results get 0
    rewards = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.5, 9.0, 9.0, 0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]])
    out = gae(rewards, values, mask, 1.0, 0.5)
    torch.testing.assert_close(out, torch.tensor([[0.125, 0.25, 0.0, 0.0, 0.5]]))
