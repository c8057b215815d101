"""OTB: the optimal token baseline, one baseline per position, weighted by each sample's
cumulative gradient-norm proxy.

    G_it = sum_{s >= t} r_is                          reward-to-go (KL penalty, task reward)
    w_it = 1 - 2 pi(y_it) + sum_v pi(v | prefix)^2    ||grad_logits log pi(y_it)||^2
    W_it = sum_{s <= t} w_is                          the path's cumulative proxy
    b_t  = sum_j G_jt W_jt / (sum_j W_jt + eps)       j over the K samples of the prompt
    A_it = G_it - b_t                                 on the policy's tokens

Position t counts from each completion's first token; a sample shorter than t (or a tool
result at t) does not enter b_t, and the sums run over the policy's tokens only. w is the
squared norm of the gradient of log pi(y) with respect to the logits, the paper's
Logit-Gradient Proxy of the gradient norm; it needs the sampling policy's pi(y) and
sum_v pi(v)^2 at every token, which the scoring pass computes for this estimator only
(`needs_sq_probs`), at the sampling temperature. With zero_tail, the part of a group's
single longest sample past the second longest gets b_t = 0 (b_t there is its own G_t).

Li et al. 2026, "The Optimal Token Baseline: Variance Reduction for Long-Horizon LLM-RL",
arXiv:2602.07078; verl's `compute_optimal_token_baseline_advantage`
(algorithm.adv_estimator=optimal_token_baseline with actor.calculate_sum_pi_squared=true;
handle_zero_tail defaults to false there too).
Deviations: verl scales w by the squared rollout-correction weight (rollout_is_weights) of a
stale rollout; pgbench computes its correction after the advantages, so w is unscaled. verl
gives a prompt with one sample A = G; pgbench needs K >= 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgbench.estimators.base import Advantages, Batch, Estimator, register
from pgbench.fields import knob

if TYPE_CHECKING:  # annotations only: `--help` imports this module without torch
    from torch import Tensor


@register("otb")
@dataclass(frozen=True)
class OTB(Estimator):
    eps: float = knob(1e-8, "added to the baseline's denominator (verl's epsilon)", gt=0.0)
    zero_tail: bool = knob(False, "no baseline past the second-longest sample (verl's)")

    min_samples_per_prompt = 2  # with one sample the baseline is the sample's own return
    needs_sq_probs = True

    def token_advantages(self, batch: Batch, state: dict[str, Any]) -> Advantages:
        if batch.logprobs is None or batch.sq_probs is None:
            raise ValueError("otb needs Batch.logprobs and Batch.sq_probs from the scoring pass")
        mask = batch.mask  # [N, T]
        prompts, samples = batch.rewards.shape
        returns = (batch.token_rewards * mask).flip(1).cumsum(dim=1).flip(1)  # [N, T] G
        proxy = 1 - 2 * batch.logprobs.exp() + batch.sq_probs  # [N, T] w
        path = (proxy * mask).cumsum(dim=1)  # [N, T] W
        grouped = (prompts, samples, mask.shape[1])
        g, w, m = returns.view(grouped), path.view(grouped), mask.view(grouped)
        numerator = (g * w * m).sum(dim=1, keepdim=True)  # [P, 1, T]
        baseline = numerator / ((w * m).sum(dim=1, keepdim=True) + self.eps)
        baseline = baseline.expand(grouped)  # [P, K, T]
        if self.zero_tail:
            baseline = baseline.masked_fill(_lone_tail(m), 0.0)
        return Advantages(((g - baseline) * m).reshape(mask.shape))


def _lone_tail(mask: Tensor) -> Tensor:
    """[P, K, T] bool: positions t >= L2 of a group's longest sample when it is the only one
    of its length L1 > L2, the second-longest length (lengths are policy-token counts)."""
    import torch  # not for --help

    lengths = mask.sum(dim=2)  # [P, K]
    ordered = lengths.sort(dim=1).values
    longest, second = ordered[:, -1], ordered[:, -2]  # [P]
    alone = ((lengths == longest[:, None]).sum(dim=1) == 1) & (longest > second)
    row = lengths.argmax(dim=1)  # [P]
    samples = torch.arange(mask.shape[1], device=mask.device)
    positions = torch.arange(mask.shape[2], device=mask.device)
    is_row = samples[None, :, None] == row[:, None, None]  # [P, K, 1]
    past = positions[None, None, :] >= second[:, None, None]  # [P, 1, T]
    return alone[:, None, None] & is_row & past
