"""DPPO and M2PO (pgbench.rl.divergence_masks), through policy_loss, against hand computations."""

import math

import pytest
import torch

from pgbench.rl.divergence_masks import m2po_mask
from pgbench.rl.policy_losses import Clip, FormKnobs, policy_loss

LOG = math.log
# One sequence of four tokens, p_old = 0.5 each; p = [0.8, 0.6, 0.2, 0.4], A = [1, 1, -1, -2]
P_OLD = torch.full((1, 4), LOG(0.5))
P_NEW = [[LOG(0.8), LOG(0.6), LOG(0.2), LOG(0.4)]]
A = torch.tensor([[1.0, 1.0, -1.0, -2.0]])
ONES = torch.ones(1, 4)

DEFAULTS = FormKnobs()


def _run(form, p_new=P_NEW, advantages=A, knobs=DEFAULTS):
    logprobs = torch.tensor(p_new, requires_grad=True)
    loss, binds = policy_loss(logprobs, P_OLD, advantages, ONES, Clip(0.2, 0.2), form, knobs=knobs)
    loss.sum().backward()
    return loss.detach(), logprobs.grad, binds


def test_dppo_tv_masks_the_tokens_whose_probability_moved_too_far_the_advantages_way():
    # p - p_old = [+0.3, +0.1, -0.3, -0.1]; hi = lo = 0.2
    #   token 0: A > 0 and p rose by 0.3 > hi: masked (no gradient)
    #   token 1: rose by 0.1: kept, rho = 1.2, loss -A rho = -1.2, gradient -1.2
    #   token 2: A < 0 and p fell by 0.3 > lo: masked
    #   token 3: fell by 0.1: kept, rho = 0.8, loss 2 * 0.8 = 1.6, gradient 1.6
    loss, grad, binds = _run("dppo_tv")
    torch.testing.assert_close(loss, torch.tensor([[0.0, -1.2, 0.0, 1.6]]))
    torch.testing.assert_close(grad, torch.tensor([[0.0, -1.2, 0.0, 1.6]]))
    assert binds.tolist() == [[True, False, True, False]]


def test_dppo_truncates_the_stopped_weight_at_the_cap():
    # token 1: rho = 1.2 > C = 1.1: weight 1.1, gradient -1.1 (the token is kept, not masked)
    loss, grad, _ = _run("dppo_tv", knobs=FormKnobs(dppo_ratio_cap=1.1))
    torch.testing.assert_close(grad, torch.tensor([[0.0, -1.1, 0.0, 1.6]]))


def test_dppo_kl_masks_by_the_binary_kl_on_the_advantages_side_only():
    # binary KL(p_old || p) = p_old log(p_old / p) + (1 - p_old) log((1 - p_old) / (1 - p)):
    #   p = 0.8: 0.5 log(0.625) + 0.5 log(2.5) = 0.22314 > 0.2, A > 0 and p rose: masked
    #   p = 0.6: 0.5 log(0.8333) + 0.5 log(1.25) = 0.02041: kept, gradient -1.2
    #   p = 0.2: 0.22314 > 0.2, A < 0 and p fell: masked
    #   p = 0.4, A = -2: 0.02041: kept, gradient 1.6
    _, grad, binds = _run("dppo_kl")
    torch.testing.assert_close(grad, torch.tensor([[0.0, -1.2, 0.0, 1.6]]))
    assert binds.tolist() == [[True, False, True, False]]
    # with A > 0 on the token whose p fell to 0.2 (KL 0.22314), the move is against the
    # advantage: not masked; gradient -A rho = -0.4
    _, grad, binds = _run("dppo_kl", advantages=torch.tensor([[1.0, 1.0, 1.0, -2.0]]))
    torch.testing.assert_close(grad, torch.tensor([[0.0, -1.2, -0.4, 1.6]]))
    assert binds.tolist() == [[True, False, False, False]]


# Two sequences: log rho row 0 [0.3, -0.1], row 1 [0.0, 0.2, (padding 5.0)]
# (log rho)^2 over the valid tokens = [0.09, 0.01, 0.0, 0.04], mean 0.035
M2_LOG_RHO = torch.tensor([[0.3, -0.1, 0.0], [0.0, 0.2, 5.0]])
M2_MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])


@pytest.mark.parametrize(
    ("tau", "kept"),
    [
        (0.04, [[1, 1, 0], [1, 1, 0]]),  # mean 0.035 < 0.04: nothing dropped
        (0.03, [[0, 1, 0], [1, 1, 0]]),  # drop 0.09: mean (0.01 + 0 + 0.04) / 3 = 0.0167
        (0.01, [[0, 1, 0], [1, 0, 0]]),  # then drop 0.04: mean (0.01 + 0) / 2 = 0.005
        (1e-9, [[0, 0, 0], [1, 0, 0]]),  # only the 0.0 left: mean 0 < 1e-9
    ],
)
def test_m2po_drops_the_largest_second_moments_until_the_mean_is_below_tau(tau, kept):
    mask = m2po_mask(M2_LOG_RHO, M2_MASK, tau)
    assert mask.int().tolist() == kept


def test_m2po_loss_is_the_unclipped_ratio_on_the_kept_tokens():
    # tau = 0.03 drops token (0, 0); the rest: -A rho with A = 1: -e^-0.1, -1, -e^0.2
    logprobs = M2_LOG_RHO.clone().requires_grad_(True)
    knobs = FormKnobs(m2po_threshold=0.03)
    loss, binds = policy_loss(
        logprobs, torch.zeros(2, 3), torch.ones(2, 3), M2_MASK, Clip(0.2, 0.2), "m2po", knobs=knobs
    )
    expected = torch.tensor([[0.0, -math.exp(-0.1), 0.0], [-1.0, -math.exp(0.2), 0.0]])
    torch.testing.assert_close(loss, expected)
    loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, expected)  # d(-rho)/d log pi = -rho
    assert binds.tolist() == [[True, False, False], [False, False, False]]
