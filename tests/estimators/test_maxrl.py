from collections import defaultdict

import pytest
import torch

from pgbench import estimators
from pgbench.estimators import Batch


def test_maxrl_hand_computed():
    # rewards [0, 0, 1]: mean 1/3, A = (r - 1/3) / (1/3) = [-1, -1, 2] (r / p_hat - 1);
    # rewards [0.5, 1, 1.5]: mean 1, A = [-0.5, 0, 0.5]
    maxrl = estimators.get("maxrl", eps=1e-6)
    got = maxrl.advantages(torch.tensor([[0.0, 0.0, 1.0], [0.5, 1.0, 1.5]]))
    expected = torch.tensor([[-1 / 3, -1 / 3, 2 / 3], [-0.5, 0.0, 0.5]]) / torch.tensor(
        [[1 / 3 + 1e-6], [1.0 + 1e-6]]
    )
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got[0], torch.tensor([-1.0, -1.0, 2.0]), atol=1e-5, rtol=0)


def test_maxrl_0_1_rewards_give_a_success_1_over_p_minus_1_and_a_failure_minus_1():
    # p_hat = 1/4: success 4 - 1 = 3; p_hat = 3/4: success 4/3 - 1 = 1/3; failures -1;
    # a group with no success (mean 0) gets exactly 0, not 0/eps
    rewards = torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
    got = estimators.get("maxrl", eps=1e-9).advantages(rewards)
    torch.testing.assert_close(got[0], torch.tensor([3.0, -1, -1, -1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1], torch.tensor([1 / 3, 1 / 3, 1 / 3, -1]), atol=1e-5, rtol=0)
    assert torch.equal(got[2], torch.zeros(4))
    torch.testing.assert_close(got.sum(dim=1), torch.zeros(3), atol=1e-5, rtol=0)


def skyrl_maxrl(token_rewards, mask, index, epsilon=1e-6):
    """SkyRL's compute_maxrl_advantage as its code defines it, written out here: the summed
    token rewards, grouped by index; (score - mean) / (mean + eps) in groups of two or more,
    score - 0 in a group of one."""
    scores = token_rewards.sum(dim=-1).tolist()
    groups = defaultdict(list)
    for row, group in enumerate(index):
        groups[group].append(scores[row])
    out = []
    for row, group in enumerate(index):
        members = groups[group]
        mean = sum(members) / len(members) if len(members) > 1 else 0.0
        value = scores[row] - mean
        out.append(value / (mean + epsilon) if len(members) > 1 else value)
    return torch.tensor(out)[:, None] * mask


@pytest.mark.parametrize("seed", range(4))
def test_maxrl_matches_skyrl_on_random_batches(seed):
    generator = torch.Generator().manual_seed(seed)
    prompts, samples, length = 5, 4, 6
    rewards = torch.rand(prompts, samples, generator=generator)
    if seed % 2:  # 0/1 rewards, with all-wrong and all-right groups
        rewards = (rewards > 0.5).float()
    mask = (torch.rand(prompts * samples, length, generator=generator) > 0.2).float()
    mask[:, 0] = 1.0
    last = mask.cumsum(dim=1).argmax(dim=1)  # SkyRL's reward sits on the last valid token
    token_rewards = torch.zeros_like(mask)
    token_rewards[torch.arange(len(mask)), last] = rewards.flatten()
    index = [row // samples for row in range(prompts * samples)]
    batch = Batch.shaped(rewards, mask, torch.zeros_like(mask))
    got = estimators.get("maxrl").token_advantages(batch, {}).advantages
    torch.testing.assert_close(got, skyrl_maxrl(token_rewards, mask, index))


def test_maxrl_creates_no_tensor_off_the_batch_device():
    rewards = torch.empty(3, 4, device="meta")
    assert estimators.get("maxrl").advantages(rewards).device.type == "meta"
