"""Shared loss knobs: KL estimators, KL placement (reward shaping) and loss aggregation.

Every estimator goes through these functions, so changing `estimator=` changes only
the advantages. Tensors are `[N, T]`: N sequences, T completion tokens, with a 0/1 mask.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k3"]
Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]


def kl_per_token(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator) -> Tensor:
    """Per-token estimate of KL(policy || reference) from samples of the policy.

    k1 = log p - log q (unbiased, can be negative); k3 = q/p - 1 - log(q/p) (unbiased, >= 0).
    Schulman 2020, "Approximating KL divergence". Shapes: [N, T] -> [N, T].
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    return torch.expm1(-log_ratio) + log_ratio


def shape_rewards(rewards: Tensor, kl_penalty: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The task rewards [P, K] with the KL penalty [N, T] folded in once, for every estimator.

      sequence rewards [P, K]:  r_i - sum_t beta KL_it
      token rewards [N, T]:     -beta KL_it on each policy token, + r_i on the last one
    `kl_penalty` is beta * KL per token with kl.placement=reward, zeros otherwise; rows are
    grouped by prompt (row i * K + k is sample k of prompt i).
    """
    sequence = rewards - (kl_penalty * mask).sum(dim=1).view_as(rewards)
    tokens = -kl_penalty * mask
    # the last policy token: tool results may leave gaps in the mask, so not mask.sum() - 1
    last = mask.shape[1] - 1 - mask.flip(1).argmax(dim=1)  # [N]
    rows = torch.arange(mask.shape[0], device=mask.device)
    tokens[rows, last] += rewards.reshape(-1)
    return sequence, tokens


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    how: Aggregation,
    batch_sequences: int,
    batch_tokens: int,
    max_new_tokens: int,
) -> Tensor:
    """Reduce per-token values [N, T] to a scalar.

    `batch_sequences` and `batch_tokens` count the whole rollout batch, so summing this over
    micro-batches gives exactly the value of the whole batch.
      token_mean:              sum_i sum_t x_it / sum_i |o_i|                     (DAPO)
      seq_mean_token_mean:     1/N sum_i (1/|o_i|) sum_t x_it                     (GRPO)
      seq_mean_token_sum_norm: 1/N sum_i sum_t x_it / max_new_tokens              (Dr. GRPO)
    """
    masked = per_token * mask
    if how == "token_mean":
        return masked.sum() / max(batch_tokens, 1)
    if how == "seq_mean_token_mean":
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sum() / batch_sequences
    return masked.sum() / (batch_sequences * max_new_tokens)


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip: float = 0.0
) -> Tensor:
    """Per-token loss -min(rho A, clip(rho, 1 - eps, 1 + eps) A), rho = pi/pi_old; [N, T].

    `clip=0` leaves the ratio unclipped. At rho = 1 (one update pass, old = current) the
    gradient is the plain score-function estimator -A * grad log pi whatever the clip.
    Schulman et al. 2017, arXiv:1707.06347, eq. 7.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    if clip <= 0:
        return -advantages * ratio
    clipped = ratio.clamp(1 - clip, 1 + clip)
    return -torch.minimum(advantages * ratio, advantages * clipped)
