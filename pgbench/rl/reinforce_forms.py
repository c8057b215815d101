"""REINFORCE-style policy-loss forms (`loss.policy`): the gradient is -w A grad log pi with a
stopped weight w (or a penalty added), not a clipped surrogate. rho = pi / pi_old, A the
advantage; all tensors [N, T].

    topr   w = 1 if A > 0, else sg(clip(rho, 0, 1))       Le Roux et al. 2025, arXiv:2503.14286
           (tapered off-policy REINFORCE: an SFT-like step on the good samples, truncated
           importance weights on the bad ones)
    kimi   -A grad log pi + tau/2 (log rho)^2             Kimi Team 2025, arXiv:2501.12599
           (Kimi 1.5's policy mirror descent: no ratio, a squared log-ratio penalty)
    vespo  w = sg(phi(W_i)), W_i = prod_t rho_it the sequence's ratio,
           phi(W) = exp(lambda) W^k exp(-lambda W) (a Gamma shape with phi(1) = 1; k, lambda
           per sign of A)                                 arXiv:2602.10693 (VESPO)

Each value is computed as w * (-A) * rho / sg(rho) (value -w A, gradient -w A grad log pi):
ROLL's and TRL's `-w A log pi` has the same gradient and another value. At rho = 1 each is the
plain policy gradient (phi(1) = 1, the penalty's gradient is 0).
Deviations: TOPR splits by the sign of the advantage (the paper's R(tau) after its baseline;
ROLL splits by the raw score > 0) and its rho is loss.ratio's (token, or GSPO's geometric mean;
the paper's is the trajectory's product); ROLL's per-set weights are 1. VESPO's W_i sums
log rho_it clamped to [-20, 20], and W to [1e-8, e^20], as TRL does; with a rollout correction
the weight multiplies the loss separately (TRL folds it into W).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _score(log_rho: Tensor) -> Tensor:
    """1 in value, grad log pi in gradient: the carrier of a stopped weight."""
    return torch.exp(log_rho - log_rho.detach())


def topr(log_rho: Tensor, advantages: Tensor) -> tuple[Tensor, Tensor]:
    """TOPR: per-token loss and the tokens whose weight the truncation at 1 lowers."""
    ratio = torch.exp(log_rho.detach())
    weight = torch.where(advantages > 0, torch.ones_like(ratio), ratio.clamp(0.0, 1.0))
    return -weight * advantages * _score(log_rho), (advantages < 0) & (ratio > 1)


def kimi(log_rho: Tensor, advantages: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Kimi 1.5: -A grad log pi plus tau/2 (log rho)^2; no clip."""
    loss = -advantages * _score(log_rho) + 0.5 * tau * log_rho**2
    return loss, torch.zeros_like(log_rho, dtype=torch.bool)


def vespo_weight(
    log_rho: Tensor, advantages: Tensor, mask: Tensor, shape: tuple[float, float, float, float]
) -> Tensor:
    """phi(W_i) [N, T] (detached); `shape` = (k_pos, lambda_pos, k_neg, lambda_neg), the pos
    pair where the token's A >= 0 (one sign per sequence with sequence-level advantages)."""
    k_pos, lam_pos, k_neg, lam_neg = shape
    floor = math.log(1e-8)
    log_w = (log_rho.detach().clamp(-20.0, 20.0) * mask).sum(dim=1, keepdim=True)
    log_w = log_w.clamp(floor, 20.0)
    non_negative = advantages >= 0
    k = torch.where(non_negative, k_pos, k_neg)
    lam = torch.where(non_negative, lam_pos, lam_neg).clamp(min=1e-4)
    phi = torch.exp(lam + k * log_w - lam * log_w.exp())
    return phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def vespo(
    log_rho: Tensor, advantages: Tensor, mask: Tensor, shape: tuple[float, float, float, float]
) -> tuple[Tensor, Tensor]:
    """VESPO: -sg(phi(W_i)) A grad log pi per token; a soft weight, no hard clip."""
    phi = vespo_weight(log_rho, advantages, mask, shape)
    return -phi * advantages * _score(log_rho), torch.zeros_like(log_rho, dtype=torch.bool)
