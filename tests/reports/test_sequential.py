import math
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from pgbench.errors import ConfigError
from pgbench.reports import sequential, verdicts
from pgbench.reports.sequential import Design


def test_looks_and_their_levels_follow_the_pocock_type_spending_function():
    design = Design.of(10, 30, 5, pairs=66)
    assert design.looks == (10, 15, 20, 25, 30)
    assert Design.of(10, 32, 5, pairs=1).looks == (10, 15, 20, 25, 30, 32)  # a short last batch
    assert Design.of(10, 10, 5, pairs=1).looks == (10,)  # max = initial: one look
    levels = design.levels()
    # f(t) = 0.05 ln(1 + (e - 1) t): f(1/3) = 0.05 ln(1.5727606) = 0.0226416, over 66 pairs
    assert levels[0] == pytest.approx(0.0226416 / 66, rel=1e-5)
    assert levels[1] == pytest.approx(0.05 * (math.log(1.8591409) - math.log(1.5727606)) / 66)
    assert levels.sum() == pytest.approx(0.05 / 66)  # all of each pair's share, at the last look
    with pytest.raises(ConfigError, match="max >= initial"):
        Design.of(10, 5, 5, pairs=1)


def p_diff(diffs: list[float]) -> float:
    """The paired t-test's two-sided p-value, by hand."""
    d = np.asarray(diffs)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    return 2 * sps.t.sf(abs(t), len(d) - 1)


def test_a_pair_keeps_the_first_verdict_it_reaches_and_waits_for_whole_looks():
    design = Design.of(3, 5, 2, pairs=1)  # looks at 3 and 5 seeds
    first, second = design.levels()
    # 3 seeds: a difference, but not below the first look's level; 5 seeds: below the second's
    diffs = pd.Series([1.0, 2.0, 0.6, 1.2, 1.4])
    assert first < p_diff(diffs[:3].tolist()) and p_diff(diffs.tolist()) < second
    row = sequential.judge_pair(diffs, math.nan, design)
    assert row["verdict"] == verdicts.A_BETTER and row["n_seeds"] == 5 and row["look"] == 1
    assert row["p_diff"] == pytest.approx(p_diff(diffs.tolist()))
    assert row["level"] == pytest.approx(second)
    # seed 3 missing: only the first look is judged, undecided; no seed at all: not judged
    partial = sequential.judge_pair(diffs.drop(3), math.nan, design)
    assert partial["verdict"] == verdicts.UNDECIDED and partial["look"] == 0
    assert partial["n_seeds"] == 3
    assert sequential.judge_pair(diffs[:2], math.nan, design)["look"] == -1
    # decided at the first look, a later look cannot change it (here it would be "B better")
    early = pd.Series([5.0, 5.1, 4.9, -40.0, -41.0])
    row = sequential.judge_pair(early, math.nan, design)
    assert row["verdict"] == verdicts.A_BETTER and row["n_seeds"] == 3


def test_equivalence_is_judged_by_tost_at_the_looks_level():
    design = Design.of(4, 4, 1, pairs=1)  # one look: the whole 5%
    diffs = pd.Series([0.1, -0.1, 0.2, 0.0])
    row = sequential.judge_pair(diffs, 1.0, design)
    mean, se = 0.05, np.std([0.1, -0.1, 0.2, 0.0], ddof=1) / 2
    p_equiv = max(sps.t.sf((mean + 1) / se, 3), sps.t.cdf((mean - 1) / se, 3))
    assert row["p_equiv"] == pytest.approx(p_equiv) and p_equiv < 0.05
    assert row["verdict"] == verdicts.EQUIVALENT


def test_targets_add_the_next_look_to_the_columns_of_undecided_pairs_only():
    design = Design.of(10, 20, 5, pairs=3)
    table = pd.DataFrame(
        {
            "task": ["arith"] * 3,
            "a": ["grpo", "grpo", "rloo"],
            "b": ["rloo", "ppo", "ppo"],
            "verdict": [verdicts.A_BETTER, verdicts.UNDECIDED, verdicts.UNDECIDED],
            "look": [0, 0, 2],  # rloo-ppo: judged at the last look already
        }
    )
    columns = [("arith", c) for c in ("grpo", "rloo", "ppo", "remax")]
    need = sequential.targets(table, design, columns)
    assert need == {("arith", "grpo"): 15, ("arith", "rloo"): 20, ("arith", "ppo"): 20} | {
        ("arith", "remax"): 10
    }


def simulate(means: list[float], sd: float, margin: float, design: Design, reports: int):
    """Verdicts of `reports` simulated suites: columns with these true means, normal scores
    per seed, every pair of columns judged as an adaptive suite judges it."""
    rng = np.random.default_rng(0)
    scores = rng.normal(means, sd, size=(reports, design.looks[-1], len(means)))
    pairs = list(combinations(range(len(means)), 2))
    diffs = np.stack([scores[..., a] - scores[..., b] for a, b in pairs], axis=1)
    verdict, look, _ = sequential.decide(diffs, margin, design)
    return verdict, look, pairs


def test_under_no_difference_the_false_decision_rate_stays_within_alpha():
    # 6 equal columns, 15 pairs, looks at 10, 15, 20, 25 and 30 seeds: a report is wrong if it
    # holds any "better"
    design = Design.of(10, 30, 5, pairs=15)
    reports = 2000
    verdict, _, _ = simulate([0.0] * 6, 1.0, 2.0, design, reports)
    wrong = np.isin(verdict, [verdicts.A_BETTER, verdicts.B_BETTER]).any(axis=1).mean()
    assert wrong <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / reports)
    # columns exactly one margin apart: "equivalent" for a neighbouring pair is wrong
    verdict, _, pairs = simulate([0.0, 1.0, 2.0, 3.0], 1.0, 1.0, design, reports)
    neighbours = [i for i, (a, b) in enumerate(pairs) if b == a + 1]
    wrong = (verdict[:, neighbours] == verdicts.EQUIVALENT).any(axis=1).mean()
    assert wrong <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / reports)


def test_a_difference_of_twice_the_margin_is_decided_and_clear_pairs_stop_early():
    design = Design.of(10, 30, 5, pairs=1)
    verdict, look, _ = simulate([2.0, 0.0], 1.0, 1.0, design, 2000)
    assert (verdict == verdicts.A_BETTER).mean() >= 0.99  # a is column 0, the better one
    assert not (verdict == verdicts.B_BETTER).any()
    assert (look == 0).mean() > 0.9  # decided at the first look: no seeds added
    # equal columns, sd 0.4 of the margin: equivalent (but for the false differences the
    # difference test is allowed at its 5%), mostly at the first look
    verdict, look, _ = simulate([0.0, 0.0], 0.4, 1.0, design, 2000)
    assert (verdict == verdicts.EQUIVALENT).mean() >= 0.95 - 2 * math.sqrt(0.05 * 0.95 / 2000)
    assert not (verdict == verdicts.UNDECIDED).any()
    assert (np.asarray(design.looks)[look] < 30).mean() > 0.9


def test_the_verdict_table_and_seeds_spent(tmp_path):
    design = Design.of(3, 4, 1, pairs=1)
    scores = pd.DataFrame(
        {
            "task": "arith",
            "estimator": ["a"] * 4 + ["b"] * 4,
            "seed": [0, 1, 2, 3] * 2,
            "value": [1.0, 2.0, 3.0, 4.0, 1.5, 1.0, 3.6, 3.5],
        }
    )
    table = sequential.verdict_table(scores, {"arith": 0.5}, design)
    assert list(table.columns) == [*verdicts.VERDICTS, "look", "level"]
    assert table.loc[0, "verdict"] == verdicts.UNDECIDED and table.loc[0, "n_seeds"] == 4
    lines = sequential.write(tmp_path, scores, table, design)
    spent = pd.read_csv(tmp_path / "seeds.csv")
    assert spent.seeds.tolist() == [4, 4] and spent.undecided_pairs.tolist() == [1, 1]
    assert "8 test runs in all, against 8" in lines[1]
