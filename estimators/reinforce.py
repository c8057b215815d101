"""REINFORCE: the score-function policy gradient, with an optional moving-average baseline.

    A_i = r_i - b,   b = 0 (estimator.baseline=none)
                     b = EMA of past batch-mean rewards (estimator.baseline=ema):
                         b_0 = 0,  b_1 = mean(r_0),  b_t = d * b_{t-1} + (1 - d) * mean(r_{t-1})

Williams 1992, "Simple statistical gradient-following algorithms for connectionist
reinforcement learning", Machine Learning 8:229-256.
Deviations: the EMA uses only earlier batches, so the baseline never depends on the
samples it is subtracted from (the gradient stays unbiased).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pgbench.estimators.base import Estimator, register
from pgbench.fields import knob

if TYPE_CHECKING:  # annotations only: `--help` imports this module without torch
    from torch import Tensor


@register("reinforce")
@dataclass(frozen=True)
class Reinforce(Estimator):
    baseline: Literal["none", "ema"] = knob("none", "baseline subtracted from rewards")
    ema_decay: float = knob(0.9, "decay d of the EMA baseline", ge=0.0, le=1.0)

    def advantages(self, rewards: Tensor, state: dict[str, Any] | None = None) -> Tensor:
        """rewards [P, K] -> advantages [P, K]; the EMA baseline lives in `state["baseline"]`."""
        if self.baseline == "none":
            return rewards.clone()
        if state is None:
            raise ValueError("the EMA baseline needs a state dict that persists across steps")
        previous = state.get("baseline")
        advantages = rewards - (previous if previous is not None else 0.0)
        batch_mean = rewards.mean().item()
        state["baseline"] = (
            batch_mean
            if previous is None
            else self.ema_decay * previous + (1 - self.ema_decay) * batch_mean
        )
        return advantages
