"""Policy-gradient estimators: how a batch of rewards becomes advantages.

`pgbench.estimators.get(name, **fields)` returns an estimator. Sequence-level estimators
map `rewards [P, K]` (P prompts, K samples each) to `advantages [P, K]`; token-level ones
(REINFORCE++, PPO) override `token_advantages`. Estimators are pure: KL, loss aggregation,
sampling and the optimiser are shared knobs of the core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from torch import Tensor

from pgbench.fields import knob
from pgbench.registry import Registry


@dataclass
class Batch:
    """What an estimator sees of one rollout batch; N = P * K rows grouped by prompt."""

    rewards: Tensor  # [P, K] task rewards
    mask: Tensor  # [N, T] 1.0 on the policy's tokens (tool results and padding are 0)
    kl_penalty: Tensor  # [N, T] beta * per-token KL when kl.placement=reward, else zeros
    values: Tensor | None = None  # [N, T] value-head estimates (estimators with a value head)


class Advantages(NamedTuple):
    advantages: Tensor  # [N, T], zero on masked tokens
    returns: Tensor | None = None  # [N, T] value targets (estimators with a value head)


class Estimator:
    """Base class of estimators; subclasses are frozen dataclasses registered by name."""

    name: ClassVar[str]
    min_samples_per_prompt: ClassVar[int] = 1  # smallest K the formula is defined for
    uses_value_head: ClassVar[bool] = False
    epochs: int = 1  # update passes over each rollout batch
    minibatches: int = 1  # optimiser steps per pass
    clip: float = 0.0  # ratio clip epsilon (0 = unclipped)

    def advantages(self, rewards: Tensor, state: dict[str, Any] | None = None) -> Tensor:
        """Advantages [P, K] of rewards [P, K]; `state` persists across steps (checkpointed)."""
        raise NotImplementedError

    def token_advantages(self, batch: Batch, state: dict[str, Any]) -> Advantages:
        """Per-token advantages [N, T]. Sequence-level default: the KL penalty is summed into
        each sequence's reward, `advantages` is applied, and the result broadcast over tokens."""
        shaped = batch.rewards - batch.kl_penalty.sum(dim=1).view_as(batch.rewards)
        return Advantages(self.advantages(shaped, state).reshape(-1, 1) * batch.mask)


@dataclass(frozen=True)
class MultiPass(Estimator):
    """Fields of estimators that may take several clipped update passes per rollout batch."""

    epochs: int = knob(1, "update passes over each rollout batch (>1 uses the clipped ratio)", ge=1)
    minibatches: int = knob(1, "optimiser steps per pass (the batch split in equal parts)", ge=1)
    clip: float = knob(0.2, "clip epsilon of the ratio pi/pi_old", gt=0.0)


REGISTRY: Registry[Estimator] = Registry("estimator")
register = REGISTRY.register


def get(name: str, **fields: Any) -> Estimator:
    """Build the estimator registered as `name` with the given fields."""
    return REGISTRY.get(name, **fields)


from pgbench.estimators import grpo, ppo, reinforce, reinforce_pp, rloo  # noqa: E402,F401
