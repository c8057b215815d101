import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from pgbench.reports.stats import (
    LEADERBOARD,
    PAIRS,
    bootstrap_ci,
    iqm,
    leaderboard,
    mean,
    normalise,
    pairs,
    performance_profile,
    ranks,
    seeds_needed,
)

RESAMPLES = 2000  # enough for stable percentile intervals, fast on one thread

# 2 tasks x 3 estimators x 5 seeds (seed i is the i-th value)
VALUES = {
    ("t1", "a"): [10, 12, 11, 14, 13],  # mean 12
    ("t1", "b"): [9, 12, 10, 11, 8],  # mean 10; ties with a at 10, 11, 12
    ("t1", "c"): [1, 3, 2, 30, 4],  # mean 8, one outlier
    ("t2", "a"): [50, 52, 54, 56, 58],  # mean 54
    ("t2", "b"): [51, 51, 55, 57, 56],  # mean 54 (tie with a: alphabetical order)
    ("t2", "c"): [40, 41, 45, 43, 42],  # mean 42.2
}


def table(values: dict = VALUES) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"task": task, "estimator": estimator, "seed": seed, "value": float(value)}
            for (task, estimator), column in values.items()
            for seed, value in enumerate(column)
        ]
    )


@pytest.fixture(scope="module")
def pair_table() -> pd.DataFrame:
    return pairs(table(), n_resamples=RESAMPLES).set_index(["task", "a", "b"])


def paired_t_power(d: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at standardised effect d, from the noncentral t."""
    critical, noncentrality = stats.t.isf(alpha / 2, n - 1), d * math.sqrt(n)
    return stats.nct.sf(critical, n - 1, noncentrality) + stats.nct.cdf(
        -critical, n - 1, noncentrality
    )


def test_iqm_is_the_mean_of_the_middle_half():
    # 25% of 5 values is 1.25 -> one value cut at each end
    # t1/c sorted: 1 2 3 4 30 -> (2 + 3 + 4) / 3 = 3 (the mean, 8, follows the outlier)
    assert iqm(np.array(VALUES["t1", "c"], float)) == pytest.approx(3.0)
    # t2/b sorted: 51 51 55 56 57 -> (51 + 55 + 56) / 3 = 54
    assert iqm(np.array(VALUES["t2", "b"], float)) == pytest.approx(54.0)


def test_leaderboard_per_task_rows():
    board = leaderboard(table(), n_resamples=RESAMPLES)
    assert list(board.columns) == LEADERBOARD
    rows = board.set_index(["task", "estimator"])
    expected = {  # (mean, iqm) by hand, see VALUES and the IQM test
        ("t1", "a"): (12.0, 12.0),  # 11 12 13
        ("t1", "b"): (10.0, 10.0),  # 9 10 11
        ("t1", "c"): (8.0, 3.0),
        ("t2", "a"): (54.0, 54.0),  # 52 54 56
        ("t2", "b"): (54.0, 54.0),
        ("t2", "c"): (42.2, 42.0),  # 41 42 43
    }
    for key, (average, trimmed) in expected.items():
        row = rows.loc[key]
        assert row.n == 5
        assert row["mean"] == pytest.approx(average) and row.iqm == pytest.approx(trimmed)
        assert row.ci_low < row["mean"] < row.ci_high
        assert row.ci_low >= min(VALUES[key]) and row.ci_high <= max(VALUES[key])


def test_aggregate_normalises_per_task_and_takes_the_iqm():
    # t1 from start 0 to its best run 30 (c, seed 3); t2 min-max: from 40 to 58.
    board = leaderboard(table(), start={"t1": 0.0}, n_resamples=RESAMPLES).set_index(
        ["task", "estimator"]
    )
    row = board.loc["all", "a"]
    # a: t1 10 12 11 14 13 / 30; t2 (10 12 14 16 18) / 18. Sorted, 10 values, 2 cut each end:
    # .333 .367 [.4 .433 .467 .556 .667 .778] .889 1 -> (39/30 + 36/18) / 6 = 0.55
    assert row.n == 10
    assert row.iqm == pytest.approx((39 / 30 + 36 / 18) / 6)
    assert row["mean"] == pytest.approx((60 / 30 + 70 / 18) / 10)
    assert row.ci_low < row.iqm < row.ci_high
    assert math.isnan(row["rank"])
    # a start above a task's best run: that task cannot be normalised and drops out
    dropped = leaderboard(table(), start={"t1": 100.0}, n_resamples=RESAMPLES)
    assert dropped[dropped.task == "all"].n.tolist() == [5, 5, 5]
    assert normalise(table(), {"t1": 100.0}).query("task == 't1'").value.isna().all()


def test_paired_differences_by_hand(pair_table):
    assert list(pairs(table(), n_resamples=10).columns) == PAIRS
    # a = the higher mean; t1: a - b per seed = 1 0 1 3 5 -> mean 2
    row = pair_table.loc["t1", "a", "b"]
    assert row.n == 5 and row.mean_diff == pytest.approx(2.0)
    assert row.diff_ci_low < 2.0 < row.diff_ci_high
    assert row.diff_ci_low >= 0 and row.diff_ci_high <= 5  # within the differences' range
    # t1: a - c = 9 9 9 -16 9 -> 4; t2: b - c = 11 10 10 14 14 -> 11.8
    assert pair_table.loc["t1", "a", "c"].mean_diff == pytest.approx(4.0)
    assert pair_table.loc["t2", "b", "c"].mean_diff == pytest.approx(11.8)
    # t2: a and b tie on the mean -> alphabetical; a - b = -1 1 -1 -1 2 -> 0
    assert pair_table.loc["t2", "a", "b"].mean_diff == pytest.approx(0.0)


def test_pairs_use_only_the_seeds_both_ran():
    scores = table().query("not (task == 't1' and estimator == 'b' and seed == 4)")
    row = pairs(scores, n_resamples=RESAMPLES).set_index(["task", "a", "b"]).loc["t1", "a", "b"]
    # seeds 0-3: a - b = 1 0 1 3 -> 1.25
    assert row.n == 4 and row.mean_diff == pytest.approx(1.25)


def test_probability_of_improvement_counts_pairs(pair_table):
    # t1, a = 10 12 11 14 13 against b = 9 12 10 11 8: count b below each a, ties 1/2
    # 10: 9 8 + tie 10 -> 2.5; 12: 9 10 11 8 + tie -> 4.5; 11: 9 10 8 + tie -> 3.5; 14: 5; 13: 5
    assert pair_table.loc["t1", "a", "b"].prob_improvement == pytest.approx(20.5 / 25)
    # t2, a = 50 52 54 56 58 against b = 51 51 55 57 56: 0 + 2 + 2 + (3 + tie 56) + 5 = 12.5
    assert pair_table.loc["t2", "a", "b"].prob_improvement == pytest.approx(12.5 / 25)


def test_holm_multiplies_sorted_p_values(pair_table):
    # paired t: t = mean / (sd / sqrt(5)), 4 dof; differences' mean and variance by hand
    by_hand = {
        ("t1", "a", "b"): (2.0, 4.0),  # deviations -1 -2 -1 1 3: 16 / 4
        ("t1", "a", "c"): (4.0, 125.0),  # 5 5 5 -20 5: 500 / 4
        ("t1", "b", "c"): (2.0, 141.5),  # 8 9 8 -19 4: 6 7 6 -21 2 -> 566 / 4
        ("t2", "a", "b"): (0.0, 2.0),  # -1 1 -1 -1 2: 8 / 4
        ("t2", "a", "c"): (11.8, 7.7),  # 10 11 9 13 16: 30.8 / 4
        ("t2", "b", "c"): (11.8, 4.2),  # 11 10 10 14 14: 16.8 / 4
    }
    raw = {
        key: 2 * stats.t.sf(abs(mean) / math.sqrt(var / 5), 4)
        for key, (mean, var) in by_hand.items()
    }
    for key, p in raw.items():
        assert pair_table.loc[key].p_value == pytest.approx(p)
    # Holm over all 6 pairs of both tasks: the i-th smallest times (6 - i), running max, cap 1
    ordered = sorted(raw, key=raw.get)
    running = 0.0
    for i, key in enumerate(ordered):
        running = max(running, min(1.0, raw[key] * (6 - i)))
        assert pair_table.loc[key].p_holm == pytest.approx(running)
    assert pair_table.loc["t2", "a", "b"].p_holm == 1.0  # t = 0


def test_minimum_detectable_effect_from_the_noncentral_t(pair_table):
    # t1 a - b: sd 2 over 5 seeds; d solves power(d) = 0.8 for the two-sided paired t-test
    d = optimize.brentq(lambda d: paired_t_power(d, 5) - 0.8, 0.5, 3)
    assert d == pytest.approx(1.682, abs=1e-3)
    assert pair_table.loc["t1", "a", "b"].mde == pytest.approx(d * 2.0, rel=1e-4)
    # t2 b - c: sd sqrt(4.2)
    assert pair_table.loc["t2", "b", "c"].mde == pytest.approx(d * math.sqrt(4.2), rel=1e-4)


def test_seeds_needed(pair_table):
    from statsmodels.stats.power import TTestPower

    power = TTestPower()
    # t1 a - b: effect 2 / 2 = 1 -> 9.94 seeds -> 10; the noncentral t agrees: 9 too few
    assert pair_table.loc["t1", "a", "b"].seeds_needed == 10
    assert paired_t_power(1.0, 10) >= 0.8 > paired_t_power(1.0, 9)
    assert pair_table.loc["t2", "a", "b"].seeds_needed == math.inf  # no difference
    for effect in [0.3, 0.5, 1.0]:
        assert seeds_needed(effect, 1.0) == math.ceil(
            power.solve_power(effect, alpha=0.05, power=0.8)
        )
    # large effects, where statsmodels' own nobs solver fails: d(2) = 11.55, d(3) = 3.26
    assert seeds_needed(12.0, 1.0) == 2 and seeds_needed(10.0, 1.0) == 3
    d2, d3 = (power.solve_power(nobs=n, alpha=0.05, power=0.8) for n in (2, 3))
    assert d3 <= 10 < d2 < 12
    needed = [seeds_needed(diff, 1.0) for diff in [0.05, 0.2, 0.5, 1, 2, 5, 10, 20, 100]]
    assert needed == sorted(needed, reverse=True) and needed[-1] == 2
    assert math.isnan(seeds_needed(1.0, 0.0)) and math.isnan(seeds_needed(1.0, math.nan))


def test_bootstrap_interval_contains_the_mean_and_narrows_with_seeds():
    rng = np.random.default_rng(1)
    widths = []
    for seeds in [5, 20, 80]:
        values = rng.normal(50, 4, seeds)
        low, high = bootstrap_ci([values], mean, n_resamples=RESAMPLES)
        assert low < values.mean() < high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]


def test_bootstrap_degenerate_inputs():
    low, high = bootstrap_ci([np.full(4, 7.0)], mean, n_resamples=100)
    assert low == high == 7.0
    assert all(math.isnan(v) for v in bootstrap_ci([np.array([3.0])], mean))
    one_seed = table().query("seed == 0")
    board = leaderboard(one_seed, n_resamples=100)
    assert board.ci_low.isna().all() and (board[board.task != "all"].n == 1).all()
    found = pairs(one_seed, n_resamples=100)
    assert found[["p_value", "p_holm", "mde", "seeds_needed"]].isna().all().all()


def test_stratified_bootstrap_keeps_each_tasks_count():
    # task A values 0-4, task B 100-104: a resample's counts below 50 are task A's
    strata = [np.arange(5.0), 100 + np.arange(5.0), np.array([200.0])]  # 1 value: held fixed
    counts = []

    def record(values: np.ndarray) -> np.ndarray:  # values [batch, 11] (or [11]: the data)
        below, middle = (values < 50).sum(-1), ((values > 50) & (values < 150)).sum(-1)
        counts.append(np.atleast_2d(np.stack([below, middle], -1)))
        assert (values[..., -1] == 200).all()
        return values.mean(axis=-1)

    bootstrap_ci(strata, record, n_resamples=500)
    counts = np.concatenate(counts)
    assert len(counts) >= 500 and (counts == [5, 5]).all()


def test_ranks_group_estimators_not_separated_by_the_test():
    noise = [0.1, -0.1, 0.2, -0.2, 0.0]
    values = {
        ("x", "good"): [10 + e for e in noise],
        ("x", "twin"): [10 - e for e in noise],  # same mean; differences 0.2 -0.2 0.4 -0.4 0
        ("x", "bad"): [0 + e / 2 for e in noise],  # 10 lower, tiny noise
        ("y", "high"): [20 + e for e in noise],
        ("y", "mid"): [10 + e / 2 for e in noise],
        ("y", "low"): [0 - e for e in noise],
    }
    scores = table(values)
    found = pairs(scores, n_resamples=RESAMPLES)
    ranked = ranks(scores, found).set_index(["task", "estimator"])["rank"]
    assert ranked.to_dict() == {
        ("x", "good"): 1,
        ("x", "twin"): 1,
        ("x", "bad"): 2,
        ("y", "high"): 1,
        ("y", "mid"): 2,
        ("y", "low"): 3,
    }
    board = leaderboard(scores, n_resamples=RESAMPLES, pair_table=found)
    assert board.set_index(["task", "estimator"]).loc["x", "bad"]["rank"] == 2


def test_performance_profile_counts_runs_above_tau():
    normalised = normalise(table(), {"t1": 0.0})
    profile = performance_profile(normalised, [0.5, 0.9], n_resamples=RESAMPLES)
    rows = profile.set_index(["estimator", "tau"])
    # a: t1 10..14 / 30 all < 0.5; t2 (10 12 14 16 18) / 18 all > 0.5, only 18/18 > 0.9
    assert rows.loc[("a", 0.5), "fraction"] == pytest.approx(5 / 10)
    assert rows.loc[("a", 0.9), "fraction"] == pytest.approx(1 / 10)
    # c: t1 only 30/30 > 0.5; t2 (0 1 5 3 2) / 18 none
    assert rows.loc[("c", 0.5), "fraction"] == pytest.approx(1 / 10)
    assert (profile.ci_low <= profile.fraction).all() and (
        profile.fraction <= profile.ci_high
    ).all()
    # task strata are resampled within themselves: a's t2 runs all exceed 0.5 -> a point band
    assert rows.loc[("a", 0.5), "ci_low"] == rows.loc[("a", 0.5), "ci_high"] == 0.5
