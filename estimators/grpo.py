"""GRPO: group-relative advantages, normalised by the group's standard deviation.

    A_i = (r_i - mean_j r_j) / (std_j r_j + eps)     estimator.scale=group (default)
    A_i = (r_i - mean_j r_j) / (std(all rewards) + eps)    estimator.scale=batch
    A_i =  r_i - mean_j r_j                                 estimator.scale=none (Dr. GRPO)

j runs over the K samples of the same prompt; std is the unbiased sample standard deviation
(`torch.std`). Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300; scale=none is Liu et al.
2025, "Understanding R1-Zero-Like Training" (Dr. GRPO), arXiv:2503.20783.
Deviations: KL placement and loss aggregation are pgbench's shared knobs, not GRPO's own
(the paper puts k3 in the loss and averages tokens per sequence: kl.placement=loss
kl.estimator=k3 loss.aggregation=seq_mean_token_mean reproduces it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pgbench.estimators.base import Estimator, register
from pgbench.fields import knob

if TYPE_CHECKING:  # annotations only: `--help` imports this module without torch
    from torch import Tensor


@register("grpo")
@dataclass(frozen=True)
class GRPO(Estimator):
    scale: Literal["group", "batch", "none"] = knob("group", "divide by the std of the group/batch")
    eps: float = knob(1e-4, "added to the std", gt=0.0)

    min_samples_per_prompt = 2  # the sample std needs two samples

    def advantages(self, rewards: Tensor, state: dict[str, Any] | None = None) -> Tensor:
        """rewards [P, K] -> advantages [P, K]; each row sums to zero."""
        centred = rewards - rewards.mean(dim=1, keepdim=True)
        if self.scale == "group":
            return centred / (rewards.std(dim=1, keepdim=True) + self.eps)
        if self.scale == "batch":
            return centred / (rewards.std() + self.eps)
        return centred
