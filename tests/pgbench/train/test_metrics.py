"""What a training step logs (pgbench.train.metrics), checked by hand."""

import dataclasses

import pytest
import torch

from pgbench.config.sections import LoraConfig
from pgbench.config.verbs import resolve
from pgbench.models.policy import load_policy
from pgbench.train.metrics import step_metrics
from pgbench.train.update import prepare
from tests.pgbench.train.test_update import multi_turn_rollout


def test_explained_variance_of_the_value_head_by_hand(micro_policy, micro_task, run_overrides):
    policy = load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))
    config = resolve(run_overrides | {"estimator": "ppo", "kl.coef": "0"})
    head = torch.nn.Linear(policy.model.config.hidden_size, 1)
    rollout = multi_turn_rollout(policy, micro_task)
    rewards = torch.tensor([[1.0, 0.0], [0.5, 0.25]])
    prepared = prepare(
        config,
        config.estimator,
        model=policy.model,
        rollout=rollout,
        rewards=rewards,
        value_head=head,
    )
    valid = rollout.policy_mask.bool()
    returns = torch.zeros_like(prepared.advantages)
    returns[valid] = torch.arange(25, dtype=torch.float)  # 0..24
    values = returns.clone()
    values[valid] += torch.tensor([1.0, -1.0] * 12 + [0.0])  # errors of variance 24/25 * 25/24
    prepared = dataclasses.replace(prepared, returns=returns, old_values=values)
    updates = [{k: 0.0 for k in ("loss", "value_loss", "clip_fraction", "approx_kl")}]
    updates[0] |= {"entropy": 1.0, "grad_norm": 0.0}
    metrics = step_metrics(prepared, updates, rewards)
    errors = torch.tensor([1.0, -1.0] * 12 + [0.0])
    expected = 1 - errors.var() / torch.arange(25, dtype=torch.float).var()
    assert metrics["train/explained_variance"] == pytest.approx(expected.item())
