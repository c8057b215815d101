import math

import pandas as pd

from pgbench.reports import tuned

# column a: point 0 (lr 1e-4) scores 40 and 42 on the two tuning seeds, point 1 (1e-3) 45 and 47;
# column b: 30 and 30, then 31 and 31
TUNING = pd.DataFrame(
    [
        ["t", col, point, seed, objective, f"{col}{point}{seed}", 100, 2.0, lr]
        for col, scores in (("a", [40, 42, 45, 47]), ("b", [30, 30, 31, 31]))
        for (point, seed, lr), objective in zip(
            [(0, 100, 1e-4), (0, 101, 1e-4), (1, 100, 1e-3), (1, 101, 1e-3)], scores, strict=True
        )
    ],
    columns=[*tuned.FIXED, "trainer.lr"],
)


def test_sensitivity_averages_each_value_per_seed_with_the_seeds_range():
    table = tuned.sensitivity(TUNING).set_index(["estimator", "value"])
    assert tuple(table.loc[("a", 1e-4), ["seeds", "mean", "low", "high"]]) == (2, 41.0, 40, 42)
    assert tuple(table.loc[("a", 1e-3), ["mean", "low", "high"]]) == (46.0, 45, 47)
    assert set(table.key) == {"trainer.lr"} and len(table) == 4


def test_robustness_is_the_share_of_points_within_the_mde_of_the_best():
    pairs = pd.DataFrame({"task": ["t", "t"], "mde": [2.0, 6.0]})  # median MDE 4
    robust = tuned.robustness(TUNING, pairs).set_index("estimator").robustness
    assert robust["a"] == 0.5  # 41 is more than 4 below 46
    assert robust["b"] == 1.0  # 30 is within 4 of 31
    no_pairs = tuned.robustness(TUNING, pairs.iloc[:0])
    assert all(math.isnan(x) for x in no_pairs.robustness)


def test_budget_and_selection_per_column():
    spent = tuned.budget(TUNING).set_index("estimator")
    assert spent.loc["a"].tolist() == ["t", 2, 2, 4, 400, 8.0]
    chosen = pd.DataFrame({"task": ["t", "t"], "estimator": ["a", "b"], "point": [1, 0]})
    assert tuned.selection(TUNING, chosen)["trainer.lr"].tolist() == [1e-3, 1e-4]


def test_verdict_changes_lists_only_pairs_whose_verdict_moved():
    def table(p_ab: float, p_ac: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "task": ["t", "t"],
                "a": ["a", "a"],
                "b": ["b", "c"],
                "mean_diff": [1.5, -2.0],
                "p_holm": [p_ab, p_ac],
            }
        )

    changes = tuned.verdict_changes(table(0.01, 0.01), table(0.30, 0.01))
    assert changes.values.tolist() == [["t", "a vs b", "no difference", "a > b"]]
