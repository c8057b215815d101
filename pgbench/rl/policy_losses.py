"""Shared policy-loss forms (`loss.policy`, `loss.ratio`, `loss.clip_*`), the same for every
estimator. rho = pi / pi_old per token, A the estimator's advantage; all tensors [N, T].

    ppo_clip  -min(rho A, clip(rho, 1 - lo, 1 + hi) A)          Schulman et al. 2017, 1707.06347
              dual clip c > 1, A < 0: min(that, -c A)            Ye et al. 2019, arXiv:1912.09729
    cispo     -sg(clip(rho, 1 - lo, 1 + hi)) A rho / sg(rho)     MiniMax-M1, arXiv:2506.13585
    gmpo      -A_i exp(mean_t clip_A(log rho_t)) per sequence    Zhao et al. 2025, arXiv:2507.20673
    sapo      -A (4 / tau) sigmoid(tau (rho - 1)),               Gao et al. 2025, arXiv:2511.20347
              tau = tau_pos if A > 0 else tau_neg: a soft gate in place of the clip
    clip_cov  ppo_clip, with the gradient cut on a random cov_ratio share of the tokens whose
              covariance (A - mean A)(log pi - mean log pi) lies in (lb, ub)
    kl_cov    -rho A (no clip), + kl_coef |log rho| on the cov_ratio share of the tokens
              with the largest covariance                     Cui et al. 2025, arXiv:2505.22617

`loss.ratio=sequence` (GSPO, Zheng et al. 2025, arXiv:2507.18071) replaces each token's rho
by the length-normalised sequence ratio s_i = exp(mean_t log rho_it), keeping the token's
own gradient (GSPO-token: rho_it = sg(s_i) pi_it / sg(pi_it)); with
loss.aggregation=seq_mean_token_mean that is GSPO's objective exactly. DAPO's clip-higher
(arXiv:2503.14476) is hi > lo. With one update pass rho = 1 and every form gives the same
gradient, -A grad log pi per token, under every loss.aggregation, except GMPO with
token-level advantages (its A is the sequence mean) and Clip-Cov (it cuts tokens on-policy);
the forms differ only when an estimator takes several passes (trainer.epochs or
trainer.minibatches > 1)..
CISPO's value is -clip(rho) A (rho / sg(rho) = 1), not verl's and TRL's -clip(rho) A log pi:
the gradient is the same. GMPO's clip mask counts the tokens where the pessimistic clamp
binds; verl's geo_mean counts every clamped token.
GMPO clips log rho in [log(1 - lo), log(1 + hi)] (the paper's e^-0.4, e^0.4 is lo = 0.33,
hi = 0.49) and its per-sequence loss is repeated on each token, so seq_mean_token_mean
averages sequences as the paper does.

The forms added in 2026 are registered in FORMS: dppo_tv, dppo_kl and m2po (a mask on a
divergence in place of the clip, pgbench.rl.divergence_masks), topr, kimi and vespo
(REINFORCE-style weights, pgbench.rl.reinforce_forms), and

    luspo     GSPO's clipped sequence-ratio loss l_i times the length |o_i| on each token;
              with loss.aggregation=seq_mean_token_mean that is 1/N sum_i |o_i| l_i, TRL's
              `luspo`                                    Length-unbiased SPO, arXiv:2602.05261

LUSPO takes the sequence ratio whatever loss.ratio, VESPO and DPPO the token ratios. All but
LUSPO give the plain gradient at rho = 1; LUSPO weighs each sequence by its length there too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pgbench.rl import divergence_masks, reinforce_forms
from pgbench.rl.choices import PolicyForm, RatioLevel


@dataclass(frozen=True)
class Clip:
    """Clip range of rho: [1 - low, 1 + high]; 0 = that side unclipped. `dual` = c (0 = off)."""

    low: float = 0.0
    high: float = 0.0
    dual: float = 0.0


@dataclass(frozen=True)
class FormKnobs:
    """The settings of the forms that have them (defaults: TRL's SAPO and VESPO, verl's
    Clip/KL-Cov and DPPO, ROLL's Kimi, M2PO's paper); each is the `loss.` knob of its name."""

    sapo_tau_pos: float = 1.0
    sapo_tau_neg: float = 1.05
    cov_ratio: float = 0.0002  # share of the valid tokens Clip-Cov / KL-Cov act on (>= 1)
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0
    kl_cov_coef: float = 1.0
    dppo_ratio_cap: float = 20.0  # C of DPPO's truncated weight (verl's fallback; 0 = none)
    m2po_threshold: float = 0.04  # M2PO's tau (AReaL's example and the paper)
    kimi_tau: float = 0.1  # Kimi 1.5's tau (ROLL's default)
    vespo_k_pos: float = 2.0  # VESPO's Gamma shape for A >= 0 and A < 0 (TRL's defaults)
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0


def log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, level: RatioLevel) -> Tensor:
    """log rho [N, T]: per token, or GSPO's sequence value with each token's own gradient."""
    per_token = logprobs - old_logprobs
    if level == "token":
        return per_token
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)
    sequence = (per_token * mask).sum(dim=1, keepdim=True) / lengths
    return logprobs - logprobs.detach() + sequence.detach()


def _bounds(clip: Clip) -> tuple[float, float]:
    return (1 - clip.low if clip.low > 0 else 0.0), (1 + clip.high if clip.high > 0 else math.inf)


def _ppo_clip(ratio: Tensor, advantages: Tensor, clip: Clip) -> tuple[Tensor, Tensor]:
    low, high = _bounds(clip)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(low, high)
    loss = torch.maximum(unclipped, clipped)
    if clip.dual > 0:
        loss = torch.where(advantages < 0, torch.minimum(loss, -clip.dual * advantages), loss)
    return loss, clipped > unclipped


def _cispo(ratio: Tensor, advantages: Tensor, clip: Clip) -> tuple[Tensor, Tensor]:
    low, high = _bounds(clip)
    weight = ratio.detach().clamp(low, high)
    loss = -weight * advantages * ratio / ratio.detach()
    return loss, weight != ratio.detach()


def _gmpo(log_rho: Tensor, advantages: Tensor, mask: Tensor, clip: Clip) -> tuple[Tensor, Tensor]:
    low, high = _bounds(clip)
    sign = torch.sign(advantages)
    bounded = log_rho.clamp(math.log(low) if low > 0 else -math.inf, math.log(high))
    kept = sign * torch.minimum(sign * log_rho, sign * bounded)  # the pessimistic side binds
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)
    ratio = torch.exp((kept * mask).sum(dim=1, keepdim=True) / lengths)
    advantage = (advantages * mask).sum(dim=1, keepdim=True) / lengths
    return (-advantage * ratio).expand_as(log_rho), (kept != log_rho) & (sign != 0)


def _sapo(ratio: Tensor, advantages: Tensor, tau: tuple[float, float]) -> tuple[Tensor, Tensor]:
    # d/drho (4 / tau) sigmoid(tau (rho - 1)) = 4 s (1 - s) = 1 at rho = 1: the plain gradient
    temperature = torch.where(advantages > 0, tau[0], tau[1])
    gate = torch.sigmoid(temperature * (ratio - 1)) * 4 / temperature
    return -advantages * gate, torch.zeros_like(ratio, dtype=torch.bool)


def _covariance(logprobs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """(A - mean A)(log pi - mean log pi) per token [N, T], means over the valid tokens."""
    valid = mask > 0
    centred_a = advantages - advantages[valid].mean()
    centred_logp = logprobs.detach() - logprobs.detach()[valid].mean()
    return (centred_a * centred_logp).detach()


def _count(knobs: FormKnobs, mask: Tensor) -> int:
    return max(1, int(knobs.cov_ratio * int((mask > 0).sum())))


def _clip_cov(
    rho: Tensor, logprobs: Tensor, advantages: Tensor, mask: Tensor, clip: Clip, knobs: FormKnobs
) -> tuple[Tensor, Tensor]:
    loss, binds = _ppo_clip(rho, advantages, clip)
    cov = _covariance(logprobs, advantages, mask)
    eligible = (cov > knobs.clip_cov_lb) & (cov < knobs.clip_cov_ub) & (mask > 0) & ~binds
    candidates = eligible.flatten().nonzero().flatten()
    order = torch.randperm(len(candidates), device=candidates.device)  # the run's seeded RNG
    cut = torch.zeros_like(eligible).flatten()
    cut[candidates[order[: _count(knobs, mask)]]] = True
    cut = cut.view_as(eligible)
    return torch.where(cut, torch.zeros_like(loss), loss), binds | cut


def _kl_cov(
    rho: Tensor,
    log_rho: Tensor,
    logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    knobs: FormKnobs,
) -> tuple[Tensor, Tensor]:
    loss = -advantages * rho
    cov = _covariance(logprobs, advantages, mask).masked_fill(mask <= 0, -math.inf)
    top = cov.flatten().topk(min(_count(knobs, mask), int((mask > 0).sum()))).indices
    chosen = torch.zeros_like(mask, dtype=torch.bool)
    chosen.view(-1)[top] = True
    penalty = knobs.kl_cov_coef * log_rho.abs()
    return torch.where(chosen, loss + penalty, loss), torch.zeros_like(chosen)


@dataclass(frozen=True)
class FormInputs:
    """What a registered form reads: the arguments of `policy_loss`."""

    logprobs: Tensor  # [N, T] log pi, with gradient
    old: Tensor  # [N, T] log pi_old (or log mu: rollout.staleness with no correction)
    advantages: Tensor  # [N, T]
    mask: Tensor  # [N, T]
    clip: Clip
    ratio: RatioLevel
    knobs: FormKnobs

    def log_rho(self, level: RatioLevel | None = None) -> Tensor:
        """log rho at `level` (default: loss.ratio's)."""
        return log_ratio(self.logprobs, self.old, self.mask, level or self.ratio)


FormFn = Callable[[FormInputs], tuple[Tensor, Tensor]]
FORMS: dict[str, FormFn] = {}  # the forms added in 2026, by loss.policy name


def register(name: str) -> Callable[[FormFn], FormFn]:
    """Add a form to FORMS under `name` (refused twice)."""

    def add(fn: FormFn) -> FormFn:
        if name in FORMS:
            raise ValueError(f"policy-loss form {name!r} is registered twice")
        FORMS[name] = fn
        return fn

    return add


@register("dppo_tv")
def _dppo_tv(x: FormInputs) -> tuple[Tensor, Tensor]:
    return _dppo(x, "tv")


@register("dppo_kl")
def _dppo_kl(x: FormInputs) -> tuple[Tensor, Tensor]:
    return _dppo(x, "kl")


def _dppo(x: FormInputs, divergence: str) -> tuple[Tensor, Tensor]:
    bounds, cap = (x.clip.low, x.clip.high), x.knobs.dppo_ratio_cap
    log_rho = x.log_rho("token")  # DPPO is per token (verl, prime-rl)
    return divergence_masks.dppo(log_rho, x.logprobs, x.old, x.advantages, bounds, cap, divergence)


@register("m2po")
def _m2po(x: FormInputs) -> tuple[Tensor, Tensor]:
    return divergence_masks.m2po(x.log_rho(), x.advantages, x.mask, x.knobs.m2po_threshold)


@register("topr")
def _topr(x: FormInputs) -> tuple[Tensor, Tensor]:
    return reinforce_forms.topr(x.log_rho(), x.advantages)


@register("kimi")
def _kimi(x: FormInputs) -> tuple[Tensor, Tensor]:
    return reinforce_forms.kimi(x.log_rho(), x.advantages, x.knobs.kimi_tau)


@register("vespo")
def _vespo(x: FormInputs) -> tuple[Tensor, Tensor]:
    k = x.knobs
    shape = (k.vespo_k_pos, k.vespo_lambda_pos, k.vespo_k_neg, k.vespo_lambda_neg)
    # W_i is built from the token ratios, whatever loss.ratio
    return reinforce_forms.vespo(x.log_rho("token"), x.advantages, x.mask, shape)


@register("luspo")
def _luspo(x: FormInputs) -> tuple[Tensor, Tensor]:
    loss, binds = _ppo_clip(torch.exp(x.log_rho("sequence")), x.advantages, x.clip)
    return loss * x.mask.sum(dim=1, keepdim=True), binds


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip: Clip = Clip(),
    form: PolicyForm = "ppo_clip",
    ratio: RatioLevel = "token",
    knobs: FormKnobs = FormKnobs(),
) -> tuple[Tensor, Tensor]:
    """Per-token policy loss [N, T] and where the clip binds [N, T] (bool): the tokens whose
    gradient the clip changes, as verl's pg_clipfrac and TRL's clip_ratio count them (SAPO and
    KL-Cov have no hard clip: none; Clip-Cov adds the tokens it cuts; the 2026 forms, see
    FORMS, count the tokens their mask drops or their truncation lowers)."""
    if form in FORMS:
        return FORMS[form](FormInputs(logprobs, old_logprobs, advantages, mask, clip, ratio, knobs))
    log_rho = log_ratio(logprobs, old_logprobs, mask, ratio)
    if form == "gmpo":
        return _gmpo(log_rho, advantages, mask, clip)
    rho = torch.exp(log_rho)
    if form == "cispo":
        return _cispo(rho, advantages, clip)
    if form == "sapo":
        return _sapo(rho, advantages, (knobs.sapo_tau_pos, knobs.sapo_tau_neg))
    if form == "clip_cov":
        return _clip_cov(rho, logprobs, advantages, mask, clip, knobs)
    if form == "kl_cov":
        return _kl_cov(rho, log_rho, logprobs, advantages, mask, knobs)
    return _ppo_clip(rho, advantages, clip)
