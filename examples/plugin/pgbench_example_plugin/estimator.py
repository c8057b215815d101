"""Median baseline: REINFORCE with the median reward of each prompt's K samples as baseline.

    A_i = r_i - median_j r_j

The median is robust to one outlying reward in a group, where the mean (GRPO, RLOO) moves.
Deviations: the baseline includes r_i itself, so the estimator is biased for finite K (as
GRPO's mean is); with K = 2 it equals the mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pgbench.estimators import Estimator


@dataclass(frozen=True)
class MedianBaseline(Estimator):
    min_samples_per_prompt = 2  # a group's median needs a group

    def advantages(self, rewards: Tensor, state: dict[str, Any] | None = None) -> Tensor:
        """rewards [P, K] -> advantages [P, K]: each reward minus its row's median."""
        return rewards - torch.quantile(rewards, 0.5, dim=1, keepdim=True)  # [P, K]
