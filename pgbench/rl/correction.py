"""Rollout correction (`loss.rollout_correction`): the sampling policy mu differs from the policy
the trainer scores, pi_old (stale rollouts, `rollout.staleness`). Per token t of sequence i,
with w_it = pi_old / mu (the trainer's log-probs at the start of the update against the
behaviour log-probs recorded at sampling time):

    none          no weight; the loss's ratio is taken against mu itself: rho = pi / mu
                  (verl's bypass mode, `ppo_is_bypass`)
    tis           each token's loss times sg(min(w, C)); level=sequence: sg(min(prod_t w_it, C))
                  on every token of sequence i                          (verl `rollout_is`)
    mis           tokens (level=token) or whole sequences (level=sequence, on prod_t w_it) whose
                  weight lies outside [low, high] leave the loss mask   (verl `rollout_rs`)
    icepop        each token's loss times sg(w) where w lies in [low, high], else 0 (IcePop,
                  Ling Team 2025, arXiv:2510.18855; OpenRLHF, NeMo-RL `icepop`)
    seq_mask_tis  each token's loss times sg(w_it), 0 on every token of a sequence whose
                  geometric mean exp(mean_t log w_it) leaves [low, high] (OpenRLHF, NeMo-RL
                  `seq-mask-tis`)
    reject_token_k1, reject_seq_sum_k1, reject_seq_mean_k3
                  verl's `rollout_rs` KL criteria on k1 = log(mu / pi_old) = -log w and
                  k3 = w - 1 - log w: a token (k1 in [log low, log high]), a sequence (sum_t k1
                  in that range) or a sequence (mean_t k3 <= kl_max) leaves the loss mask

With any correction the loss's ratio is rho = pi / pi_old (verl's decoupled mode: the clip
anchors at the trainer's policy, the weight or mask corrects the lag). C = high; low = 1/high
unless set (verl's defaults: 2.0 and its reciprocal). Log-ratios are summed in log space and
bounded to [-20, 20] before exp, as verl does. icepop, seq_mask_tis and the reject_ criteria
ignore `level`. With low = 1/high, reject_token_k1 and reject_seq_sum_k1 keep what mis keeps
at level token and sequence (k1 = -log w: the same interval, mirrored). Liu, Li et al. 2025,
"When Speed Kills Stability"; Yao et al. 2025 (TIS); verl `trainer/ppo/rollout_corr_helper.py`.
Deviations: no veto, no geometric level, no batch normalisation of the weights (verl's
options, off by default there too); one reject_ criterion at a time (verl chains several);
icepop's zeroed tokens stay in the aggregation's token counts (as OpenRLHF).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from pgbench.rl.choices import Correction, Level

SAFETY_BOUND = 20.0  # |log w| above this is clamped before exp (verl's bound)


class Corrected(NamedTuple):
    weight: Tensor  # [N, T] detached factor on each token's policy loss (1 where none)
    mask: Tensor  # [N, T] the loss mask with the rejected tokens removed


def correct(
    old_logprobs: Tensor,
    behaviour: Tensor,
    mask: Tensor,
    how: Correction,
    level: Level = "token",
    high: float = 2.0,
    low: float = 0.0,
    kl_max: float = 0.01,
) -> Corrected:
    """Weights and loss mask of `how`; all tensors [N, T], `mask` 1.0 on the policy's tokens."""
    log_w = (old_logprobs - behaviour).detach() * mask
    lower = low if low > 0 else 1 / high
    ones = torch.ones_like(mask)
    if how in ("tis", "mis"):
        if level == "sequence":
            log_w = log_w.sum(dim=1, keepdim=True).expand_as(mask)
        log_w = log_w.clamp(-SAFETY_BOUND, SAFETY_BOUND)
        if how == "tis":
            return Corrected(torch.exp(log_w).clamp(max=high), mask)
        return Corrected(ones, mask * _inside(log_w, lower, high))
    log_w = log_w.clamp(-SAFETY_BOUND, SAFETY_BOUND)
    if how == "icepop":
        return Corrected(torch.exp(log_w) * _inside(log_w, lower, high), mask)
    if how == "seq_mask_tis":
        lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)
        geometric = log_w.sum(dim=1, keepdim=True) / lengths  # log of the geometric mean of w
        return Corrected(torch.exp(log_w) * _inside(geometric, lower, high), mask)
    if how.startswith("reject_"):
        return Corrected(ones, mask * _kl_kept(log_w, mask, how, (lower, high), kl_max))
    return Corrected(ones, mask)


def _inside(log_w: Tensor, lower: float, upper: float) -> Tensor:
    """1.0 where w lies in [lower, upper] (bounds included), else 0.0."""
    return ((log_w >= math.log(lower)) & (log_w <= math.log(upper))).float()


def _kl_kept(
    log_w: Tensor, mask: Tensor, how: str, bounds: tuple[float, float], kl_max: float
) -> Tensor:
    """verl's rollout_rs criteria, on k1 = log(mu / pi_old) = -log w and k3 = w - 1 - log w
    (estimates of KL(mu || pi_old) from mu's samples); 1.0 where the token or sequence passes."""
    k1 = -log_w
    if how == "reject_token_k1":
        return _inside(k1, *bounds)
    if how == "reject_seq_sum_k1":
        return _inside((k1 * mask).sum(dim=1, keepdim=True), *bounds).expand_as(mask)
    k3 = (torch.expm1(log_w) - log_w) * mask
    mean_k3 = k3.sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1)
    return (mean_k3 <= kl_max).float().expand_as(mask)


def off_policy_mask(
    logprobs: Tensor, sampling: Tensor, advantages: Tensor, mask: Tensor, threshold: float
) -> Tensor:
    """DeepSeek-V3.2's off-policy sequence mask (arXiv:2512.02556, eq. 9), [N, T] float: 0 on
    the tokens with A < 0 of a sequence whose mean log(mu / pi) over its tokens exceeds
    `threshold` (mu the sampling policy, pi the trained one, detached), else 1 (TRL's
    `get_off_policy_mask`)."""
    log_gap = ((sampling - logprobs.detach()) * mask).sum(dim=1, keepdim=True)
    mean_gap = log_gap / mask.sum(dim=1, keepdim=True).clamp(min=1)
    return ((advantages >= 0) | (mean_gap <= threshold)).to(mask.dtype)
