"""Shared loss knobs: KL estimators (and DeepSeek-V3.2's importance-corrected KL), KL placement
(reward shaping), loss aggregation and the high-entropy token mask.

Every estimator goes through these functions, so changing `estimator=` changes only
the advantages. Tensors are `[N, T]`: N sequences, T completion tokens, with a 0/1 mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pgbench.rl.choices import Aggregation, KLEstimator


def kl_per_token(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator) -> Tensor:
    """Per-token estimate of KL(policy || reference) from samples of the policy; [N, T].

    k1 = log p/q (unbiased, can be negative), k2 = 1/2 (log p/q)^2 (biased, >= 0),
    k3 = q/p - 1 - log(q/p) (unbiased, >= 0); Schulman 2020, "Approximating KL divergence".
    Where the gradient comes from (Tang & Munos 2025, arXiv:2506.09477): with
    kl.placement=reward the estimate is a reward, and the score-function gradient of k1 is the
    gradient of KL(pi || ref); with kl.placement=loss it is differentiated, which is not the
    gradient of the KL for k1 (zero in expectation) or k3 (the reverse KL's); only k2 in the
    loss gives E[log(p/q) grad log p], the gradient of KL(pi || ref).
    k1_plus, k3_plus (verl's `k1+`, `k3+`): k1's or k3's value with k2's gradient, by a
    straight-through estimator k2 - sg(k2) + sg(k): in the loss, the unbiased k1 or k3 is what
    is logged and k2's correct gradient is what trains. In the reward it is k1 or k3 (a reward
    carries no gradient). Unlike verl, k3 is not clamped (verl: log ratio to [-20, 20], k3 to
    [-10, 10]).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    k2 = 0.5 * log_ratio**2
    if estimator == "k2":
        return k2
    if estimator == "k1_plus":
        return k2 - k2.detach() + log_ratio.detach()
    k3 = torch.expm1(-log_ratio) + log_ratio
    if estimator == "k3_plus":
        return k2 - k2.detach() + k3.detach()
    return k3


def high_entropy_mask(entropy: Tensor, mask: Tensor, quantile: float) -> Tensor:
    """[N, T] float: the valid tokens whose entropy is at least the (1 - quantile) quantile of
    the valid tokens' entropies (linear interpolation, torch.quantile's default, as TRL): the
    top `quantile` share by entropy (Wang et al. 2025, arXiv:2506.01939). quantile = 1 keeps
    every valid token; 0 only the highest-entropy one(s)."""
    valid = mask > 0
    values = entropy.detach()[valid].float()
    if values.numel() == 0 or quantile >= 1:
        return mask
    threshold = torch.quantile(values, 1 - quantile)
    return mask * (entropy.detach() >= threshold)


def importance_corrected_kl(kl: Tensor, logprobs: Tensor, old_logprobs: Tensor) -> Tensor:
    """DeepSeek-V3.2's unbiased KL estimate (arXiv:2512.02556, eq. 7): the per-token KL [N, T]
    of samples drawn by pi_old, times rho = pi / pi_old with its gradient (TRL's
    `use_bias_correction_kl`). The value is unchanged at rho = 1, the gradient is not: it gains
    KL * grad log pi, the score-function term of the KL's own gradient."""
    return kl * torch.exp(logprobs - old_logprobs)


def uniform_groups(rewards: Tensor) -> Tensor:
    """[P] bool: the prompts whose K rewards [P, K] are all equal (no signal for a group
    baseline: DAPO's dynamic sampling drops them, GPG rescales for them)."""
    return (rewards == rewards[:, :1]).all(dim=1)


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
    batch_prompts: int = 0,
    group_tokens: Tensor | None = None,
) -> Tensor:
    """Reduce per-token values [N, T] to a scalar.

    `batch_sequences`, `batch_tokens` and `batch_prompts` count the whole rollout batch, and
    `group_tokens` [N] is the number of tokens of each row's prompt group in it, so summing
    this over micro-batches gives exactly the value of the whole batch.
      token_mean:              sum_i sum_t x_it / sum_i |o_i|                     (DAPO)
      seq_mean_token_mean:     1/N sum_i (1/|o_i|) sum_t x_it                     (GRPO)
      seq_mean_token_sum_norm: 1/N sum_i sum_t x_it / max_new_tokens              (Dr. GRPO)
      prompt_mean:             1/P sum_p (1/|o_p|) sum_{i in p} sum_t x_it        (ScaleRL)
    where |o_p| is the token count of prompt p's K completions: each prompt weighs the same,
    and its tokens the same within it (ScaleRL, arXiv:2510.13786; SkyRL `prompt_mean`).
    """
    masked = per_token * mask
    if how == "token_mean":
        return masked.sum() / max(batch_tokens, 1)
    if how == "prompt_mean":
        return (masked.sum(dim=1) / group_tokens.clamp(min=1)).sum() / max(batch_prompts, 1)
    if how == "seq_mean_token_mean":
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sum() / batch_sequences
    return masked.sum() / (batch_sequences * max_new_tokens)


def prompt_groups(mask: Tensor, rows: Tensor, samples: int) -> tuple[Tensor, int]:
    """For `rows` (indices of a batch grouped K = `samples` rows per prompt): the tokens of
    each row's prompt group among `rows` [len(rows)], and how many prompts they cover."""
    prompt = torch.div(rows, samples, rounding_mode="floor")
    prompts, inverse = prompt.unique(return_inverse=True)
    tokens = mask[rows].sum(dim=1)
    totals = torch.zeros(len(prompts), device=mask.device).index_add_(0, inverse, tokens)
    return totals[inverse], len(prompts)


def whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) * rsqrt(var + eps) over the valid tokens, zero elsewhere; [N, T].

    rsqrt(var + eps) rather than 1 / (std + eps): returns that differ only by float32
    rounding (var ~ 1e-14) stay near zero instead of becoming unit-variance noise.
    """
    valid = values[mask.bool()]
    if valid.numel() < 2:
        return torch.zeros_like(values)
    return (values - valid.mean()) * torch.rsqrt(valid.var() + eps) * mask


def overlong_penalty(lengths: Tensor, max_new_tokens: int, buffer: int, factor: float) -> Tensor:
    """DAPO's soft overlong punishment (arXiv:2503.14476, eq. 13) per completion; [N].

    0 up to max_new_tokens - buffer tokens, then falling linearly to -factor at
    max_new_tokens (a completion cut at the limit gets -factor). `buffer=0` = off.
    """
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    over = (lengths.float() - (max_new_tokens - buffer)).clamp(min=0) / buffer
    return -factor * over.clamp(max=1.0)
