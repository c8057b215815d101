import math
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

from pgbench.errors import ConfigError
from pgbench.reports import verdicts
from pgbench.reports.verdicts import A_BETTER, B_BETTER, EQUIVALENT, UNDECIDED


def scores_of(columns: dict[str, list[float]], task: str = "t1") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"task": task, "estimator": name, "seed": seed, "value": value}
            for name, values in columns.items()
            for seed, value in enumerate(values)
        ]
    )


def test_paired_tests_by_hand():
    # d = [1, 2, 3]: mean 2, sd 1, se = 1/sqrt(3), df 2, where the t CDF is
    # F(t) = 1/2 + t / (2 sqrt(t^2 + 2)).
    # difference: t = 2 sqrt(3) = 3.4641, p = 1 - t / sqrt(t^2 + 2) = 1 - 2 sqrt(3)/sqrt(14)
    # TOST at margin 3: t_low = (2 + 3) sqrt(3) = 8.660 (p tiny), t_upp = (2 - 3) sqrt(3)
    # = -sqrt(3), p_upp = F(-sqrt(3)) = 1/2 - sqrt(3) / (2 sqrt(5)) = 0.11270: p_equiv = 0.11270
    # 95% interval: 2 -+ t_{0.975, 2} / sqrt(3) = 2 -+ 4.30265 / 1.73205 = 2 -+ 2.48414
    got = verdicts.paired_tests(np.array([1.0, 2.0, 3.0]), margin=3.0)
    assert got["effect"] == pytest.approx(2.0)
    assert got["p_diff"] == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14))  # 0.07418
    assert got["p_equiv"] == pytest.approx(0.5 - math.sqrt(3) / (2 * math.sqrt(5)))  # 0.11270
    assert got["ci_low"] == pytest.approx(2 - 2.484138, abs=1e-6)
    assert got["ci_high"] == pytest.approx(2 + 2.484138, abs=1e-6)
    # margin 1: t_upp = (2 - 1) sqrt(3) = sqrt(3), p_upp = 1/2 + sqrt(3) / (2 sqrt(5)) = 0.88730
    got = verdicts.paired_tests(np.array([1.0, 2.0, 3.0]), margin=1.0)
    assert got["p_equiv"] == pytest.approx(0.5 + math.sqrt(3) / (2 * math.sqrt(5)))


def test_paired_tests_agree_with_statsmodels_and_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.3, 1.0, (2, 7)), rng.normal(0.0, 1.0, (2, 7))
    got = verdicts.paired_tests(a - b, margin=1.5)  # vectorised over 2 pairs
    for k in range(2):
        assert got["p_equiv"][k] == pytest.approx(ttost_paired(a[k], b[k], -1.5, 1.5)[0])
        assert got["p_diff"][k] == pytest.approx(sps.ttest_rel(a[k], b[k]).pvalue)


def test_paired_tests_undefined_cases():
    one = verdicts.paired_tests(np.array([1.0]), margin=1.0)  # one seed: no test, no interval
    assert one["effect"] == 1.0 and math.isnan(one["p_diff"]) and math.isnan(one["ci_low"])
    constant = verdicts.paired_tests(np.array([0.5, 0.5, 0.5]), margin=1.0)  # sd 0
    assert math.isnan(constant["p_diff"]) and math.isnan(constant["p_equiv"])
    no_margin = verdicts.paired_tests(np.array([1.0, 2.0, 3.0]), margin=math.nan)
    assert math.isnan(no_margin["p_equiv"]) and no_margin["p_diff"] < 0.1


def test_adjust_by_hand():
    # sorted: 0.001 (pair 0 diff), 0.01 (pair 1 equiv), 0.04 (pair 1 diff), 0.5 (pair 0 equiv)
    # pairs with a test at or after each rank: 2, 2, 2, 1 (at most one true null per pair)
    # -> 0.002, 0.02, 0.08, 0.5 (Holm would divide by 4, 3, 2, 1: 0.004, 0.03, 0.08, 0.5)
    got = verdicts.adjust(np.array([0.001, 0.04]), np.array([0.5, 0.01]))
    assert got == pytest.approx([0.002, 0.08, 0.5, 0.02])
    # a NaN test counts for nothing: pair 1 has only its difference test
    # sorted 0.01 (p0 diff), 0.02 (p0 equiv), 0.03 (p1 diff): pairs left 2, 2, 1
    # -> 0.02, 0.04, running max(0.04, 0.03) = 0.04; in input order p0d, p1d, p0e, p1e
    got = verdicts.adjust(np.array([0.01, 0.03]), np.array([0.02, np.nan]))
    assert got[:3] == pytest.approx([0.02, 0.04, 0.04]) and np.isnan(got[3])


def test_adjust_without_equivalence_tests_is_holm():
    rng = np.random.default_rng(4)
    p = rng.uniform(0.0, 0.1, (3, 8))
    p[1, [2, 5]] = math.nan
    got = verdicts.adjust(p, np.full_like(p, math.nan))[:, :8]
    for row, adjusted in zip(p, got, strict=True):
        finite = np.isfinite(row)
        assert np.isnan(adjusted[~finite]).all()
        expected = multipletests(row[finite], method="holm")[1]
        assert adjusted[finite] == pytest.approx(expected)


def test_decide_verdicts():
    got = verdicts.decide(np.array([1.0, 0.2]), np.array([0.001, 0.04]), np.array([0.5, 0.01]))
    assert list(got) == [A_BETTER, EQUIVALENT]  # adjusted 0.002 and 0.02 (above)
    got = verdicts.decide(np.array([-1.0, 0.2]), np.array([0.001, 0.04]), np.array([0.5, 0.01]))
    assert got[0] == B_BETTER
    # two differences at 0.02: 2 pairs -> 0.04, both decided (Holm over 4 tests: 0.08, neither)
    got = verdicts.decide(np.array([1.0, 1.0]), np.array([0.02, 0.02]), np.array([0.9, 0.9]))
    assert list(got) == [A_BETTER, A_BETTER]
    got = verdicts.decide(np.array([1.0, 1.0]), np.array([0.03, np.nan]), np.array([0.9, 0.9]))
    assert list(got) == [UNDECIDED, UNDECIDED]  # 0.03 x 2 pairs; NaN never rejects
    # a pair both different and within the margin is reported by its difference
    got = verdicts.decide(np.array([0.5]), np.array([0.001]), np.array([0.001]))
    assert list(got) == [A_BETTER]


def test_verdict_table_pairs_best_first_on_matched_seeds():
    scores = scores_of({"lo": [1.0, 2.0, 3.0, 12.0], "hi": [2.0, 4.0, 6.0]})  # seed 3: lo only
    scores = pd.concat([scores, scores_of({"x": [1.0, 2.0]}, task="t2")])
    table = verdicts.verdict_table(scores, {"t1": 3.0})
    assert list(table.columns) == verdicts.VERDICTS
    assert len(table) == 1  # t2 has one column: no pair
    row = table.iloc[0]
    assert (row.a, row.b, row.n_seeds, row.margin) == ("lo", "hi", 3, 3.0)  # lo: mean 4.5 > 4
    # d = lo - hi = [-1, -2, -3]: the hand-computed case above, mirrored
    assert row.effect == pytest.approx(-2.0)
    assert row.p_equiv == pytest.approx(0.5 - math.sqrt(3) / (2 * math.sqrt(5)))
    assert row.verdict == UNDECIDED  # 2 p-values, the smaller 0.074 x 2 > 0.05


def test_margins_defaults_declared_and_invalid():
    assert verdicts.margins(["arith", "fr_en"]) == {"arith": 2.0, "fr_en": 1.0}
    got = verdicts.margins(["arith", "poet"], {"arith": 0.5})
    assert got["arith"] == 0.5 and math.isnan(got["poet"])  # no default for poet
    for bad in (0.0, -1.0, math.inf, "1"):
        with pytest.raises(ConfigError, match="margin.arith"):
            verdicts.margins(["arith"], {"arith": bad})
    with pytest.raises(ConfigError, match="margin.frEn names no task of this suite"):
        verdicts.margins(["arith", "fr_en"], {"frEn": 1.0})


def test_parse_margins():
    assert verdicts.parse_margins("") == {}
    assert verdicts.parse_margins("fr_en:0.5, arith:1") == {"fr_en": 0.5, "arith": 1.0}
    for bad in ("fr_en", "fr_en:x", "fr_en=0.5"):
        with pytest.raises(ConfigError, match="must be task:number"):
            verdicts.parse_margins(bad)


def test_gains_and_vacuous():
    # [1, 2, 3] over start 1: gain 1, 95% interval 1 -+ 2.48414 (as in the TOST case)
    # [5, 6, 7]: gain 5, interval [2.516, 7.484], above 0
    scores = scores_of({"flat": [1.0, 2.0, 3.0], "up": [5.0, 6.0, 7.0]})
    table = verdicts.gains(scores, {"t1": 1.0})
    flat = table.set_index("estimator").loc["flat"]
    assert (flat.gain, flat.n, flat.start) == (1.0, 3, 1.0)
    assert flat.ci_low == pytest.approx(1 - 2.484138, abs=1e-6)
    assert verdicts.vacuous(table) == {"t1": False}
    assert verdicts.vacuous(verdicts.gains(scores_of({"flat": [1.0, 2.0, 3.0]}), {"t1": 1.0})) == {
        "t1": True
    }
    assert verdicts.vacuous(verdicts.gains(scores, {})) == {"t1": None}  # start unknown


def test_decision_rates_count_verdicts():
    table = pd.DataFrame(
        {
            "task": ["t1", "t1", "t1", "t2"],
            "verdict": [A_BETTER, EQUIVALENT, UNDECIDED, UNDECIDED],
            "margin": [1.0, 1.0, 1.0, math.nan],
        }
    )
    rates = verdicts.decision_rates(table, {"t1": True}).set_index("task")
    assert list(rates.reset_index().columns) == verdicts.RATES
    assert rates.loc["t1", ["pairs", "decided", A_BETTER, EQUIVALENT]].tolist() == [3, 2, 1, 1]
    assert rates.loc["t1", "rate"] == pytest.approx(2 / 3) and rates.loc["t1", "vacuous"]
    assert rates.loc["t2", "rate"] == 0.0 and rates.loc["t2", "vacuous"] is None


def test_write_files_and_section(tmp_path):
    rng = np.random.default_rng(1)
    scores = scores_of({c: list(rng.normal(0.0, 0.1, 8)) for c in ("a", "b", "c")})
    result = verdicts.write(tmp_path, scores, {"t1": 5.0}, {"t1": 1.0})
    written = pd.read_csv(tmp_path / "verdicts.csv")
    assert list(written.columns) == verdicts.VERDICTS and len(written) == 3
    assert set(written.verdict) == {EQUIVALENT}  # differences ~0.05 sd against margin 1
    assert result["figures"] == [tmp_path / "verdicts.png"]
    assert result["figures"][0].stat().st_size
    text = "\n".join(result["sections"])
    assert "## Verdicts" in text and "t1: the equivalences are vacuous" in text  # all lost 5


def test_write_with_one_column_has_no_pair_and_no_figure(tmp_path):
    result = verdicts.write(tmp_path, scores_of({"a": [1.0, 2.0]}), {"t1": 0.0}, {"t1": 1.0})
    assert result["figures"] == [] and not (tmp_path / "verdicts.png").exists()
    assert list(pd.read_csv(tmp_path / "verdicts.csv").columns) == verdicts.VERDICTS
    assert result["rates"].empty and "Decided pairs" in "\n".join(result["sections"])


# Simulation of the family-wise rule: R reports of C columns x N seeds, column means `means`,
# normal noise; p-values vectorised over reports, then `decide` per report.
R, C, N = 2000, 6, 10
MC = 3 * math.sqrt(0.05 * 0.95 / R)  # 3 Monte-Carlo standard errors of a 5% rate


def simulate(means: np.ndarray, sd: float, margin: float, seed: int) -> tuple[np.ndarray, list]:
    """(true differences [P], verdicts [R, P]) of the pairs i < j of the columns, d = col_i -
    col_j."""
    rng = np.random.default_rng(seed)
    values = means[None, :, None] + rng.normal(0.0, sd, (R, len(means), N))  # [R, C, N]
    pairs = list(combinations(range(len(means)), 2))
    diffs = np.stack([values[:, i] - values[:, j] for i, j in pairs], axis=1)  # [R, P, N]
    tests = verdicts.paired_tests(diffs, margin)
    got = verdicts.decide(tests["effect"], tests["p_diff"], tests["p_equiv"])  # [R, P]
    return np.array([means[i] - means[j] for i, j in pairs]), got


def wrong(truth: np.ndarray, got: np.ndarray, margin: float) -> np.ndarray:
    """[R, P]: a verdict the true difference contradicts."""
    return (
        ((got == A_BETTER) & (truth <= 0))
        | ((got == B_BETTER) & (truth >= 0))
        | ((got == EQUIVALENT) & (np.abs(truth) >= margin))
    )


@pytest.mark.parametrize("sd", [1.0, 0.25])
def test_no_true_difference_keeps_family_wise_error(sd):
    # 15 true null differences, tested at alpha / 15 at first: about 4.7% of reports hold a
    # false difference, at any noise level
    truth, got = simulate(np.zeros(C), sd=sd, margin=1.0, seed=0)
    any_difference = np.isin(got, [A_BETTER, B_BETTER]).any(axis=1).mean()
    assert any_difference <= 0.05 + MC
    assert wrong(truth, got, 1.0).any(axis=1).mean() <= 0.05 + MC


@pytest.mark.parametrize("columns", [C, 2])
def test_differences_at_the_margin_are_rarely_called_equivalent(columns):
    # every |d| >= margin; one pair (2 columns) is the tightest case: its two hypotheses
    # exclude each other, so its TOST runs at alpha itself and is wrong 5% of the time
    margin = 1.0
    truth, got = simulate(margin * np.arange(columns), sd=1.0, margin=margin, seed=1)
    assert ((got == EQUIVALENT).any(axis=1)).mean() <= 0.05 + MC
    assert wrong(truth, got, margin).any(axis=1).mean() <= 0.05 + MC


def test_clear_differences_and_equalities_are_decided():
    margin = 1.0
    # every neighbour 2 x margin apart, sd 0.5: t = 2 / (0.5 sqrt(2) / sqrt(10)) = 8.9
    truth, got = simulate(2 * margin * np.arange(C)[::-1], sd=0.5, margin=margin, seed=2)
    assert (got == A_BETTER).mean() >= 0.95 and not wrong(truth, got, margin).any()
    # all equal, sd 0.25: the TOST's t = 1 / (0.25 sqrt(2) / sqrt(10)) = 8.9
    truth, got = simulate(np.zeros(C), sd=0.25, margin=margin, seed=3)
    assert (got == EQUIVALENT).mean() >= 0.95
