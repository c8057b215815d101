"""The 2026 forms and knobs against verl's and TRL's definitions, on random tensors.

Each `_verl_*` / `_trl_*` helper restates, in a few plain lines written for this test, the
definition read in that library (verl `trainer/ppo/core_algos.py` compute_policy_loss_dppo_tv /
_kl and kl_penalty, `trainer/ppo/rollout_corr_helper.py` compute_rollout_rejection_mask;
TRL@f2cd577 `trainer/grpo_trainer.py` _compute_loss, get_high_entropy_mask,
get_off_policy_mask, get_gamma_weights and the vLLM `token_mask` weight). Where a library
logs another value for the same gradient (-w A log pi against pgbench's -w A rho / sg(rho)),
the gradients are compared.
"""

import math

import pytest
import torch

from pgbench.rl.correction import correct, off_policy_mask
from pgbench.rl.losses import aggregate, high_entropy_mask, importance_corrected_kl, kl_per_token
from pgbench.rl.policy_losses import Clip, FormKnobs, policy_loss

N, T = 6, 5


def _batch(seed: int, spread: float = 0.4):
    """Random log-probs of sampled tokens (p in (0.02, 0.98)), old ones nearby, advantages and
    a right-padded mask."""
    gen = torch.Generator().manual_seed(seed)
    p = 0.02 + 0.96 * torch.rand(N, T, generator=gen)
    old = (p.log() + spread * torch.randn(N, T, generator=gen)).clamp(max=-0.01)
    advantages = torch.randn(N, 1, generator=gen).expand(N, T).clone()
    lengths = torch.randint(1, T + 1, (N,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    return p.log(), old, advantages, mask


def _near(logprobs, seed: int, spread: float = 0.3):
    """Other log-probs of the same tokens, `spread` away in log space on average."""
    gen = torch.Generator().manual_seed(seed)
    return logprobs + spread * torch.randn(logprobs.shape, generator=gen)


def _grad(fn, logprobs):
    leaf = logprobs.clone().requires_grad_(True)
    fn(leaf).backward()
    return leaf.grad


# --- verl ---------------------------------------------------------------------------------


def _verl_dppo(old, logp, adv, mask, low, high, cap, kind):
    """verl's DPPO-Binary-TV / -KL per-token loss (token-mean) and pg_clipfrac mask."""
    ratio = torch.exp((logp - old).clamp(-20.0, 20.0))
    truncated = ratio.clamp(max=cap).detach()
    prob, old_prob = logp.exp(), old.exp()
    if kind == "tv":
        rising_ok, falling_ok = prob - old_prob <= high, prob - old_prob >= -low
    else:
        binary_kl = old_prob * (old - logp) + (1 - old_prob) * torch.log(
            (1.0 - old_prob + 1e-8) / (1.0 - prob + 1e-8)
        )
        rising_ok = (binary_kl <= high) | (prob <= old_prob)
        falling_ok = (binary_kl <= low) | (prob >= old_prob)
    valid = torch.where(adv > 0, rising_ok, falling_ok).detach().float()
    loss = -adv * truncated * logp * valid
    return (loss * mask).sum() / mask.sum(), valid


@pytest.mark.parametrize("kind", ["tv", "kl"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dppo_matches_verls_gradient_and_mask(kind, seed):
    logp, old, adv, mask = _batch(seed)
    low, high, cap = 0.15, 0.1, 1.5
    knobs = FormKnobs(dppo_ratio_cap=cap)

    def ours(x):
        loss, _ = policy_loss(x, old, adv, mask, Clip(low, high), f"dppo_{kind}", knobs=knobs)
        return aggregate(loss, mask, "token_mean", N, int(mask.sum()), T)

    theirs_grad = _grad(lambda x: _verl_dppo(old, x, adv, mask, low, high, cap, kind)[0], logp)
    torch.testing.assert_close(_grad(ours, logp), theirs_grad)
    _, valid = _verl_dppo(old, logp, adv, mask, low, high, cap, kind)
    _, binds = policy_loss(logp, old, adv, mask, Clip(low, high), f"dppo_{kind}", knobs=knobs)
    assert torch.equal(binds, (valid == 0) & (adv != 0))
    assert 0 < int((binds * mask).sum()) < int(mask.sum())  # the mask acts on some tokens


def _verl_rejection(log_ratio, mask, option, lower, upper):
    """verl's compute_rollout_rejection_mask for one option; log_ratio = log pi_old - log mu."""
    safe = log_ratio.clamp(-20.0, 20.0)
    k1, k3 = -safe, torch.exp(safe) - 1.0 - safe
    if option == "token_k1":
        keep = (k1 >= math.log(lower)) & (k1 <= math.log(upper))
    elif option == "seq_sum_k1":
        total = (k1 * mask).sum(-1)
        keep = ((total >= math.log(lower)) & (total <= math.log(upper)))[:, None].expand_as(mask)
    else:  # seq_mean_k3: upper is the KL bound
        mean = (k3 * mask).sum(-1) / mask.sum(-1)
        keep = (mean <= upper)[:, None].expand_as(mask)
    return mask * keep.float()


@pytest.mark.parametrize(
    ("option", "lower", "upper"),
    [("token_k1", 0.6, 1.5), ("seq_sum_k1", 0.5, 3.0), ("seq_mean_k3", None, 0.05)],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_kl_rejection_matches_verls_rollout_rs(option, lower, upper, seed):
    _, old, _, mask = _batch(seed)
    behaviour = _near(old, seed + 10)
    if option == "seq_mean_k3":
        _, kept = correct(old, behaviour, mask, f"reject_{option}", kl_max=upper)
    else:
        _, kept = correct(old, behaviour, mask, f"reject_{option}", high=upper, low=lower)
    expected = _verl_rejection(old - behaviour, mask, option, lower, upper)
    assert torch.equal(kept, expected)
    assert 0 < int(kept.sum()) < int(mask.sum())  # some rejected, some kept


def _verl_kl_penalty(logp, ref, name):
    """verl's kl_penalty: the k1 or k3 value (k3 clamped as verl does), k2's gradient for '+'."""
    if name.startswith("k1"):
        forward = logp - ref
    else:
        kl = (ref - logp).clamp(-20, 20)
        forward = (torch.exp(kl) - kl - 1).clamp(-10, 10)
    backward = 0.5 * (logp - ref).square()
    return backward - backward.detach() + forward.detach()


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_straight_through_kl_matches_verls_k_plus(name):
    logp, ref, _, _ = _batch(3)
    ours = kl_per_token(logp, ref, f"{name}_plus")
    torch.testing.assert_close(ours, _verl_kl_penalty(logp, ref, name))
    weights = torch.rand(N, T, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(
        _grad(lambda x: (kl_per_token(x, ref, f"{name}_plus") * weights).sum(), logp),
        _grad(lambda x: (_verl_kl_penalty(x, ref, name) * weights).sum(), logp),
    )


# --- TRL ----------------------------------------------------------------------------------


def _trl_luspo(logp, old, adv, mask, low, high):
    """TRL's luspo with importance_sampling_level="sequence": -min(s A, clip(s) A) per
    sequence, times its length, averaged over sequences."""
    log_s = ((logp - old) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    coef_1 = torch.exp(log_s)[:, None]
    coef_2 = coef_1.clamp(1 - low, 1 + high)
    per_sequence = -torch.min(coef_1 * adv[:, :1], coef_2 * adv[:, :1])
    return (per_sequence * mask.sum(1, keepdim=True)).mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_luspo_matches_trl_with_seq_mean_token_mean(seed):
    logp, old, adv, mask = _batch(seed, spread=0.1)

    def ours(x):
        loss, _ = policy_loss(x, old, adv, mask, Clip(0.02, 0.03), "luspo")
        return aggregate(loss, mask, "seq_mean_token_mean", N, int(mask.sum()), T)

    torch.testing.assert_close(ours(logp), _trl_luspo(logp, old, adv, mask, 0.02, 0.03))
    theirs = _grad(lambda x: _trl_luspo(x, old, adv, mask, 0.02, 0.03), logp)
    torch.testing.assert_close(_grad(ours, logp), theirs)
    assert (theirs != 0).any() and (theirs * mask == 0).any()  # some sequences clipped


def _trl_vespo(logp, old, adv, mask, shape):
    """TRL's vespo: -phi(W) A log pi, phi(W) = exp(lambda + k log W - lambda W), W the
    sequence's product of token ratios, summed over tokens / the token count."""
    k_pos, lam_pos, k_neg, lam_neg = shape
    floor = math.log(1e-8)
    with torch.no_grad():
        log_w = (((logp - old).clamp(-20.0, 20.0)) * mask).sum(-1, keepdim=True)
        log_w = log_w.clamp(floor, 20.0)
        positive = adv[:, :1] >= 0
        k = torch.where(positive, k_pos, k_neg)
        lam = torch.where(positive, lam_pos, lam_neg).clamp(min=1e-4)
        phi = torch.exp(lam + k * log_w - lam * log_w.exp()).nan_to_num(0.0, 0.0, 0.0)
    return (-phi * adv * logp * mask).sum() / mask.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vespo_matches_trls_gradient(seed):
    logp, old, adv, mask = _batch(seed, spread=0.2)
    knobs = FormKnobs(vespo_k_pos=2.0, vespo_lambda_pos=3.0, vespo_k_neg=1.5, vespo_lambda_neg=2.5)
    shape = (2.0, 3.0, 1.5, 2.5)

    def ours(x):
        loss, _ = policy_loss(x, old, adv, mask, form="vespo", knobs=knobs)
        return aggregate(loss, mask, "token_mean", N, int(mask.sum()), T)

    theirs = _grad(lambda x: _trl_vespo(x, old, adv, mask, shape), logp)
    torch.testing.assert_close(_grad(ours, logp), theirs)


def _trl_entropy_mask(entropies, mask, top_quantile):
    """TRL's get_high_entropy_mask(entropies, mask, 1 - top_entropy_quantile), one process."""
    threshold = torch.quantile(entropies[mask.bool()].float(), 1 - top_quantile)
    return ((entropies * mask) >= threshold) & mask.bool()


@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.9])
def test_high_entropy_mask_matches_trl(quantile):
    _, _, _, mask = _batch(5)
    entropies = 3 * torch.rand(N, T, generator=torch.Generator().manual_seed(6))
    ours = high_entropy_mask(entropies, mask, quantile)
    assert torch.equal(ours.bool(), _trl_entropy_mask(entropies, mask, quantile))


def _trl_off_policy_mask(adv, logp, sampling, mask, threshold):
    """TRL's get_off_policy_mask: keep where A >= 0 or mean(log mu - log pi) <= threshold."""
    mean = ((sampling - logp) * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)
    return ((adv >= 0) | (mean <= threshold)).float()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_off_policy_mask_matches_trl(seed):
    logp, _, adv, mask = _batch(seed)
    sampling = _near(logp, seed + 10)
    ours = off_policy_mask(logp, sampling, adv, mask, 0.0)
    theirs = _trl_off_policy_mask(adv[:, :1], logp, sampling, mask, 0.0)  # [N, 1]
    assert torch.equal(ours, theirs.expand_as(mask))
    assert (ours == 0).any() and (ours == 1).any()  # drops some sequences, keeps others


def _trl_bias_corrected_kl(logp, ref, old):
    """TRL's per-token k3 with use_bias_correction_kl (token-level ratio, with its gradient)."""
    kl = torch.exp(ref - logp) - (ref - logp) - 1
    return kl * torch.exp(logp - old)


def test_importance_corrected_kl_matches_trls_bias_correction():
    logp, old, _, _ = _batch(7, spread=0.2)
    ref, _, _, _ = _batch(8)

    def ours(x):
        return importance_corrected_kl(kl_per_token(x, ref, "k3"), x, old)

    torch.testing.assert_close(ours(logp), _trl_bias_corrected_kl(logp, ref, old))
    torch.testing.assert_close(
        _grad(lambda x: ours(x).sum(), logp),
        _grad(lambda x: _trl_bias_corrected_kl(x, ref, old).sum(), logp),
    )


def _trl_token_mask_weight(old, sampling, mask, low, high):
    """TRL's vLLM importance weight, vllm_importance_sampling_mode="token_mask"."""
    ratio = torch.exp((old - sampling) * mask)
    return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)


def test_icepop_matches_trls_token_mask_weight():
    _, old, _, mask = _batch(9)
    sampling = _near(old, 10, spread=0.6)
    weight, kept = correct(old, sampling, mask, "icepop", high=3.0, low=0.4)
    expected = _trl_token_mask_weight(old, sampling, mask, 0.4, 3.0)
    torch.testing.assert_close(weight * mask, expected * mask)
    assert torch.equal(kept, mask) and ((expected == 0) & (mask > 0)).any()
