"""Policy-loss forms where a mask on a divergence replaces the ratio clip (`loss.policy`).

Per token, rho = pi / pi_old, p = pi(y_t), p_old = pi_old(y_t), A the advantage; [N, T]:

    dppo_tv  -A sg(min(rho, C)) grad log pi on the tokens the mask keeps: for A > 0 those with
             p - p_old <= hi, otherwise those with p - p_old >= -lo (a one-sided binary
             total variation)                               DPPO, arXiv:2602.04879
    dppo_kl  the same with the binary KL p_old log(p_old / p) + (1 - p_old) log((1 - p_old) /
             (1 - p)) <= hi (A > 0, p rising) or <= lo (A <= 0, p falling)
    m2po     -M rho A, unclipped; M drops the tokens with the largest (log rho)^2 until the mean
             (log rho)^2 of the rest is below tau           Zheng et al. 2025, arXiv:2510.01161

hi, lo = loss.clip_high, loss.clip_low (as verl's clip_ratio_high/low are DPPO's divergence
thresholds; 0 = that side unmasked); C = loss.dppo_ratio_cap (0 = uncapped), tau =
loss.m2po_threshold. Each value is computed as the gradient's weight times rho / sg(rho), so
the DPPO loss shows -A sg(min(rho, C)) where verl logs -A sg(min(rho, C)) log pi (same gradient).
Deviations: the masked tokens stay in the loss.aggregation counts (as verl's DPPO; AReaL's M2PO
removes them); M2PO's mask is taken over each micro-batch's tokens from the current log rho
(the paper's log pi_theta / pi_behav with loss.rollout_correction=none; AReaL: per
micro-batch, from log mu - log pi_prox, and with its PPO clip kept), and, as AReaL, keeps at
least one token.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _score(log_rho: Tensor) -> Tensor:
    """1 in value, grad log pi in gradient: the carrier of a stopped weight."""
    return torch.exp(log_rho - log_rho.detach())


def _capped(log_rho: Tensor, cap: float) -> Tensor:
    ratio = torch.exp(log_rho.detach())
    return ratio.clamp(max=cap) if cap > 0 else ratio


def _binary_kl(old_p: Tensor, p: Tensor) -> Tensor:
    """KL(Bernoulli(p_old) || Bernoulli(p)); 1e-8 keeps p = 1 finite, as verl does."""
    rest = torch.log((1 - old_p + 1e-8) / (1 - p + 1e-8))
    return old_p * (old_p.log() - p.log()) + (1 - old_p) * rest


def dppo(
    log_rho: Tensor,
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    bounds: tuple[float, float],
    cap: float,
    divergence: str,
) -> tuple[Tensor, Tensor]:
    """DPPO-Binary-TV (`divergence="tv"`) or -KL (`"kl"`): per-token loss and the masked
    tokens. `bounds` = (lo, hi), 0 = that side unmasked."""
    low, high = (b if b > 0 else math.inf for b in bounds)
    p, old_p = logprobs.detach().exp(), old_logprobs.exp()
    if divergence == "tv":
        rising_ok, falling_ok = p - old_p <= high, p - old_p >= -low
    else:
        kl = _binary_kl(old_p, p)
        rising_ok, falling_ok = (kl <= high) | (p <= old_p), (kl <= low) | (p >= old_p)
    valid = torch.where(advantages > 0, rising_ok, falling_ok)
    loss = -advantages * _capped(log_rho, cap) * _score(log_rho) * valid
    return loss, ~valid & (advantages != 0)


def m2po_mask(log_rho: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """[N, T] bool: the valid tokens kept once the largest (log rho)^2 are dropped, the fewest
    such that the mean of the rest is below `threshold` (at least one token is kept)."""
    valid = mask > 0
    m2 = log_rho.detach()[valid] ** 2
    if m2.numel() == 0:
        return valid
    ordered, order = m2.sort(descending=True)
    tails = ordered.flip(0).cumsum(0).flip(0)  # sum of ordered[i:]
    means = tails / torch.arange(len(ordered), 0, -1, device=m2.device)
    below = (means < threshold).nonzero()
    dropped = int(below[0]) if len(below) else len(ordered) - 1
    keep_sorted = torch.arange(len(ordered), device=m2.device) >= dropped
    keep = torch.empty_like(keep_sorted)
    keep[order] = keep_sorted
    kept = torch.zeros_like(valid)
    kept[valid] = keep
    return kept


def m2po(
    log_rho: Tensor, advantages: Tensor, mask: Tensor, threshold: float
) -> tuple[Tensor, Tensor]:
    """M2PO: unclipped -rho A on the tokens `m2po_mask` keeps; with the dropped tokens."""
    kept = m2po_mask(log_rho, mask, threshold)
    loss = -advantages * torch.exp(log_rho) * kept
    return loss, (mask > 0) & ~kept
