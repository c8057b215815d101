"""The shared policy-loss forms (pgbench.rl.policy_losses) against hand computations."""

import math
from dataclasses import fields
from typing import get_args

import pytest
import torch

from pgbench.config.sections import LossConfig
from pgbench.rl.choices import PolicyForm
from pgbench.rl.losses import aggregate
from pgbench.rl.policy_losses import FORMS, Clip, FormKnobs, log_ratio, policy_loss, register

ONE = torch.ones(1, 2)


ON_POLICY_FORMS = ["ppo_clip", "cispo", "gmpo", "sapo", "kl_cov"]
ON_POLICY_FORMS += ["dppo_tv", "dppo_kl", "m2po", "topr", "kimi", "vespo"]


@pytest.mark.parametrize("form", ON_POLICY_FORMS)
@pytest.mark.parametrize("ratio", ["token", "sequence"])
def test_at_ratio_one_every_form_is_the_plain_policy_gradient(form, ratio):
    # rho = 1 (one pass): -A grad log pi per token, for each form and ratio level
    logits = torch.tensor([[0.3, -1.2, 2.0, 0.1]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    advantages = torch.tensor([[1.5, 1.5, 1.5]])  # one sequence: one advantage
    logprobs = logits.log_softmax(-1)[:, :3]
    loss, binds = policy_loss(
        logprobs, logprobs.detach(), advantages, mask, Clip(0.2, 0.2), form, ratio
    )
    loss.sum().backward()
    got = logits.grad.clone()
    logits.grad = None
    (-(advantages * logits.log_softmax(-1)[:, :3])).sum().backward()
    torch.testing.assert_close(got, logits.grad)
    assert not binds.any()


def test_ppo_clip_hand_computed_with_clip_higher():
    # log rho = [0.5, -0.5] -> rho = [1.649, 0.607]; lo = 0.2, hi = 0.28
    # A = +1, rho 1.649 > 1.28: loss -1.28, clip binds, no gradient
    # A = -1, rho 0.607 < 0.8: loss max(0.607, 0.8) = 0.8, clip binds, no gradient
    logprobs = torch.tensor([[0.5, -0.5]], requires_grad=True)
    loss, binds = policy_loss(
        logprobs, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), ONE, Clip(0.2, 0.28)
    )
    torch.testing.assert_close(loss, torch.tensor([[-1.28, 0.8]]))
    assert binds.tolist() == [[True, True]]
    loss.sum().backward()
    assert torch.equal(logprobs.grad, torch.zeros(1, 2))


def test_clip_counts_only_where_it_binds():
    # A = +1 with rho 0.607 (below 1 - eps): the unclipped term is the min, gradient flows;
    # |rho - 1| > eps, yet the clip does not bind (verl's pg_clipfrac, TRL's clip_ratio agree)
    logprobs = torch.tensor([[-0.5, 0.5]], requires_grad=True)
    loss, binds = policy_loss(
        logprobs, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), ONE, Clip(0.2, 0.2)
    )
    assert binds.tolist() == [[False, False]]
    torch.testing.assert_close(loss, torch.tensor([[-math.exp(-0.5), math.exp(0.5)]]))


def test_dual_clip_bounds_the_loss_of_negative_advantages():
    # A = -1, rho = e^2 = 7.39: PPO-clip loss max(7.39, 1.2) = 7.39; dual clip c = 3 -> 3
    logprobs = torch.tensor([[2.0, 2.0]])
    advantages = torch.tensor([[-1.0, 1.0]])
    loss, _ = policy_loss(logprobs, torch.zeros(1, 2), advantages, ONE, Clip(0.2, 0.2, dual=3.0))
    torch.testing.assert_close(loss, torch.tensor([[3.0, -1.2]]))


def test_cispo_clips_the_weight_and_keeps_the_gradient():
    # rho = e^0.5 = 1.649, hi = 0.28: weight 1.28 (stopped), loss value -1.28 A, gradient
    # -1.28 A d log pi: not zero, unlike PPO-clip
    logprobs = torch.tensor([[0.5]], requires_grad=True)
    loss, binds = policy_loss(
        logprobs,
        torch.zeros(1, 1),
        torch.tensor([[2.0]]),
        torch.ones(1, 1),
        Clip(0.2, 0.28),
        "cispo",
    )
    torch.testing.assert_close(loss, torch.tensor([[-2.56]]))
    loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-2.56]]))
    assert binds.item()


def test_gmpo_is_the_geometric_mean_of_clipped_token_ratios():
    # one sequence, A = +1, log rho = [0.1, 0.9, padding]; clip hi = e^0.4 - 1 -> log bound 0.4
    # kept = [0.1, 0.4]; ratio = exp(0.25); loss -exp(0.25) on each token
    logprobs = torch.tensor([[0.1, 0.9, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    clip = Clip(1 - math.exp(-0.4), math.exp(0.4) - 1)
    loss, binds = policy_loss(logprobs, torch.zeros(1, 3), torch.ones(1, 3), mask, clip, "gmpo")
    torch.testing.assert_close(loss[0, :2], torch.full((2,), -math.exp(0.25)))
    assert binds[0, :2].tolist() == [False, True]


def test_sequence_ratio_is_gspos_length_normalised_ratio():
    # row 0: log rho [0.2, 0.4] -> s = exp(0.3) on both tokens; row 1: one token, log rho -0.1
    logprobs = torch.tensor([[0.2, 0.4], [-0.1, 5.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = log_ratio(logprobs, torch.zeros(2, 2), mask, "sequence")
    torch.testing.assert_close(out * mask, torch.tensor([[0.3, 0.3], [-0.1, 0.0]]))
    out[0, 0].backward()  # GSPO-token: each token keeps its own gradient
    assert logprobs.grad.tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_sapo_is_a_soft_gate_with_a_temperature_per_sign():
    # rho = e^0.5 = 1.6487 on both tokens; A = 2 (tau_pos 1), A = -1 (tau_neg 1.05)
    #   gate = (4 / tau) sigmoid(tau (rho - 1)): sigmoid(0.6487) = 0.65672 -> 2.62689;
    #   sigmoid(1.05 * 0.6487) = 0.66400 -> 2.52951; loss = -A gate = [-5.25378, 2.52951]
    #   d loss / d log pi = -A * 4 s (1 - s) * rho: -2 * 0.90175 * 1.6487 = -2.97348 and
    #   +1 * 4 * 0.66400 * 0.33600 * 1.6487 = +1.47135
    logprobs = torch.tensor([[0.5, 0.5]], requires_grad=True)
    loss, binds = policy_loss(
        logprobs, torch.zeros(1, 2), torch.tensor([[2.0, -1.0]]), ONE, form="sapo"
    )
    rho = math.exp(0.5)
    s_pos, s_neg = 1 / (1 + math.exp(-(rho - 1))), 1 / (1 + math.exp(-1.05 * (rho - 1)))
    expected = torch.tensor([[-2 * 4 * s_pos, 4 / 1.05 * s_neg]])
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(loss, torch.tensor([[-5.25378, 2.52951]]), atol=1e-4, rtol=0)
    loss.sum().backward()
    grad = torch.tensor([[-2 * 4 * s_pos * (1 - s_pos) * rho, 4 * s_neg * (1 - s_neg) * rho]])
    torch.testing.assert_close(logprobs.grad, grad)
    torch.testing.assert_close(
        logprobs.grad, torch.tensor([[-2.97348, 1.47135]]), atol=1e-4, rtol=0
    )
    assert not binds.any()


# Four tokens of one sequence: log pi = [-0.5, -1, -2, -0.2], log rho = [0, 0.2, 0.3, 0],
# A = [1, 2, -1, 0]. Covariance (A - 0.5)(log pi + 0.925) = [0.2125, -0.1125, 1.6125, -0.3625]
COV_LOGP = [[-0.5, -1.0, -2.0, -0.2]]
COV_OLD = torch.tensor([[-0.5, -1.2, -2.3, -0.2]])
COV_A = torch.tensor([[1.0, 2.0, -1.0, 0.0]])


def test_kl_cov_penalises_the_top_covariance_token():
    # 4 valid tokens x ratio 0.0002 -> at least 1 token: index 2 (cov 1.6125) gets + |log rho|
    #   loss = -A rho = [-1, -2 e^0.2, e^0.3, 0] = [-1, -2.44281, 1.34986, 0]; + 0.3 on token 2
    #   gradient of token 2: e^0.3 + 1 (|log rho| grows with log pi) = 2.34986
    logprobs = torch.tensor(COV_LOGP, requires_grad=True)
    loss, binds = policy_loss(logprobs, COV_OLD, COV_A, torch.ones(1, 4), form="kl_cov")
    torch.testing.assert_close(
        loss, torch.tensor([[-1.0, -2.44281, 1.64986, 0.0]]), atol=1e-5, rtol=0
    )
    loss.sum().backward()
    torch.testing.assert_close(
        logprobs.grad, torch.tensor([[-1.0, -2.44281, 2.34986, 0.0]]), atol=1e-5, rtol=0
    )
    assert not binds.any()


def test_clip_cov_cuts_the_gradient_of_a_token_in_the_covariance_band():
    # band (0.1, 1): only token 0 (cov 0.2125) is eligible; it is cut (loss 0, no gradient).
    # PPO-clip 0.2 elsewhere: token 1 (A 2, rho 1.2214 > 1.2) is clipped: -2.4, no gradient;
    # token 2 (A -1, rho 1.34986): max(1.34986, 1.2) keeps rho, gradient e^0.3
    logprobs = torch.tensor(COV_LOGP, requires_grad=True)
    knobs = FormKnobs(clip_cov_lb=0.1, clip_cov_ub=1.0)
    loss, binds = policy_loss(
        logprobs, COV_OLD, COV_A, torch.ones(1, 4), Clip(0.2, 0.2), "clip_cov", knobs=knobs
    )
    torch.testing.assert_close(loss, torch.tensor([[0.0, -2.4, 1.34986, 0.0]]), atol=1e-5, rtol=0)
    loss.sum().backward()
    torch.testing.assert_close(
        logprobs.grad, torch.tensor([[0.0, 0.0, 1.34986, 0.0]]), atol=1e-5, rtol=0
    )
    assert binds.tolist() == [[True, True, False, False]]


def test_every_policy_form_choice_is_dispatched_and_registration_refuses_duplicates():
    older = {"ppo_clip", "cispo", "gmpo", "sapo", "clip_cov", "kl_cov"}
    assert set(FORMS) | older == set(get_args(PolicyForm)) and not older & set(FORMS)
    with pytest.raises(ValueError, match="registered twice"):
        register("topr")(FORMS["topr"])


def test_luspo_is_gspo_scaled_by_length():
    # row 0: log rho [0.1, 0.3] -> s = e^0.2 = 1.2214 > 1.2, A = 1: clipped, -1.2 x length 2
    # row 1: log rho [-0.1, (padding)] -> s = e^-0.1 = 0.9048, A = 1: -0.9048 x length 1,
    #   gradient -s on its token (GSPO-token), none on row 0 (clipped)
    logprobs = torch.tensor([[0.1, 0.3], [-0.1, 4.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, binds = policy_loss(
        logprobs, torch.zeros(2, 2), torch.ones(2, 2), mask, Clip(0.2, 0.2), "luspo"
    )
    s = math.exp(-0.1)
    torch.testing.assert_close(loss * mask, torch.tensor([[-2.4, -2.4], [-s, 0.0]]))
    assert binds.tolist() == [[True, True], [False, False]]
    # with seq_mean_token_mean: 1/N sum_i |o_i| l_i = (2 * -1.2 + 1 * -s) / 2
    total = aggregate(loss, mask, "seq_mean_token_mean", 2, 3, 2)
    torch.testing.assert_close(total, torch.tensor((-2.4 - s) / 2))
    total.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, 0.0], [-s / 2, 0.0]]))


def test_luspo_on_policy_weighs_each_token_gradient_by_its_sequence_length():
    # rho = 1: gradient -A |o_i| grad log pi per token; lengths 2 and 1, A = [2, -1]
    logprobs = torch.zeros(2, 2, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    advantages = torch.tensor([[2.0, 2.0], [-1.0, -1.0]])
    loss, _ = policy_loss(logprobs, torch.zeros(2, 2), advantages, mask, Clip(0.2, 0.2), "luspo")
    (loss * mask).sum().backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-4.0, -4.0], [1.0, 0.0]]))


def test_every_form_knob_is_a_loss_knob_with_the_same_default():
    # the trainer builds FormKnobs from the loss.* knobs of the same names
    loss = LossConfig()
    for field in fields(FormKnobs):
        assert getattr(loss, field.name) == field.default, field.name
