import torch

from pgbench import estimators
from pgbench.estimators import Batch


def test_gpg_rescales_by_prompts_over_informative_prompts():
    # P=4, K=2; prompts 1 and 2 are uniform: M=2, alpha = 4 / (4 - 2) = 2
    rewards = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.5, 1.0]])
    # centred [0.5, -0.5], [0, 0], [0, 0], [-0.25, 0.25], times 2
    expected = torch.tensor([[1.0, -1.0], [0.0, 0.0], [0.0, 0.0], [-0.5, 0.5]])
    torch.testing.assert_close(estimators.get("gpg").advantages(rewards), expected)


def test_gpg_alpha_is_capped_by_max_alpha():
    # P=3, M=2: alpha = 3 / 1 = 3, capped at 2.5; K=3, rewards [0, 0, 3]: centred [-1, -1, 2]
    rewards = torch.tensor([[0.0, 0.0, 3.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    expected = torch.tensor([[-2.5, -2.5, 5.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    advantages = estimators.get("gpg", max_alpha=2.5).advantages(rewards)
    torch.testing.assert_close(advantages, expected)
    uncapped = estimators.get("gpg").advantages(rewards)  # default cap 20: alpha = 3
    torch.testing.assert_close(uncapped, expected / 2.5 * 3)


def test_gpg_all_uniform_batch_gives_exact_zeros():
    # float32 mean of [0.9] * 3 is off by ~6e-8; uniform groups are zeroed, not rounded
    rewards = torch.tensor([[0.9, 0.9, 0.9], [0.0, 0.0, 0.0]])
    assert torch.equal(estimators.get("gpg").advantages(rewards), torch.zeros(2, 3))


def test_gpg_without_uniform_groups_is_dr_grpo_and_rows_sum_to_zero():
    rewards = torch.rand(6, 4, generator=torch.Generator().manual_seed(2))
    gpg = estimators.get("gpg").advantages(rewards)
    torch.testing.assert_close(gpg, estimators.get("grpo", scale="none").advantages(rewards))
    torch.testing.assert_close(gpg.sum(dim=1), torch.zeros(6), atol=1e-6, rtol=0)


def test_gpg_k2_on_kl_shaped_rewards_broadcast_over_tokens():
    # K=2, P=3. Prompt 0 has task rewards [1, 1] and a KL on row 0: shaped [0.8, 1]; its task
    # rewards are uniform, so it counts in M (the KL does not hide it) but keeps its KL signal;
    # prompt 1 is [0, 0]; prompt 2 [1, 0]: M=2, alpha = 3 / 1 = 3
    batch = Batch.shaped(
        rewards=torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]),
        mask=torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]),
        kl_penalty=torch.tensor([[0.1, 0.1]] + [[0.0, 0.0]] * 5),
    )
    # centred: prompt 0 [-0.1, 0.1], prompt 1 exactly 0, prompt 2 [0.5, -0.5]; times 3
    expected = torch.tensor(
        [[-0.3, -0.3], [0.3, 0.0], [0.0, 0.0], [0.0, 0.0], [1.5, 0.0], [-1.5, -1.5]]
    )
    result = estimators.get("gpg").token_advantages(batch, {})
    torch.testing.assert_close(result.advantages, expected)
    assert estimators.REGISTRY.get_class("gpg").min_samples_per_prompt == 2
