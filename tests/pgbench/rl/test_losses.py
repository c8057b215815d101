import math

import pytest
import torch

from pgbench.rl.losses import (
    aggregate,
    high_entropy_mask,
    importance_corrected_kl,
    kl_per_token,
    overlong_penalty,
    prompt_groups,
    shape_rewards,
    whiten,
)


def test_kl_estimators_hand_computed():
    logp = torch.tensor([[math.log(0.5), math.log(0.2)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.4)]])
    # k1 = log p - log q = [log 2, log 0.5]
    torch.testing.assert_close(
        kl_per_token(logp, ref, "k1"), torch.tensor([[math.log(2), math.log(0.5)]])
    )
    # k3 = q/p - 1 - log(q/p): q/p = [0.5, 2] -> [0.5 - 1 + log 2, 2 - 1 - log 2]
    expected = torch.tensor([[-0.5 + math.log(2), 1 - math.log(2)]])
    torch.testing.assert_close(kl_per_token(logp, ref, "k3"), expected)
    # k2 = (log p/q)^2 / 2 = [(log 2)^2 / 2, (log 0.5)^2 / 2]
    expected = torch.tensor([[math.log(2) ** 2 / 2, math.log(0.5) ** 2 / 2]])
    torch.testing.assert_close(kl_per_token(logp, ref, "k2"), expected)
    assert kl_per_token(ref, ref, "k3").abs().max() == 0


def test_k3_plus_has_k3s_value_and_k2s_gradient():
    # log p/q = log 2 and log 0.5: k3's value (above), and the gradient of k2 = (log p/q)^2 / 2
    # with respect to log p, which is log p/q = [log 2, -log 2]
    logp = torch.tensor([[math.log(0.5), math.log(0.2)]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25), math.log(0.4)]])
    value = kl_per_token(logp, ref, "k3_plus")
    torch.testing.assert_close(
        value.detach(), torch.tensor([[-0.5 + math.log(2), 1 - math.log(2)]])
    )
    value.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[math.log(2), -math.log(2)]]))


def test_k1_plus_has_k1s_value_and_k2s_gradient():
    # value log p/q = [log 2, log 0.5]; gradient of k2 = (log p/q)^2 / 2: log p/q again
    logp = torch.tensor([[math.log(0.5), math.log(0.2)]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25), math.log(0.4)]])
    value = kl_per_token(logp, ref, "k1_plus")
    torch.testing.assert_close(value.detach(), torch.tensor([[math.log(2), -math.log(2)]]))
    value.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[math.log(2), -math.log(2)]]))
    # k1's own gradient would be 1 per token
    logp.grad = None
    kl_per_token(logp, ref, "k1").sum().backward()
    assert logp.grad.tolist() == [[1.0, 1.0]]


def test_importance_corrected_kl_keeps_k3s_value_and_adds_the_score_term():
    # on-policy (old = log p): p = 0.5, q = 0.25; k3 = q/p - 1 - log(q/p) = -0.5 + log 2
    # gradient in log p: dk3 = 1 - q/p = 0.5, plus k3 * d rho = k3: 0.5 - 0.5 + log 2 = log 2
    logp = torch.tensor([[math.log(0.5)]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25)]])
    kl = importance_corrected_kl(kl_per_token(logp, ref, "k3"), logp, logp.detach())
    torch.testing.assert_close(kl.detach(), torch.tensor([[-0.5 + math.log(2)]]))
    kl.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[math.log(2)]]))
    # off-policy, rho = e^0.1: the value is rho k3
    kl = importance_corrected_kl(torch.tensor([[0.2]]), torch.tensor([[0.1]]), torch.zeros(1, 1))
    torch.testing.assert_close(kl, torch.tensor([[0.2 * math.exp(0.1)]]))


ENTROPY = torch.tensor([[0.1, 0.5, 0.9], [0.3, 5.0, 5.0]])
ENTROPY_MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    ("quantile", "kept"),
    [
        # valid entropies sorted [0.1, 0.3, 0.5, 0.9]; the (1 - quantile) quantile, linear:
        (0.5, [[0, 1, 1], [0, 0, 0]]),  # median 0.4: 0.5 and 0.9 (the padded 5.0s never)
        (0.25, [[0, 0, 1], [0, 0, 0]]),  # 0.75 quantile: 0.5 + 0.25 * 0.4 = 0.6: only 0.9
        (1.0, [[1, 1, 1], [1, 0, 0]]),  # every valid token
    ],
)
def test_high_entropy_mask_keeps_the_top_quantile_of_valid_tokens(quantile, kept):
    mask = high_entropy_mask(ENTROPY, ENTROPY_MASK, quantile)
    assert mask.int().tolist() == kept


# Two sequences: lengths 2 and 1 (third slot masked), values x = [[1, 3, 99], [4, 99, 99]]
VALUES = torch.tensor([[1.0, 3.0, 99.0], [4.0, 99.0, 99.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("token_mean", (1 + 3 + 4) / 3),  # all tokens weigh the same
        ("seq_mean_token_mean", ((1 + 3) / 2 + 4 / 1) / 2),  # each sequence weighs the same
        ("seq_mean_token_sum_norm", (1 + 3 + 4) / (2 * 5)),  # constant normaliser N * max_new=5
    ],
)
def test_aggregation_hand_computed(how, expected):
    value = aggregate(VALUES, MASK, how, batch_sequences=2, batch_tokens=3, max_new_tokens=5)
    assert value.item() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("group_tokens", "prompts", "expected"),
    [
        ([3.0, 3.0], 1, (1 + 3 + 4) / 3),  # one prompt: its 3 tokens weigh the same
        ([2.0, 1.0], 2, ((1 + 3) / 2 + 4 / 1) / 2),  # two prompts of one sample each
    ],
)
def test_prompt_mean_weighs_each_prompt_the_same(group_tokens, prompts, expected):
    value = aggregate(
        VALUES,
        MASK,
        "prompt_mean",
        batch_sequences=2,
        batch_tokens=3,
        max_new_tokens=5,
        batch_prompts=prompts,
        group_tokens=torch.tensor(group_tokens),
    )
    assert value.item() == pytest.approx(expected)


@pytest.mark.parametrize("how", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_aggregation_over_micro_batches_equals_whole_batch(how):
    whole = aggregate(VALUES, MASK, how, 2, 3, 5)
    parts = sum(aggregate(VALUES[i : i + 1], MASK[i : i + 1], how, 2, 3, 5) for i in range(2))
    assert parts.item() == pytest.approx(whole.item())


def test_shape_rewards_folds_the_kl_penalty_in_once_for_both_views():
    # P=1, K=2; row 0: policy, tool result, policy; row 1: one policy token, padding
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    penalty = torch.tensor([[0.1, 0.5, 0.2], [0.3, 0.0, 0.0]])  # 0.5 sits on a tool token
    sequence, tokens = shape_rewards(torch.tensor([[1.0, 0.0]]), penalty, mask)
    torch.testing.assert_close(sequence, torch.tensor([[1.0 - 0.3, 0.0 - 0.3]]))
    torch.testing.assert_close(tokens, torch.tensor([[-0.1, 0.0, 1.0 - 0.2], [-0.3, 0.0, 0.0]]))


def test_k2_in_the_loss_has_the_gradient_of_the_kl():
    # KL(p || q) over 3 outcomes; its exact gradient vs E_p[grad k2] summed exactly over outcomes
    logits = torch.tensor([0.2, -0.4, 1.0], requires_grad=True)
    ref = torch.tensor([0.5, 0.3, 0.2]).log()
    logp = logits.log_softmax(-1)
    exact = torch.autograd.grad((logp.exp() * (logp - ref)).sum(), logits)[0]
    p = logp.exp().detach()  # E_p[grad k2] = sum_x p(x) grad k2(x), p held fixed
    k2 = kl_per_token(logits.log_softmax(-1), ref, "k2")
    through_k2 = torch.autograd.grad((p * k2).sum(), logits)[0]
    torch.testing.assert_close(through_k2, exact)
    k1 = kl_per_token(logits.log_softmax(-1), ref, "k1")  # k1's expected gradient is zero
    through_k1 = torch.autograd.grad((p * k1).sum(), logits)[0]
    torch.testing.assert_close(through_k1, torch.zeros(3))


def test_whiten_keeps_rounding_noise_small_and_whitens_real_spread():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    same = torch.full((2, 3), 0.1) + torch.tensor([[0.0, 1e-8, 5.0], [0.0, 0.0, 1e-8]])
    assert whiten(same, mask).abs().max() < 1e-3  # 1 / (std + 1e-8) would give ~ +-1
    values = torch.tensor([[1.0, 2.0, 9.0], [3.0, 4.0, 5.0]])
    valid = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])  # mean 3, unbiased var 2.5
    expected = (valid - 3.0) / (2.5 + 1e-8) ** 0.5
    torch.testing.assert_close(whiten(values, mask)[mask.bool()], expected)
    assert whiten(values, mask)[0, 2] == 0


def test_overlong_penalty_is_dapos_linear_ramp():
    # max 32 tokens, buffer 8: free up to 24, then -(len - 24) / 8, -1 at 32
    lengths = torch.tensor([10.0, 24.0, 28.0, 32.0])
    out = overlong_penalty(lengths, max_new_tokens=32, buffer=8, factor=1.0)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, -0.5, -1.0]))
    assert overlong_penalty(lengths, 32, 0, 1.0).abs().sum() == 0


def test_prompt_groups_count_the_tokens_of_each_rows_prompt():
    # policy tokens per row 5, 5, 8, 7; K = 2: prompt 0 = rows 0-1 (10), prompt 1 = rows 2-3
    mask = torch.zeros(4, 8)
    for row, length in enumerate((5, 5, 8, 7)):
        mask[row, :length] = 1
    tokens, prompts = prompt_groups(mask, torch.arange(4), 2)
    assert tokens.tolist() == [10, 10, 15, 15] and prompts == 2
    tokens, prompts = prompt_groups(mask, torch.tensor([3, 0, 2]), 2)  # a minibatch
    assert tokens.tolist() == [15, 5, 15] and prompts == 2
