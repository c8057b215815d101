"""Rollout correction (`loss.rollout_correction`): the sampling policy mu differs from the policy
the trainer scores, pi_old (stale rollouts, `rollout.staleness`). Per token t of sequence i,
with w_it = pi_old / mu (the trainer's log-probs at the start of the update against the
behaviour log-probs recorded at sampling time):

    none   no weight; the loss's ratio is taken against mu itself: rho = pi / mu
           (verl's bypass mode, `ppo_is_bypass`)
    tis    each token's loss times sg(min(w, C)); level=sequence: sg(min(prod_t w_it, C)) on
           every token of sequence i                               (verl `rollout_is`)
    mis    tokens (level=token) or whole sequences (level=sequence, on prod_t w_it) whose
           weight lies outside [low, high] leave the loss mask      (verl `rollout_rs`)

With tis or mis the loss's ratio is rho = pi / pi_old (verl's decoupled mode: the clip
anchors at the trainer's policy, the weight or mask corrects the lag). C = high; low = 1/high
unless set (verl's defaults: 2.0 and its reciprocal). Log-ratios are summed in log space and
bounded to [-20, 20] before exp, as verl does. Liu, Li et al. 2025, "When Speed Kills
Stability"; Yao et al. 2025 (TIS); verl `trainer/ppo/rollout_corr_helper.py`.
Deviations: no veto, no geometric level, no batch normalisation of the weights (verl's
options, off by default there too).
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
) -> Corrected:
    """Weights and loss mask of `how`; all tensors [N, T], `mask` 1.0 on the policy's tokens."""
    log_w = (old_logprobs - behaviour).detach() * mask
    if level == "sequence":
        log_w = log_w.sum(dim=1, keepdim=True).expand_as(mask)
    log_w = log_w.clamp(-SAFETY_BOUND, SAFETY_BOUND)
    ones = torch.ones_like(mask)
    if how == "tis":
        return Corrected(torch.exp(log_w).clamp(max=high), mask)
    if how == "mis":
        lower = low if low > 0 else 1 / high
        kept = (log_w >= math.log(lower)) & (log_w <= math.log(high))
        return Corrected(ones, mask * kept)
    return Corrected(ones, mask)
