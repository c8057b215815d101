"""Pass@k GRPO: only the best of the group's K samples is reinforced, by its margin over the
second best.

    A_b = (r_(1) - r_(2)) / (std_j r_j + eps),   b = argmax_j r_j     estimator.scale=group
    A_b =  r_(1) - r_(2)                                               estimator.scale=none
    A_i = 0 for every other sample i

r_(1) >= r_(2) are the group's largest two rewards and std the unbiased sample standard
deviation of its K rewards. This is the leave-one-out gradient of max_j r_j, the group's
pass@K when k = K: a tie at the top (two right answers with 0/1 rewards) gives every sample
0, and a wrong sample is never pushed down. It optimises pass@K, not the pass@1 that
pgbench's leaderboards score, so expect a lower pass@1 than GRPO's at the same budget.

Tang et al. 2025, "Optimizing Language Models for Inference Time Objectives using
Reinforcement Learning", arXiv:2503.19595 (its k = n estimator); verl's
`compute_grpo_passk_outcome_advantage` (algorithm.adv_estimator=grpo_passk, std division on
by algorithm.norm_adv_by_std_in_grpo, epsilon 1e-6).
Deviations: none in the advantage. The best of tied samples is the first in the group (verl
takes the index `torch.topk` returns); a tie gives it 0 either way. The paper's estimators
for k < K (leave-one-out over subsets of size k) are not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pgbench.estimators.base import Estimator, register
from pgbench.fields import knob

if TYPE_CHECKING:  # annotations only: `--help` imports this module without torch
    from torch import Tensor


@register("grpo_passk")
@dataclass(frozen=True)
class GRPOPassK(Estimator):
    scale: Literal["group", "none"] = knob("group", "divide by the std of the group's rewards")
    eps: float = knob(1e-6, "added to the std (verl's epsilon)", gt=0.0)

    min_samples_per_prompt = 2  # the margin needs a second-best sample

    def advantages(self, rewards: Tensor, state: dict[str, Any] | None = None) -> Tensor:
        """rewards [P, K] -> advantages [P, K], non-zero only at each row's best sample."""
        top, _ = rewards.topk(2, dim=1)  # [P, 2] best and second-best reward
        margin = top[:, :1] - top[:, 1:]  # [P, 1] >= 0
        if self.scale == "group":
            margin = margin / (rewards.std(dim=1, keepdim=True) + self.eps)
        best = rewards.argmax(dim=1, keepdim=True)  # [P, 1] first index of the maximum
        return rewards.new_zeros(rewards.shape).scatter(1, best, margin)
