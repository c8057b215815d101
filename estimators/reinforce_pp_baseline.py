"""REINFORCE++-baseline: the group mean as baseline, then whitening over the batch's tokens.

    A_i  = r_i - mean_j r_j                         (j over the K samples of the same prompt)
    A_it = (A_i - mean(A)) * rsqrt(var(A) + eps)    (mean, var over every valid token)

r_i is sample i's sequence reward with the KL penalty folded in by the core (kl.placement=
reward: r_i = R_i - sum_t beta KL_it), so the KL enters once per sequence, before the
baseline, and every policy token of sample i gets the same advantage: the formulation of
verl's `compute_reinforce_plus_plus_baseline_outcome_advantage`, whose score is the sum of
the KL-shaped token rewards. var is the unbiased variance over the batch's valid tokens, so
longer completions weigh more in mean and var (verl's `masked_whiten`). eps sits inside the
rsqrt, not added to the std: a batch whose advantages are all equal up to rounding gives ~0,
not rounding noise scaled up to unit variance.

Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models",
arXiv:2501.03262 (the "REINFORCE++ w/ baseline" variant, K > 1).
Deviations: OpenRLHF (advantage_estimator=reinforce_baseline) subtracts the group mean from
the task reward only and adds the KL per token afterwards, as a return to go
-sum_{s >= t} beta KL_s; pgbench follows verl. The two agree with kl.placement=loss or
kl.coef=0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pgbench.estimators.base import Advantages, Batch, Estimator, register
from pgbench.fields import knob


@register("reinforce_pp_baseline")
@dataclass(frozen=True)
class ReinforcePPBaseline(Estimator):
    eps: float = knob(1e-8, "added to the variance inside the rsqrt when whitening", gt=0.0)

    min_samples_per_prompt = 2  # the group mean of one sample is the sample itself

    def token_advantages(self, batch: Batch, state: dict[str, Any]) -> Advantages:
        from pgbench.rl.losses import whiten  # torch: imported when used, not for --help

        centred = batch.rewards - batch.rewards.mean(dim=1, keepdim=True)  # [P, K]
        per_token = centred.reshape(-1, 1).expand_as(batch.mask)  # [N, T]
        return Advantages(whiten(per_token, batch.mask, self.eps))
