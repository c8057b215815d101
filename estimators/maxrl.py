"""MaxRL: group-relative advantages divided by the group's mean reward.

    A_i = (r_i - mean_j r_j) / (mean_j r_j + eps)

j runs over the K samples of the same prompt. With 0/1 rewards this is r_i / p_hat - 1, where
p_hat is the group's success rate: the successes share one unit of gradient whatever p_hat is,
which makes the update an estimate of the gradient of log pass@1 (maximum likelihood) instead
of pass@1, so hard prompts (small p_hat) weigh more. A group whose mean is 0 (no success with
0/1 rewards) has every r_i = mean, so its advantages are exactly 0, as in SkyRL, which adds eps
to the mean rather than guarding it. MaxRL assumes rewards in [0, 1]: with rewards that can be
negative (an embedding cosine, the KL penalty of kl.placement=reward) a group mean near 0
makes the advantages huge, and a negative mean flips their sign.

Tajwar et al. 2026, "Maximum Likelihood Reinforcement Learning", arXiv:2602.02710; SkyRL's
`compute_maxrl_advantage` (trainer.algorithm.advantage_estimator=maxrl).
Deviations: none in the advantage (SkyRL's eps = 1e-6 is the default). SkyRL gives a prompt
with a single sample A = r; pgbench needs K >= 2 (with K = 1 the formula gives 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgbench.estimators.base import Estimator, register
from pgbench.fields import knob

if TYPE_CHECKING:  # annotations only: `--help` imports this module without torch
    from torch import Tensor


@register("maxrl")
@dataclass(frozen=True)
class MaxRL(Estimator):
    eps: float = knob(1e-6, "added to the group mean (SkyRL's epsilon)", gt=0.0)

    min_samples_per_prompt = 2  # with one sample the group mean is the sample's own reward

    def advantages(self, rewards: Tensor, state: dict[str, Any] | None = None) -> Tensor:
        """rewards [P, K] -> advantages [P, K]; each row sums to zero."""
        mean = rewards.mean(dim=1, keepdim=True)  # [P, 1]
        return (rewards - mean) / (mean + self.eps)
