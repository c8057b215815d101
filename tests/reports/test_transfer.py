"""The transfer finding: Kendall's tau of column means and pair verdicts across two suites."""

import pandas as pd
import pytest

from pgbench.reports import transfer


def runs(means: dict[str, float]) -> pd.DataFrame:
    rows = [("fr_en", c, s, "chrf", m + s) for c, m in means.items() for s in (-1, 1)]
    return pd.DataFrame(rows, columns=["task", "estimator", "seed", "metric", "value"])


def test_tau_is_computed_over_the_columns_both_suites_ran():
    real = runs({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "only_real": 9.0})
    proxy = runs({"a": 10.0, "b": 20.0, "c": 40.0, "d": 30.0})
    (row,) = transfer.tau_rows(real, proxy, "tiny")
    # 6 pairs of a..d, one (c, d) discordant: tau = (5 - 1) / 6; exact two-sided p: orders of
    # 4 with at most one inversion are 1 + 3 of 24, twice
    assert row["effect"] == pytest.approx(4 / 6) and row["n"] == 4
    assert row["p_value"] == pytest.approx(2 * 4 / 24)
    assert transfer.tau_rows(real, runs({"a": 1.0, "b": 2.0}), "tiny") == []  # < 3 columns


def pairs(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["task", "a", "b", "mean_diff", "p_holm"])


def test_pair_verdicts_agree_whatever_the_order_each_suite_names_them_in():
    real = pairs(
        [
            ("fr_en", "a", "b", 2.0, 0.01),
            ("fr_en", "a", "c", 1.0, 0.3),
            ("fr_en", "b", "c", -1, 0.01),
        ]
    )
    proxy = pairs(
        [
            ("fr_en", "b", "a", -3.0, 0.02),
            ("fr_en", "c", "a", 1.0, 0.01),
            ("fr_en", "b", "c", 1, 0.9),
        ]
    )
    table = transfer.pair_agreement(real, proxy).set_index("pair")
    assert table.loc["a vs b"].tolist() == ["fr_en", "a > b", "a > b", True]
    assert table.loc["a vs c"].tolist() == ["fr_en", "no difference", "c > a", False]
    assert table.loc["b vs c"].tolist() == ["fr_en", "c > b", "no difference", False]
