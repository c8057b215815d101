"""Rollout correction weights and masks, checked by hand (verl's rollout_corr_helper rules)."""

import math

import pytest
import torch

from pgbench.rl.correction import correct

LOG = torch.log
# two sequences of three tokens; the second is padded at its last position.
# w = pi_old / mu per token: row 0 [3, 0.5, 1], row 1 [0.25, 1.5, (padding)]
OLD = LOG(torch.tensor([[0.6, 0.1, 0.3], [0.05, 0.3, 0.9]]))
MU = LOG(torch.tensor([[0.2, 0.2, 0.3], [0.2, 0.2, 0.1]]))
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_token_tis_truncates_each_weight_at_c():
    weight, mask = correct(OLD, MU, MASK, "tis", "token", high=2.0)
    expected = torch.tensor([[2.0, 0.5, 1.0], [0.25, 1.5, 1.0]])  # padding: log w = 0
    torch.testing.assert_close(weight, expected)
    assert torch.equal(mask, MASK)


def test_sequence_tis_truncates_the_product_and_ignores_padding():
    # products: row 0 3 * 0.5 * 1 = 1.5, row 1 0.25 * 1.5 = 0.375 (the padded 9 is not counted)
    weight, _ = correct(OLD, MU, MASK, "tis", "sequence", high=2.0)
    torch.testing.assert_close(weight, torch.tensor([[1.5] * 3, [0.375] * 3]))
    weight, _ = correct(OLD, MU, MASK, "tis", "sequence", high=1.2)
    torch.testing.assert_close(weight, torch.tensor([[1.2] * 3, [0.375] * 3]))


def test_token_mis_masks_tokens_outside_the_bounds():
    # [low, high] = [1/2, 2]: 3 and 0.25 leave; 0.5 is inside (bounds included)
    weight, mask = correct(OLD, MU, MASK, "mis", "token", high=2.0)
    assert torch.equal(weight, torch.ones_like(MASK))
    assert mask.tolist() == [[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]]
    _, mask = correct(OLD, MU, MASK, "mis", "token", high=4.0, low=0.2)
    assert mask.tolist() == MASK.tolist()


def test_sequence_mis_rejects_whole_sequences():
    # products 1.5 (kept in [0.5, 2]) and 0.375 (rejected)
    _, mask = correct(OLD, MU, MASK, "mis", "sequence", high=2.0)
    assert mask.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]


def test_none_changes_nothing_and_huge_ratios_stay_finite():
    weight, mask = correct(OLD, MU, MASK, "none")
    assert torch.equal(weight, torch.ones_like(MASK)) and torch.equal(mask, MASK)
    far = torch.full((1, 3), 30.0)  # log w = 90 summed: bounded at 20 before exp
    weight, _ = correct(far, torch.zeros(1, 3), torch.ones(1, 3), "tis", "sequence", high=1e12)
    assert weight[0, 0].item() == pytest.approx(math.exp(20.0), rel=1e-5)
