"""OPO: REINFORCE with the length-weighted optimal baseline of each prompt's group.

    b   = sum_j |o_j| r_j / sum_j |o_j|      (j over the K samples of the same prompt)
    A_i = r_i - b                           broadcast over the policy tokens of sample i

|o_j| is the number of policy tokens of sample j (`mask.sum(1)`: tool results and padding do
not count); r_j is its sequence reward with the KL penalty folded in by the core when
kl.placement=reward. b is the variance-minimising baseline when |grad log pi(o)|^2 grows in
proportion to |o| (the paper's assumption), so sum_i |o_i| A_i = 0 in every group; with
equal lengths it is the group mean (Dr. GRPO, grpo scale=none). No std normalisation.

Hao et al. 2025, "On-Policy RL with Optimal Reward Baseline", arXiv:2505.23585; verl's
`compute_opo_outcome_advantage` (algorithm.adv_estimator=opo).
Deviations: none in the advantage. The paper's exact on-policy training (one update per
rollout batch) is trainer.epochs=1 trainer.minibatches=1, pgbench's default, and its
setting without KL or entropy terms is kl.coef=0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgbench.estimators.base import Advantages, Batch, Estimator, register

if TYPE_CHECKING:  # annotations only: `--help` imports this module without torch
    from torch import Tensor


@register("opo")
@dataclass(frozen=True)
class OPO(Estimator):
    min_samples_per_prompt = 2  # with one sample the baseline is the sample's own reward

    def advantages(
        self, rewards: Tensor, state: dict[str, Any] | None = None, lengths: Tensor | None = None
    ) -> Tensor:
        """rewards [P, K] and policy-token counts `lengths` [P, K] -> advantages [P, K]."""
        if lengths is None:
            raise ValueError(
                "opo needs the completion lengths [P, K]; token_advantages passes mask.sum(1)"
            )
        lengths = lengths.to(rewards.dtype)
        # a group with no policy tokens at all gets b = 0; its advantages are masked out anyway
        total = lengths.sum(dim=1, keepdim=True).clamp(min=1)  # [P, 1]
        baseline = (lengths * rewards).sum(dim=1, keepdim=True) / total  # [P, 1]
        return rewards - baseline

    def token_advantages(self, batch: Batch, state: dict[str, Any]) -> Advantages:
        lengths = batch.mask.sum(dim=1).view_as(batch.rewards)  # [P, K] policy tokens
        advantages = self.advantages(batch.rewards, state, lengths)  # [P, K]
        return Advantages(advantages.reshape(-1, 1) * batch.mask)
