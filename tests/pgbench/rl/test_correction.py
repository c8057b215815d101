"""Rollout correction weights and masks, checked by hand (verl's rollout_corr_helper rules)."""

import math

import pytest
import torch

from pgbench.rl.correction import correct, off_policy_mask

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


def test_icepop_keeps_each_tokens_weight_inside_the_bounds_and_zeroes_the_rest():
    # [0.5, 2]: row 0 w [3, 0.5, 1] -> [0, 0.5, 1]; row 1 [0.25, 1.5, (padding: w = 1)]
    weight, mask = correct(OLD, MU, MASK, "icepop", high=2.0)
    torch.testing.assert_close(weight, torch.tensor([[0.0, 0.5, 1.0], [0.0, 1.5, 1.0]]))
    assert torch.equal(mask, MASK)  # zeroed tokens stay in the counts, as OpenRLHF


def test_seq_mask_tis_zeroes_sequences_by_their_geometric_mean_weight():
    # geometric means: row 0 (3 * 0.5 * 1)^(1/3) = 1.1447, row 1 (0.25 * 1.5)^(1/2) = 0.6124
    # [0.7, 1.2]: row 0 kept with its token weights w, row 1 zeroed
    weight, mask = correct(OLD, MU, MASK, "seq_mask_tis", high=1.2, low=0.7)
    torch.testing.assert_close(weight, torch.tensor([[3.0, 0.5, 1.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(mask, MASK)
    # [0.5, 2]: both kept, untruncated (3 stays 3)
    weight, _ = correct(OLD, MU, MASK, "seq_mask_tis", high=2.0)
    torch.testing.assert_close(weight * MASK, torch.tensor([[3.0, 0.5, 1.0], [0.25, 1.5, 0.0]]))


def test_reject_token_k1_bounds_mu_over_pi_old_where_mis_bounds_its_inverse():
    # k1 = log(mu / pi_old) = -log w: row 0 [-log 3, log 2, 0], row 1 [log 4, -log 1.5]
    # [0.2, 3.5]: k1 in [log 0.2, log 3.5] = [-1.609, 1.253]: only row 1's log 4 = 1.386 leaves;
    # mis keeps w = 0.25 (inside [0.2, 3.5]): the same bounds, mirrored
    weight, mask = correct(OLD, MU, MASK, "reject_token_k1", high=3.5, low=0.2)
    assert torch.equal(weight, torch.ones_like(MASK))
    assert mask.tolist() == [[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]
    _, mis = correct(OLD, MU, MASK, "mis", high=3.5, low=0.2)
    assert mis.tolist() == MASK.tolist()


def test_reject_seq_sum_k1_rejects_whole_sequences():
    # sum k1: row 0 -log 1.5 = -0.405, row 1 log 4 - log 1.5 = 0.981 > log 2.5 = 0.916
    _, mask = correct(OLD, MU, MASK, "reject_seq_sum_k1", high=2.5, low=0.2)
    assert mask.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]


def test_reject_seq_mean_k3_rejects_sequences_above_the_kl_bound():
    # k3 = w - 1 - log w; row 0 log w [0.1, -0.1]: k3 = [0.0051709, 0.0048374], mean 0.0050
    # row 1 log w [0.5, (padding)]: k3 = e^0.5 - 1.5 = 0.14872 > 0.01
    old = torch.tensor([[0.1, -0.1], [0.5, 3.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    _, kept = correct(old, torch.zeros(2, 2), mask, "reject_seq_mean_k3", kl_max=0.01)
    assert kept.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    _, kept = correct(old, torch.zeros(2, 2), mask, "reject_seq_mean_k3", kl_max=0.2)
    assert kept.tolist() == mask.tolist()


def test_off_policy_mask_drops_negative_sequences_that_drifted_too_far():
    # mean log(mu / pi) per sequence: row 0 (0.3 + 0.1) / 2 = 0.2, row 1 0.05 (padding ignored),
    # row 2 0.5; A = [-1, -1, +1]; threshold 0.1: row 0 dropped (A < 0, 0.2 > 0.1); row 1
    # kept (0.05 <= 0.1); row 2 kept (A >= 0)
    logprobs = torch.tensor([[-1.0, -2.0], [-1.0, 0.0], [-1.0, -1.0]])
    sampling = logprobs + torch.tensor([[0.3, 0.1], [0.05, 7.0], [0.5, 0.5]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    advantages = torch.tensor([[-1.0, -1.0], [-1.0, -1.0], [1.0, 1.0]])
    kept = off_policy_mask(logprobs, sampling, advantages, mask, 0.1)
    assert kept.tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
