from collections import defaultdict

import pytest
import torch

from pgbench import estimators
from pgbench.estimators import Batch


def otb_batch(rewards, mask, pi, sq, kl=None) -> Batch:
    """A batch with the scoring pass's log pi (from pi) and sum pi^2 of each token."""
    kl = torch.zeros_like(mask) if kl is None else kl
    return Batch.shaped(rewards, mask, kl, logprobs=pi.log(), sq_probs=sq)


def hand_batch() -> Batch:
    # K=2, T=3: row 0 is 3 tokens long with reward 1, row 1 is 2 tokens long with reward 0.
    # w = 1 - 2 pi + sum pi^2: row 0 pi = 0.5, sum 0.5 -> w 0.5; row 1 pi 0.25, sum 0.5 -> w 1
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    pi = torch.tensor([[0.5, 0.5, 0.5], [0.25, 0.25, 0.25]])
    sq = torch.full((2, 3), 0.5)
    return otb_batch(torch.tensor([[1.0, 0.0]]), mask, pi, sq)


def test_otb_hand_computed():
    # G: row 0 [1, 1, 1], row 1 [0, 0, -]; W (cumulative w): row 0 [0.5, 1, 1.5], row 1 [1, 2, -]
    # b_0 = (1 * 0.5 + 0 * 1) / 1.5 = 1/3; b_1 = (1 * 1 + 0 * 2) / 3 = 1/3; b_2 = 1.5 / 1.5 = 1
    # A = G - b: row 0 [2/3, 2/3, 0], row 1 [-1/3, -1/3, 0] (equal weights would give +-1/2)
    got = estimators.get("otb", eps=1e-8).token_advantages(hand_batch(), {}).advantages
    expected = torch.tensor([[2 / 3, 2 / 3, 0.0], [-1 / 3, -1 / 3, 0.0]])
    torch.testing.assert_close(got, expected)


def test_otb_zero_tail_drops_the_baseline_past_the_second_longest():
    # row 0 alone is longer than row 1 (3 > 2): b_2 = 0 there, so A = G = 1 at t = 2
    got = estimators.get("otb", zero_tail=True).token_advantages(hand_batch(), {}).advantages
    expected = torch.tensor([[2 / 3, 2 / 3, 1.0], [-1 / 3, -1 / 3, 0.0]])
    torch.testing.assert_close(got, expected)


def test_otb_reward_to_go_counts_the_kl_penalty_and_skips_tool_results():
    # K=2, T=3, equal w = 0.5; row 0's t=1 is a tool result (mask 0). KL penalties 0.1 per
    # policy token: token rewards row 0 [-0.1, 0, 1 - 0.1], row 1 [-0.1, -0.1, -0.1]
    # G row 0 [0.8, 0.9, 0.9], row 1 [-0.3, -0.2, -0.1]; W row 0 [0.5, 0.5, 1], row 1 [.5, 1, 1.5]
    # b_0 = (0.8 - 0.3) / 2 = 0.25; b_1: row 1 only -> -0.2; b_2 = (0.9 - 0.15) / 2.5 = 0.3
    mask = torch.tensor([[1.0, 0, 1], [1, 1, 1]])
    batch = otb_batch(
        torch.tensor([[1.0, 0.0]]),
        mask,
        torch.full((2, 3), 0.5),
        torch.full((2, 3), 0.5),
        kl=0.1 * mask,
    )
    got = estimators.get("otb").token_advantages(batch, {}).advantages
    expected = torch.tensor([[0.8 - 0.25, 0, 0.9 - 0.3], [-0.3 - 0.25, 0, -0.1 - 0.3]])
    torch.testing.assert_close(got, expected)


def test_otb_without_scores_is_a_programming_error():
    batch = Batch.shaped(torch.ones(1, 2), torch.ones(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="sq_probs"):
        estimators.get("otb").token_advantages(batch, {})
    assert estimators.get("otb").needs_sq_probs and not estimators.get("grpo").needs_sq_probs


def verl_otb(token_rewards, mask, index, logprobs, sq_probs, zero_tail, epsilon=1e-8):
    """verl's compute_optimal_token_baseline_advantage as its code defines it (no rollout IS
    weights), written out here with loops: reward-to-go G, w = 1 - 2 pi + sum pi^2, W its
    masked running sum; per group and position b_t = sum G W m / (sum W m + eps); with
    zero_tail, a lone longest trajectory gets b = 0 from the second-longest length on."""
    rows, length = mask.shape
    returns = torch.zeros(rows, length)
    path = torch.zeros(rows, length)
    for i in range(rows):
        running = 0.0
        for t in reversed(range(length)):
            running += float(token_rewards[i, t] * mask[i, t])
            returns[i, t] = running
        total = 0.0
        for t in range(length):
            total += float((1 - 2 * logprobs[i, t].exp() + sq_probs[i, t]) * mask[i, t])
            path[i, t] = total
    members = defaultdict(list)
    for row, group in enumerate(index):
        members[group].append(row)
    baseline = torch.zeros(rows, length)
    for group in members.values():
        for t in range(length):
            top = sum(float(returns[j, t] * path[j, t] * mask[j, t]) for j in group)
            bottom = sum(float(path[j, t] * mask[j, t]) for j in group) + epsilon
            for j in group:
                baseline[j, t] = top / bottom
        lengths = [int(mask[j].sum()) for j in group]
        ordered = sorted(lengths)
        if zero_tail and lengths.count(ordered[-1]) == 1 and ordered[-1] > ordered[-2]:
            baseline[group[lengths.index(ordered[-1])], ordered[-2] :] = 0.0
    return (returns - baseline) * mask


@pytest.mark.parametrize("zero_tail", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_otb_matches_verl_on_random_batches(zero_tail, seed):
    generator = torch.Generator().manual_seed(seed)
    prompts, samples, length = 3, 4, 7
    rows = prompts * samples
    lengths = torch.randint(1, length + 1, (rows,), generator=generator)
    mask = (torch.arange(length)[None] < lengths[:, None]).float()
    mask[0, 1] = 0.0  # a tool result inside row 0
    rewards = torch.rand(prompts, samples, generator=generator)
    kl = 0.05 * torch.rand(rows, length, generator=generator) * mask
    logits = torch.randn(rows, length, 11, generator=generator)
    probs = logits.softmax(dim=-1)
    chosen = torch.randint(0, 11, (rows, length), generator=generator)
    pi = probs.gather(-1, chosen[..., None]).squeeze(-1)
    sq = (probs**2).sum(dim=-1)
    batch = otb_batch(rewards, mask, pi, sq, kl)
    got = estimators.get("otb", zero_tail=zero_tail).token_advantages(batch, {}).advantages
    index = [row // samples for row in range(rows)]
    expected = verl_otb(batch.token_rewards, mask, index, pi.log(), sq, zero_tail)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_otb_creates_no_tensor_off_the_batch_device():
    meta = torch.empty(6, 5, device="meta")
    batch = Batch(torch.empty(2, 3, device="meta"), meta, meta, logprobs=meta, sq_probs=meta)
    got = estimators.get("otb", zero_tail=True).token_advantages(batch, {}).advantages
    assert got.device.type == "meta"
