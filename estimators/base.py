"""The base classes and registry of pgbench.estimators (imported by every estimator module;
the package imports the modules, so that each registers itself)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from pgbench.registry import Registry

if TYPE_CHECKING:  # annotations only: `--help` imports this module without torch
    from torch import Tensor


@dataclass
class Batch:
    """What an estimator sees of one rollout batch; N = P * K rows grouped by prompt."""

    rewards: Tensor  # [P, K] sequence rewards, KL penalty folded in (losses.shape_rewards)
    token_rewards: Tensor  # [N, T] per-token KL penalty, task reward on the last policy token
    mask: Tensor  # [N, T] 1.0 on the policy's tokens (tool results and padding are 0)
    values: Tensor | None = None  # [N, T] value-head estimates (estimators with a value head)
    baseline: Tensor | None = None  # [P] task reward of each prompt's greedy completion
    uniform: Tensor | None = None  # [P] prompts whose K rewards (before KL) are all equal
    # [C, P, K] the task's reward components and their weights [C] (a task with several
    # rewards); `rewards` is their weighted sum plus the KL and overlong penalties (gdpo)
    components: Tensor | None = None
    component_weights: Tensor | None = None
    logprobs: Tensor | None = None  # [N, T] rollout-time log pi of each token (needs_sq_probs)
    sq_probs: Tensor | None = None  # [N, T] sum_v pi(v)^2 where each token was drawn (same)

    @classmethod
    def shaped(
        cls,
        rewards: Tensor,
        mask: Tensor,
        kl_penalty: Tensor,
        values: Tensor | None = None,
        baseline: Tensor | None = None,
        *,
        components: Tensor | None = None,
        component_weights: Tensor | None = None,
        logprobs: Tensor | None = None,
        sq_probs: Tensor | None = None,
    ) -> Batch:
        """The batch of task rewards [P, K] and a per-token KL penalty [N, T] (zeros when
        kl.placement=loss), folded together once by the core's `shape_rewards`; `baseline`
        [P] (estimators with `needs_greedy`), the task's reward `components` [C, P, K] with
        their `component_weights` [C], and the scoring pass's `logprobs` and `sq_probs`
        [N, T] (estimators with `needs_sq_probs`) are passed through unshaped."""
        from pgbench.rl.losses import shape_rewards, uniform_groups  # torch: not for --help

        sequence, tokens = shape_rewards(rewards, kl_penalty, mask)
        uniform = uniform_groups(rewards)
        return cls(
            sequence,
            tokens,
            mask,
            values,
            baseline,
            uniform,
            components,
            component_weights,
            logprobs,
            sq_probs,
        )


class Advantages(NamedTuple):
    advantages: Tensor  # [N, T], zero on masked tokens
    returns: Tensor | None = None  # [N, T] value targets (estimators with a value head)


class Estimator:
    """Base class of estimators; subclasses are frozen dataclasses registered by name."""

    name: ClassVar[str]
    # shared knobs this estimator sets for its runs unless given (PPO: trainer.epochs=2 ...)
    run_defaults: ClassVar[dict[str, Any]] = {}
    min_samples_per_prompt: ClassVar[int] = 1  # smallest K the formula is defined for
    uses_value_head: ClassVar[bool] = False  # True: the core adds vf_coef * value_loss
    needs_greedy: ClassVar[bool] = False  # True: the rollout adds Batch.baseline (greedy)
    needs_sq_probs: ClassVar[bool] = False  # True: scoring adds Batch.logprobs and .sq_probs
    vf_coef: float = 0.0  # weight of the value loss (estimators with a value head)

    def advantages(self, rewards: Tensor, state: dict[str, Any] | None = None) -> Tensor:
        """Advantages [P, K] of rewards [P, K]; `state` persists across steps (checkpointed)."""
        raise NotImplementedError

    def token_advantages(self, batch: Batch, state: dict[str, Any]) -> Advantages:
        """Per-token advantages [N, T]. Sequence-level default: `advantages` of the sequence
        rewards, broadcast over each sequence's policy tokens."""
        return Advantages(self.advantages(batch.rewards, state).reshape(-1, 1) * batch.mask)

    def value_loss(self, values: Tensor, old_values: Tensor, returns: Tensor) -> Tensor:
        """Per-token value loss [N, T]; only estimators with `uses_value_head` define it."""
        raise NotImplementedError(f"estimator {self.name} has no value head")


REGISTRY: Registry[Estimator] = Registry("estimator")
register = REGISTRY.register


def get(name: str, **fields: Any) -> Estimator:
    """Build the estimator registered as `name` with the given fields."""
    return REGISTRY.get(name, **fields)
