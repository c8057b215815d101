"""GDPO: each reward component normalised within its group, then the weighted sum, normalised
over the batch.

    z_ci = (r_ci - mean_j r_cj) / (std_j r_cj + eps)     each component c, within the group
    s_i  = sum_c w_c z_ci + (d_i - mean_j d_j)           d_i = r_i - sum_c w_c r_ci
    A_i  = (s_i - mean(s)) / (std(s) + eps)              over the batch's P * K samples
           (A_i = s_i with estimator.batch_norm=false)

j runs over the K samples of the same prompt; std is the unbiased sample standard deviation.
The components are a task's weighted rewards (fr_en's `task.reward=chrf+bleu+0.5*embed`, a
dataset task's `task.reward=a,b` with `task.reward_weights`): GRPO z-scores their sum, so a
component with a wide spread drowns the others and different combinations collapse onto the
same advantage; GDPO z-scores each. d_i is what the rollout added to the task's reward (the
KL penalty of kl.placement=reward, DAPO's overlong penalty): it is only centred, so kl.coef
keeps its meaning (z-scored, any beta > 0 would weigh as much as a reward). A task with one
reward has no components: `rewards` (penalties included) is the one component and A is
GRPO's advantage divided by its batch std.

Liu et al. 2026, "GDPO: Group reward-Decoupled Normalization Policy Optimization for
Multi-reward RL Optimization", arXiv:2601.05242; TRL's
`multi_objective_aggregation="normalize_then_sum"` (eps 1e-4, the default here); verl's
`compute_gdpo_outcome_advantage` (algorithm.adv_estimator=gdpo, gdpo_reward_keys).
Deviations: none from TRL's definition, which has no reward-side penalty (its KL is in the
loss). verl whitens the weighted sum over tokens (`masked_whiten`: a sample weighs by its
length, unbiased variance over tokens, 1e-8 inside the square root; eps 1e-6 in the group
std) where the paper and TRL whiten over samples, as here: with equal lengths the two differ
by one factor for the whole batch; verl's gdpo drops an in-reward KL. A reward function's
None is filled with its group's mean by the dataset task before any estimator sees it (TRL
leaves it out of that component's statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgbench.estimators.base import Advantages, Batch, Estimator, register
from pgbench.fields import knob

if TYPE_CHECKING:  # annotations only: `--help` imports this module without torch
    from torch import Tensor


@register("gdpo")
@dataclass(frozen=True)
class GDPO(Estimator):
    eps: float = knob(1e-4, "added to each std (TRL's 1e-4; verl's 1e-6)", gt=0.0)
    batch_norm: bool = knob(True, "z-score the weighted sum over the batch (the paper's)")

    min_samples_per_prompt = 2  # the sample std needs two samples

    def advantages(
        self,
        rewards: Tensor,
        state: dict[str, Any] | None = None,
        components: Tensor | None = None,
        weights: Tensor | None = None,
    ) -> Tensor:
        """rewards [P, K] -> advantages [P, K]; `components` [C, P, K] with `weights` [C]
        are the task's rewards (default: `rewards` itself, weight 1)."""
        if components is None or weights is None:
            components, weights = rewards[None], rewards.new_ones(1)
        weights = weights[:, None, None]  # [C, 1, 1]
        centred = components - components.mean(dim=2, keepdim=True)  # [C, P, K]
        normalised = centred / (components.std(dim=2, keepdim=True) + self.eps)
        rest = rewards - (weights * components).sum(dim=0)  # [P, K] the penalties d
        summed = (weights * normalised).sum(dim=0) + rest - rest.mean(dim=1, keepdim=True)
        if not self.batch_norm:
            return summed
        return (summed - summed.mean()) / (summed.std() + self.eps)

    def token_advantages(self, batch: Batch, state: dict[str, Any]) -> Advantages:
        advantages = self.advantages(
            batch.rewards, state, batch.components, batch.component_weights
        )
        return Advantages(advantages.reshape(-1, 1) * batch.mask)
