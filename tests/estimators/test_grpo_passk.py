from collections import defaultdict

import pytest
import torch

from pgbench import estimators
from pgbench.estimators import Batch


def test_grpo_passk_hand_computed():
    # rewards [0.2, 0.9, 0.5]: best 0.9 (index 1), second 0.5, margin 0.4;
    # mean 8/15, unbiased std sqrt(((-1/3)^2 + (11/30)^2 + (-1/30)^2) / 2)
    rewards = torch.tensor([[0.2, 0.9, 0.5]])
    std = (((1 / 3) ** 2 + (11 / 30) ** 2 + (1 / 30) ** 2) / 2) ** 0.5
    got = estimators.get("grpo_passk", eps=1e-6).advantages(rewards)
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.4 / (std + 1e-6), 0.0]]))
    plain = estimators.get("grpo_passk", scale="none").advantages(rewards)
    torch.testing.assert_close(plain, torch.tensor([[0.0, 0.4, 0.0]]))


def test_grpo_passk_one_success_ties_and_failures():
    # [0, 1, 0, 0]: the success's margin 1 over std 0.5 (mean 1/4, variance 0.75 / 3) -> 2;
    # [1, 0, 1, 0]: a tie at the top, margin 0 -> all zero; [0, 0, 0, 0]: all zero
    rewards = torch.tensor([[0.0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    got = estimators.get("grpo_passk").advantages(rewards)
    expected = torch.tensor([[0.0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got >= 0).all()  # a wrong sample is never pushed down


def verl_grpo_passk(token_rewards, mask, index, epsilon=1e-6, norm_by_std=True):
    """verl's compute_grpo_passk_outcome_advantage as its code defines it, written out here:
    per group, the best sample gets (max - second max), over (std + eps) if asked."""
    scores = token_rewards.sum(dim=-1)
    members = defaultdict(list)
    for row, group in enumerate(index):
        members[group].append(row)
    out = torch.zeros(len(scores))
    for rows in members.values():
        group = scores[rows]
        ordered = sorted(range(len(rows)), key=lambda i: -float(group[i]))
        margin = group[ordered[0]] - group[ordered[1]]
        if norm_by_std:
            margin = margin / (group.std() + epsilon)
        out[rows[ordered[0]]] = margin
    return out[:, None] * mask


@pytest.mark.parametrize("scale", ["group", "none"])
@pytest.mark.parametrize("seed", range(3))
def test_grpo_passk_matches_verl_on_random_batches(scale, seed):
    generator = torch.Generator().manual_seed(seed)
    prompts, samples, length = 6, 5, 4
    rewards = torch.rand(prompts, samples, generator=generator)  # distinct: one best
    mask = (torch.rand(prompts * samples, length, generator=generator) > 0.3).float()
    kl = torch.rand(prompts * samples, length, generator=generator) * 0.1 * mask
    shaped = Batch.shaped(rewards, mask, kl)  # verl sums the KL-shaped token rewards
    token_rewards = shaped.token_rewards
    index = [row // samples for row in range(prompts * samples)]
    got = estimators.get("grpo_passk", scale=scale).token_advantages(shaped, {}).advantages
    expected = verl_grpo_passk(token_rewards, mask, index, norm_by_std=scale == "group")
    torch.testing.assert_close(got, expected)


def test_grpo_passk_creates_no_tensor_off_the_batch_device():
    rewards = torch.empty(3, 4, device="meta")
    assert estimators.get("grpo_passk").advantages(rewards).device.type == "meta"
