"""TOPR, Kimi 1.5 and VESPO (pgbench.rl.reinforce_forms), through policy_loss, by hand."""

import math

import torch

from pgbench.rl.policy_losses import Clip, FormKnobs, policy_loss

DEFAULTS = FormKnobs()


def _run(form, log_rho, advantages, mask=None, knobs=DEFAULTS):
    logprobs = torch.tensor(log_rho, requires_grad=True)
    mask = torch.ones_like(logprobs) if mask is None else mask
    old = torch.zeros_like(logprobs)
    loss, binds = policy_loss(logprobs, old, advantages, mask, Clip(0.2, 0.2), form, knobs=knobs)
    loss.sum().backward()
    return loss.detach(), logprobs.grad, binds


def test_topr_is_sft_on_positive_advantages_and_truncated_is_on_negative_ones():
    # log rho = [0.5, 0.5, -0.5], A = [1, -1, -1]
    #   token 0, A > 0: weight 1 (no ratio): loss -1, gradient -1
    #   token 1, A < 0, rho = 1.6487: weight clip(rho, 0, 1) = 1: loss 1, gradient 1 (truncated)
    #   token 2, A < 0, rho = 0.6065: weight 0.6065: loss and gradient 0.6065
    loss, grad, binds = _run("topr", [[0.5, 0.5, -0.5]], torch.tensor([[1.0, -1.0, -1.0]]))
    expected = torch.tensor([[-1.0, 1.0, math.exp(-0.5)]])
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected)
    assert binds.tolist() == [[False, True, False]]


def test_kimi_adds_half_tau_squared_log_ratio_to_the_plain_gradient():
    # log rho = [0.2, -0.4], A = [1, -1], tau = 0.5
    #   loss = -A + tau/2 (log rho)^2 = [-1 + 0.01, 1 + 0.04] = [-0.99, 1.04]
    #   gradient = -A + tau log rho = [-1 + 0.1, 1 - 0.2] = [-0.9, 0.8]
    loss, grad, binds = _run(
        "kimi", [[0.2, -0.4]], torch.tensor([[1.0, -1.0]]), knobs=FormKnobs(kimi_tau=0.5)
    )
    torch.testing.assert_close(loss, torch.tensor([[-0.99, 1.04]]))
    torch.testing.assert_close(grad, torch.tensor([[-0.9, 0.8]]))
    assert not binds.any()


def test_vespo_weighs_each_sequence_by_a_gamma_shape_of_its_ratio():
    # row 0: log rho [0.1, 0.2], sum 0.3, W = e^0.3 = 1.34986, A = 1 (k 2, lambda 3):
    #   phi = exp(3 + 2 * 0.3 - 3 * 1.34986) = exp(-0.44958) = 0.63790
    # row 1: log rho [-0.2, (padding 9.0)], W = e^-0.2 = 0.81873, A = -1 (k 3, lambda 2):
    #   phi = exp(2 + 3 * (-0.2) - 2 * 0.81873) = exp(-0.23746) = 0.78863
    # loss and gradient per token: -phi A
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    advantages = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    loss, grad, binds = _run("vespo", [[0.1, 0.2], [-0.2, 9.0]], advantages, mask)
    phi_0 = math.exp(3 + 2 * 0.3 - 3 * math.exp(0.3))
    phi_1 = math.exp(2 + 3 * -0.2 - 2 * math.exp(-0.2))
    expected = torch.tensor([[-phi_0, -phi_0], [phi_1, phi_1]])
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(loss[:, 0], torch.tensor([-0.63790, 0.78863]), atol=1e-5, rtol=0)
    assert not binds.any()


def test_vespo_weight_is_one_at_ratio_one_and_finite_far_off():
    # phi(1) = e^lambda * 1 * e^-lambda = 1; W = e^20 (clamped): phi = exp(3 + 40 - 3 e^20) = 0
    loss, _, _ = _run("vespo", [[0.0, 0.0]], torch.ones(1, 2))
    torch.testing.assert_close(loss, torch.tensor([[-1.0, -1.0]]))
    loss, grad, _ = _run("vespo", [[30.0, 30.0]], torch.ones(1, 2))
    assert torch.equal(loss, torch.zeros(1, 2)) and torch.isfinite(grad).all()
