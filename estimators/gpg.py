"""GPG: group-mean baseline, the batch rescaled for the groups that carry no signal.

    A_i   = alpha * (r_i - mean_j r_j) / F_norm,    F_norm = 1
    alpha = min(P / (P - M), max_alpha)             (alpha = 1 when M = P)

j runs over the K samples of the same prompt; M of the batch's P prompts have K equal task
rewards (all right or all wrong: no signal, yet they dilute the loss's average), and
alpha = P / (P - M) undoes that dilution; it is the paper's B / (B - M) in samples, since
every prompt has K. M counts rewards before the KL penalty (task reward plus the overlong
penalty, `Batch.uniform`, the same rewards rollout.drop_uniform_groups judges), so the KL
in the reward (kl.placement=reward) does not hide uniform groups; a group whose KL-shaped
rewards are exactly equal gets exactly 0. With rollout.drop_uniform_groups=true uniform
groups never reach the estimator and alpha = 1.
Chosen over pass@k GRPO (Tang et al. 2025, arXiv:2503.19595; verl adv_estimator=grpo_passk)
because GPG optimises the same pass@1 objective as every other estimator here, so a user can
ask pgbench's leaderboard whether it learns faster than Dr. GRPO at small K, where many
groups are all right or all wrong; pass@k training optimises a different objective that a
pass@1 accuracy would score unfairly.

Chu et al. 2025, "GPG: A Simple and Strong Reinforcement Learning Baseline for Model
Reasoning", arXiv:2504.02546 (the F_norm = 1, alpha = B / (B - M) setting).
Deviations: the authors' code divides the loss by max(1 - M/P, 0.05) (max_alpha = 20 here);
verl's `compute_gpg_outcome_advantage` instead takes alpha = N / (number of non-zero rewards),
counting rewarded samples rather than groups with a signal; pgbench follows the paper. GPG's
loss is -A log pi with no ratio or clip, without KL, averaged over all tokens: with
trainer.epochs=1 the ratio is 1 and the clip never binds, so loss.aggregation=token_mean
kl.coef=0 gives its gradient. The paper's beta_th data filter is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgbench.estimators.base import Advantages, Batch, Estimator, register
from pgbench.fields import knob

if TYPE_CHECKING:  # annotations only: `--help` imports this module without torch
    from torch import Tensor


@register("gpg")
@dataclass(frozen=True)
class GPG(Estimator):
    max_alpha: float = knob(20.0, "cap of alpha = P / (P - M), the gradient rescale", ge=1.0)

    min_samples_per_prompt = 2  # with one sample the group mean is the sample's own reward

    def advantages(
        self, rewards: Tensor, state: dict[str, Any] | None = None, uniform: Tensor | None = None
    ) -> Tensor:
        """rewards [P, K] -> advantages [P, K]; each row sums to zero. `uniform` [P] marks the
        prompts without signal (default: those whose K `rewards` are equal)."""
        from pgbench.rl.losses import uniform_groups  # torch: imported when used, not for --help

        equal = uniform_groups(rewards)  # [P]
        uniform = equal if uniform is None else uniform
        centred = rewards - rewards.mean(dim=1, keepdim=True)  # [P, K]
        centred = centred.masked_fill(equal[:, None], 0.0)  # exact 0, not rounding error
        informative = rewards.shape[0] - int(uniform.sum())
        alpha = min(rewards.shape[0] / informative, self.max_alpha) if informative else 1.0
        return alpha * centred

    def token_advantages(self, batch: Batch, state: dict[str, Any]) -> Advantages:
        advantages = self.advantages(batch.rewards, state, batch.uniform)
        return Advantages(advantages.reshape(-1, 1) * batch.mask)
