"""PPO-clip with a value head and generalised advantage estimation (GAE).

    r_t     = -beta * KL_t + r * 1[t = last]              (token rewards)
    delta_t = r_t + gamma * V_{t+1} - V_t                 (V after the last token = 0)
    A_t     = sum_l (gamma * lam)^l * delta_{t+l}          (GAE), whitened over valid tokens:
              (A - mean) / sqrt(var + 1e-8)
    R_t     = A_t + V_t                                    (value target, before whitening)
    L       = -min(rho_t A_t, clip(rho_t, 1-eps, 1+eps) A_t)
              + vf_coef * 1/2 max((V_t - R_t)^2, (V_old + clip(V_t - V_old, +-eps_v) - R_t)^2)

rho_t = pi(a_t|s_t) / pi_old(a_t|s_t) against the rollout-time policy, over `epochs` passes of
`minibatches` optimiser steps each. Schulman et al. 2017, arXiv:1707.06347; GAE: Schulman et
al. 2016, arXiv:1506.02438. V is a linear head on the policy's last hidden state.
Deviations: the value head shares the policy's body and optimiser (one loss, summed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgbench.estimators.base import Advantages, Batch, Estimator, register
from pgbench.fields import knob

if TYPE_CHECKING:  # annotations only: `--help` imports this module without torch
    from torch import Tensor


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantages [N, T] of token rewards and values [N, T].

    Masked positions are skipped: the next state of a policy token is the next policy token,
    so a tool result between two turns is part of the environment's transition.
    """
    advantages = rewards.new_zeros(rewards.shape)
    running = rewards.new_zeros(rewards.shape[0])  # A of the next policy token (0 after the last)
    next_value = rewards.new_zeros(rewards.shape[0])  # V of the next policy token (0 after it)
    for t in reversed(range(rewards.shape[1])):
        valid = mask[:, t].bool()
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running).where(valid, running)
        next_value = values[:, t].where(valid, next_value)
        advantages[:, t] = running
    return advantages * mask


@register("ppo")
@dataclass(frozen=True)
class PPO(Estimator):
    gamma: float = knob(1.0, "discount of GAE", ge=0.0, le=1.0)
    lam: float = knob(0.95, "lambda of GAE", ge=0.0, le=1.0)
    vf_coef: float = knob(0.1, "weight of the value loss", ge=0.0)
    value_clip: float = knob(0.2, "clip of the value update around the rollout-time value", gt=0.0)

    uses_value_head = True
    run_defaults = {"trainer.epochs": 2, "trainer.minibatches": 2}  # PPO: 2 passes x 2 steps

    def token_advantages(self, batch: Batch, state: dict[str, Any]) -> Advantages:
        if batch.values is None:
            raise ValueError("PPO needs the value head's estimates (batch.values)")
        from pgbench.rl.losses import whiten  # torch: imported when used, not for --help

        values = batch.values * batch.mask
        advantages = gae(batch.token_rewards, values, batch.mask, self.gamma, self.lam)
        returns = (advantages + values) * batch.mask
        return Advantages(whiten(advantages, batch.mask), returns)

    def value_loss(self, values: Tensor, old_values: Tensor, returns: Tensor) -> Tensor:
        """Per-token clipped value loss [N, T]."""
        clipped = old_values + (values - old_values).clamp(-self.value_clip, self.value_clip)
        return 0.5 * ((values - returns) ** 2).maximum((clipped - returns) ** 2)
