"""REINFORCE++: token-level returns, whitened over every valid token of the batch.

    G_t = r * 1[t = last] - sum_{s >= t} beta * KL_s      (return of token t, gamma = 1)
    A_t = (G_t - mean(G)) / sqrt(var(G) + eps)             (mean, var over valid tokens)

Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models",
arXiv:2501.03262. The KL term is present when kl.placement=reward (the paper's setting); the
token rewards come from the core (`pgbench.rl.losses.shape_rewards`).
Deviations: none beyond pgbench's shared knobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pgbench.estimators.base import Advantages, Batch, Estimator, register
from pgbench.fields import knob


@register("reinforce_pp")
@dataclass(frozen=True)
class ReinforcePP(Estimator):
    eps: float = knob(1e-8, "added to the variance when whitening", gt=0.0)

    def token_advantages(self, batch: Batch, state: dict[str, Any]) -> Advantages:
        from pgbench.rl.losses import whiten  # torch: imported when used, not for --help

        returns = batch.token_rewards.flip(1).cumsum(1).flip(1)  # G_t = sum_{s >= t} r_s  [N, T]
        return Advantages(whiten(returns, batch.mask, self.eps))
