from collections import defaultdict

import pytest
import torch

from pgbench import estimators
from pgbench.estimators import Batch


def test_gdpo_hand_computed_two_components():
    # K=3, chrF-like c1 = [1, 0, 0] (weight 1), c2 = [0, 0, 3] (weight 0.5);
    # c1: mean 1/3, std sqrt((4/9 + 1/9 + 1/9) / 2) = sqrt(1/3); c2: mean 1, std sqrt(3)
    components = torch.tensor([[[1.0, 0, 0]], [[0.0, 0, 3]]])  # [C=2, P=1, K=3]
    weights = torch.tensor([1.0, 0.5])
    rewards = (weights[:, None, None] * components).sum(0)  # [1, 0, 1.5]: no penalty
    z1 = torch.tensor([2 / 3, -1 / 3, -1 / 3]) / (1 / 3**0.5 + 1e-4)
    z2 = torch.tensor([-1.0, -1, 2]) / (3**0.5 + 1e-4)
    gdpo = estimators.get("gdpo", batch_norm=False)
    got = gdpo.advantages(rewards, None, components, weights)
    torch.testing.assert_close(got, (z1 + 0.5 * z2)[None])
    normalised = estimators.get("gdpo").advantages(rewards, None, components, weights)
    summed = z1 + 0.5 * z2  # mean 0 already; batch std over its 3 values
    torch.testing.assert_close(normalised, (summed / (summed.std() + 1e-4))[None])


def test_gdpo_keeps_what_grpo_collapses():
    # the paper's case: two 0/1 rewards, K=2. Prompt A: c1 = [0, 1], c2 = [0, 0] (sums [0, 1]);
    # prompt B: c1 = c2 = [0, 1] (sums [0, 2]). GRPO z-scores the sums: +-1/sqrt(2) for both.
    # GDPO: A's c2 is uniform (z 0), so A = +-1/sqrt(2); B = 2 * +-1/sqrt(2)
    components = torch.tensor([[[0.0, 1], [0, 1]], [[0, 0], [0, 1]]])
    weights = torch.ones(2)
    rewards = components.sum(0)
    grpo = estimators.get("grpo").advantages(rewards)
    torch.testing.assert_close(grpo[0], grpo[1], atol=1e-4, rtol=0)  # up to eps
    gdpo = estimators.get("gdpo", batch_norm=False).advantages(rewards, None, components, weights)
    half = 0.5 / (0.5**0.5 + 1e-4)
    torch.testing.assert_close(gdpo, torch.tensor([[-half, half], [-2 * half, 2 * half]]))


def test_gdpo_penalties_are_centred_not_scaled():
    # rewards = c + d, d = [0.1, -0.3] a KL penalty: z(c) + d - mean(d) = +-1/sqrt(2) + [0.2, -0.2]
    components = torch.tensor([[[0.0, 1.0]]])
    rewards = components[0] + torch.tensor([[0.1, -0.3]])
    gdpo = estimators.get("gdpo", batch_norm=False)
    got = gdpo.advantages(rewards, None, components, torch.ones(1))
    half = 0.5 / (0.5**0.5 + 1e-4)
    torch.testing.assert_close(got, torch.tensor([[-half + 0.2, half - 0.2]]))


def test_gdpo_without_components_is_grpo_over_its_batch_std():
    rewards = torch.rand(4, 3, generator=torch.Generator().manual_seed(0))
    grpo = estimators.get("grpo").advantages(rewards)
    plain = estimators.get("gdpo", batch_norm=False).advantages(rewards)
    torch.testing.assert_close(plain, grpo)
    got = estimators.get("gdpo").advantages(rewards)
    torch.testing.assert_close(got, grpo / (grpo.std() + 1e-4), atol=1e-5, rtol=1e-5)


def test_gdpo_token_advantages_take_the_batch_components():
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    components = torch.tensor([[[0.0, 1], [0, 1]], [[0, 0], [0, 1]]])
    rewards = components.sum(0)
    batch = Batch.shaped(
        rewards,
        mask,
        torch.zeros_like(mask),
        components=components,
        component_weights=torch.ones(2),
    )
    got = estimators.get("gdpo", batch_norm=False).token_advantages(batch, {}).advantages
    half = 0.5 / (0.5**0.5 + 1e-4)
    expected = torch.tensor([[-half], [half], [-2 * half], [2 * half]]) * mask
    torch.testing.assert_close(got, expected)


def trl_normalize_then_sum(rewards_per_func, weights, num_generations):
    """TRL's multi_objective_aggregation="normalize_then_sum" as its code defines it, written
    out here: each function's rewards [N, C] z-scored in groups of num_generations (NaN-aware
    mean, Bessel std, 1e-4), the weighted sum, then z-scored over the batch."""
    n, c = rewards_per_func.shape
    out = torch.zeros(n, c)
    for start in range(0, n, num_generations):
        for f in range(c):
            values = [float(v) for v in rewards_per_func[start : start + num_generations, f]]
            mean = sum(values) / len(values)
            std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
            for i, v in enumerate(values):
                out[start + i, f] = (v - mean) / (std + 1e-4)
    summed = (out * weights[None]).sum(dim=1)
    mean = summed.mean()
    std = ((summed - mean) ** 2).sum() / (n - 1)
    return (summed - mean) / (std**0.5 + 1e-4)


def verl_gdpo(score_list, weights, mask, index, epsilon=1e-6):
    """verl's compute_gdpo_outcome_advantage as its code defines it, written out here: GRPO
    (torch.std, eps) on each component's summed token scores, the weighted sum broadcast over
    the response tokens, then masked_whiten over all tokens (unbiased, 1e-8 in the rsqrt)."""
    total = torch.zeros(len(mask))
    for weight, scores in zip(weights, score_list, strict=True):
        scores = scores.sum(dim=-1)
        members = defaultdict(list)
        for row, group in enumerate(index):
            members[group].append(row)
        grpo = torch.zeros(len(scores))
        for rows in members.values():
            group = scores[rows]
            grpo[rows] = (group - group.mean()) / (group.std() + epsilon)
        total += weight * grpo
    per_token = total[:, None] * mask
    mean = (per_token * mask).sum() / (mask.sum() + 1e-8)
    variance = (((per_token - mean) ** 2) * mask).sum() / (mask.sum() + 1e-8)
    variance = variance * mask.sum() / (mask.sum() - 1)
    return (per_token - mean) * (variance + 1e-8) ** -0.5 * mask, total


def random_components(seed, prompts=4, samples=3, count=3):
    generator = torch.Generator().manual_seed(seed)
    components = torch.rand(count, prompts, samples, generator=generator)
    components[0] = (components[0] > 0.5).float()  # a 0/1 correctness reward
    weights = torch.rand(count, generator=generator) + 0.2
    return components, weights


@pytest.mark.parametrize("seed", range(4))
def test_gdpo_matches_trl_normalize_then_sum(seed):
    components, weights = random_components(seed)
    rewards = (weights[:, None, None] * components).sum(0)
    got = estimators.get("gdpo").advantages(rewards, None, components, weights)
    per_func = components.flatten(1).T  # [N, C], rows grouped by prompt as TRL's
    expected = trl_normalize_then_sum(per_func, weights, components.shape[2])
    torch.testing.assert_close(got.flatten(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_gdpo_matches_verl_before_its_token_whitening_and_up_to_a_factor_after(seed):
    components, weights = random_components(seed)
    rewards = (weights[:, None, None] * components).sum(0)
    count, prompts, samples = components.shape
    length = 5
    mask = torch.ones(prompts * samples, length)
    last = torch.full((prompts * samples,), length - 1)
    score_list = []
    for c in range(count):  # verl places each component's score on the last response token
        scores = torch.zeros(prompts * samples, length)
        scores[torch.arange(prompts * samples), last] = components[c].flatten()
        score_list.append(scores)
    index = [row // samples for row in range(prompts * samples)]
    whitened, summed = verl_gdpo(score_list, weights, mask, index)
    plain = estimators.get("gdpo", eps=1e-6, batch_norm=False)
    torch.testing.assert_close(
        plain.advantages(rewards, None, components, weights).flatten(), summed
    )
    # equal lengths: verl's token whitening is ours up to one positive factor for the batch
    batch = Batch.shaped(
        rewards, mask, torch.zeros_like(mask), components=components, component_weights=weights
    )
    ours = estimators.get("gdpo", eps=1e-6).token_advantages(batch, {}).advantages
    factor = whitened / ours
    torch.testing.assert_close(factor, factor.mean().expand_as(factor))
    assert factor.mean() > 0


def test_gdpo_creates_no_tensor_off_the_batch_device():
    rewards = torch.empty(3, 4, device="meta")
    components = torch.empty(2, 3, 4, device="meta")
    gdpo = estimators.get("gdpo")
    assert gdpo.advantages(rewards).device.type == "meta"
    weights = torch.empty(2, device="meta")
    assert gdpo.advantages(rewards, None, components, weights).device.type == "meta"
