"""ReMax: REINFORCE whose baseline is the reward of the greedy completion of the same prompt.

    A_i = r_i - R(x, y_greedy)      broadcast over the policy tokens of sample i

r_i is sample i's sequence reward, with the KL penalty folded in by the core when
kl.placement=reward (r_i = R(x, y_i) - beta * sum_t KL_it); the baseline is the task reward
R of one greedy completion of the same prompt x, without a KL term (as in verl). The greedy
completion is decoded by `pgbench.train.rollout.collect_rollout` (with the task's tools, if any);
its tokens and time count in the step's tokens and rollout time.

Li et al. 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for
Aligning Large Language Models", arXiv:2310.10505.
Deviations: the paper's K = 1; any K >= 1 shares the prompt's one greedy baseline. With
kl.placement=reward verl (`compute_remax_outcome_advantage`) gives token t the return to go
sum_{s >= t} of the shaped token rewards minus the baseline; pgbench broadcasts the whole
sequence's shaped reward, as every sequence-level estimator does (the same with kl.coef=0 or
kl.placement=loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgbench.estimators.base import Advantages, Batch, Estimator, register

if TYPE_CHECKING:  # annotations only: `--help` imports this module without torch
    from torch import Tensor


@register("remax")
@dataclass(frozen=True)
class ReMax(Estimator):
    needs_greedy = True  # collect_rollout decodes one greedy completion per prompt

    def advantages(
        self,
        rewards: Tensor,
        state: dict[str, Any] | None = None,
        baseline: Tensor | None = None,
    ) -> Tensor:
        """rewards [P, K] and greedy rewards `baseline` [P] -> advantages [P, K]."""
        if baseline is None:
            raise ValueError(
                "remax needs the greedy baseline [P] (Batch.baseline); collect_rollout "
                "computes it when the estimator's needs_greedy is True"
            )
        if baseline.shape != rewards.shape[:1]:
            raise ValueError(
                f"remax baseline has shape {tuple(baseline.shape)}, expected "
                f"({rewards.shape[0]},): one greedy reward per prompt"
            )
        return rewards - baseline[:, None]

    def token_advantages(self, batch: Batch, state: dict[str, Any]) -> Advantages:
        advantages = self.advantages(batch.rewards, state, batch.baseline)  # [P, K]
        return Advantages(advantages.reshape(-1, 1) * batch.mask)
