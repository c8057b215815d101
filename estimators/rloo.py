"""RLOO: REINFORCE with a leave-one-out baseline over the K samples of each prompt.

    A_i = r_i - mean_{j != i} r_j = K / (K - 1) * (r_i - mean_j r_j)

Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
Learning from Human Feedback in LLMs", arXiv:2402.14740 (after Kool et al. 2019).
Deviations: none; KL and loss aggregation are pgbench's shared knobs (`kl.*`, `loss.*`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgbench.estimators.base import Estimator, register

if TYPE_CHECKING:  # annotations only: `--help` imports this module without torch
    from torch import Tensor


@register("rloo")
@dataclass(frozen=True)
class RLOO(Estimator):
    min_samples_per_prompt = 2  # the baseline needs at least one other sample

    def advantages(self, rewards: Tensor, state: dict[str, Any] | None = None) -> Tensor:
        """rewards [P, K] -> advantages [P, K]; each row sums to zero."""
        samples = rewards.shape[1]
        baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (samples - 1)  # [P, K]
        return rewards - baseline
