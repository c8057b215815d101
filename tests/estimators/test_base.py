import pytest
import torch

from pgbench import estimators
from pgbench.errors import ConfigError
from pgbench.estimators.base import Batch, Estimator


def test_a_batch_folds_the_kl_penalty_into_its_rewards_once():
    rewards = torch.tensor([[1.0, 0.0], [2.0, 2.0]])  # P=2 prompts, K=2
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    penalty = torch.full((4, 3), 0.1)  # beta * KL on every token, padding included
    batch = Batch.shaped(rewards, mask, penalty)
    # sequence: r - 0.1 per policy token (2, 2, 3, 1 tokens)
    torch.testing.assert_close(batch.rewards, torch.tensor([[0.8, -0.2], [1.7, 1.9]]))
    # tokens: -0.1 on each policy token, the reward on the last one (a gap does not count)
    expected = torch.tensor(
        [[-0.1, 0.9, 0.0], [-0.1, 0.0, -0.1], [-0.1, -0.1, 1.9], [1.9, 0.0, 0.0]]
    )
    torch.testing.assert_close(batch.token_rewards, expected)
    assert batch.uniform.tolist() == [False, True]  # prompt 2's task rewards are equal


def test_the_default_token_advantages_broadcast_the_sequences_over_the_mask():
    class Centred(Estimator):
        name = "centred"

        def advantages(self, rewards, state=None):
            return rewards - rewards.mean(dim=1, keepdim=True)

    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    batch = Batch.shaped(torch.tensor([[3.0, 1.0]]), mask, torch.zeros(2, 2))
    result = Centred().token_advantages(batch, {})
    assert result.advantages.tolist() == [[1.0, 1.0], [-1.0, 0.0]] and result.returns is None
    with pytest.raises(NotImplementedError, match="estimator centred has no value head"):
        Centred().value_loss(mask, mask, mask)


def test_get_builds_a_registered_estimator_with_checked_fields():
    assert estimators.get("reinforce", baseline="ema").baseline == "ema"
    with pytest.raises(ConfigError, match="^unknown estimator 'ppo2'; registered: gdpo, gpg, grpo"):
        estimators.get("ppo2")
