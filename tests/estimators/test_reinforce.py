import pytest
import torch

from pgbench import estimators
from pgbench.errors import ConfigError


def test_no_baseline_returns_rewards():
    rewards = torch.tensor([[0.1, 0.9], [0.5, 0.4]])
    assert torch.equal(estimators.get("reinforce").advantages(rewards), rewards)


def test_ema_baseline_uses_only_earlier_batches():
    reinforce = estimators.get("reinforce", baseline="ema", ema_decay=0.5)
    state: dict = {}
    first = torch.tensor([[1.0, 3.0]])  # mean 2
    second = torch.tensor([[4.0, 4.0]])  # mean 4
    third = torch.tensor([[0.0, 6.0]])
    # b_0 = 0, b_1 = mean(first) = 2, b_2 = 0.5 * 2 + 0.5 * 4 = 3
    torch.testing.assert_close(reinforce.advantages(first, state), first)
    torch.testing.assert_close(reinforce.advantages(second, state), second - 2.0)
    torch.testing.assert_close(reinforce.advantages(third, state), third - 3.0)
    assert state["baseline"] == pytest.approx(0.5 * 3 + 0.5 * 3)


def test_ema_needs_state():
    with pytest.raises(ValueError):
        estimators.get("reinforce", baseline="ema").advantages(torch.ones(1, 2))


def test_registry_errors_name_valid_choices():
    names = (
        "gdpo, gpg, grpo, grpo_passk, maxrl, opo, otb, ppo, reinforce, reinforce_pp, "
        "reinforce_pp_baseline, remax, rloo"
    )
    with pytest.raises(ConfigError, match=f"registered: {names}$"):
        estimators.get("reinforse")
    with pytest.raises(ConfigError, match="did you mean estimator.baseline"):
        estimators.get("reinforce", baselin="ema")
    with pytest.raises(ConfigError, match="none, ema"):
        estimators.get("reinforce", baseline="mean")
    with pytest.raises(ConfigError, match="ema_decay must be <= 1.0"):
        estimators.get("reinforce", ema_decay=1.5)
