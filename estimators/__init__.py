"""Policy-gradient estimators: how a batch of rewards becomes per-sample advantages.

`pgbench.estimators.get(name, **fields)` returns an estimator. Sequence-level estimators
map `rewards [P, K]` (P prompts, K samples each) to `advantages [P, K]`. Estimators are
pure: KL, loss aggregation, sampling and the optimiser are shared knobs of the core.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from pgbench.registry import Registry


class Estimator:
    """Base class of estimators; subclasses are frozen dataclasses registered by name."""

    name: ClassVar[str]
    min_samples_per_prompt: ClassVar[int] = 1  # smallest K the formula is defined for

    def advantages(self, rewards: Tensor, state: dict[str, Any] | None = None) -> Tensor:
        """Advantages [P, K] of rewards [P, K]; `state` persists across steps (checkpointed)."""
        raise NotImplementedError


REGISTRY: Registry[Estimator] = Registry("estimator")
register = REGISTRY.register


def get(name: str, **fields: Any) -> Estimator:
    """Build the estimator registered as `name` with the given fields."""
    return REGISTRY.get(name, **fields)


from pgbench.estimators import reinforce, rloo  # noqa: E402,F401  (registers built-ins)
