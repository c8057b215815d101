import math

import pytest
import torch

from pgbench.losses import aggregate, kl_per_token, policy_loss, shape_rewards


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
    assert kl_per_token(ref, ref, "k3").abs().max() == 0


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


@pytest.mark.parametrize("how", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_aggregation_over_micro_batches_equals_whole_batch(how):
    whole = aggregate(VALUES, MASK, how, 2, 3, 5)
    parts = sum(aggregate(VALUES[i : i + 1], MASK[i : i + 1], how, 2, 3, 5) for i in range(2))
    assert parts.item() == pytest.approx(whole.item())


def test_policy_loss_with_ratio_one_is_score_function_gradient():
    logits = torch.tensor([[0.3, -1.2, 2.0]], requires_grad=True)
    logprobs = logits.log_softmax(-1)[:, :2]  # [1, 2] "tokens"
    advantage = torch.tensor([1.5])
    policy_loss(logprobs, logprobs.detach(), advantage).sum().backward()
    expected = torch.autograd.grad(-(1.5 * logits.log_softmax(-1)[:, :2]).sum(), logits)[0]
    torch.testing.assert_close(logits.grad, expected)


def test_shape_rewards_folds_the_kl_penalty_in_once_for_both_views():
    # P=1, K=2; row 0: policy, tool result, policy; row 1: one policy token, padding
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    penalty = torch.tensor([[0.1, 0.5, 0.2], [0.3, 0.0, 0.0]])  # 0.5 sits on a tool token
    sequence, tokens = shape_rewards(torch.tensor([[1.0, 0.0]]), penalty, mask)
    torch.testing.assert_close(sequence, torch.tensor([[1.0 - 0.3, 0.0 - 0.3]]))
    torch.testing.assert_close(tokens, torch.tensor([[-0.1, 0.0, 1.0 - 0.2], [-0.3, 0.0, 0.0]]))
