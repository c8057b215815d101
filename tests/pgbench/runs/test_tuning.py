import math

import pandas as pd
import pytest

from pgbench.errors import ConfigError
from pgbench.runs.tuning import Tune, read_tune, select


def table(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["task", "estimator", "point", "seed", "split", "value"])


def test_selection_uses_only_the_valid_split_and_the_tuning_seeds():
    # rloo, valid split, tuning seeds 100 and 101:
    #   point 0: (0.40 + 0.50) / 2 = 0.45    point 1: (0.60 + 0.20) / 2 = 0.40  -> point 0
    # the test split (point 1: 0.90) and test seed 0 (point 1: valid 0.99) would pick point 1
    rows = [
        ("arith", "rloo", 0, 100, "valid", 0.40),
        ("arith", "rloo", 0, 101, "valid", 0.50),
        ("arith", "rloo", 1, 100, "valid", 0.60),
        ("arith", "rloo", 1, 101, "valid", 0.20),
        ("arith", "rloo", 1, 100, "test", 0.90),
        ("arith", "rloo", 1, 101, "test", 0.90),
        ("arith", "rloo", 1, 0, "valid", 0.99),
        ("arith", "rloo", 1, 0, "test", 0.99),
        # grpo: point 1 = 0.30 beats point 0 = 0.25 = (0.2 + 0.3) / 2; a NaN (diverged) point
        # 2 ranks last
        ("arith", "grpo", 0, 100, "valid", 0.20),
        ("arith", "grpo", 0, 101, "valid", 0.30),
        ("arith", "grpo", 1, 100, "valid", 0.30),
        ("arith", "grpo", 1, 101, "valid", 0.30),
        ("arith", "grpo", 2, 100, "valid", math.nan),
        ("arith", "grpo", 2, 101, "valid", math.nan),
    ]
    chosen = select(table(rows), seeds=[100, 101]).set_index("estimator")
    assert chosen.loc["rloo", "point"] == 0 and chosen.loc["rloo", "objective"] == pytest.approx(
        0.45
    )
    assert chosen.loc["grpo", "point"] == 1 and chosen.loc["grpo", "objective"] == pytest.approx(
        0.30
    )
    assert list(chosen.seeds) == [2, 2]


def test_a_tie_goes_to_the_earlier_point():
    rows = [("arith", "rloo", p, s, "valid", 0.5) for p in (2, 0, 1) for s in (7, 8)]
    assert select(table(rows), seeds=[7, 8]).point.tolist() == [0]


def test_a_grid_is_every_combination_in_file_order():
    tune = Tune(seeds=(10,), grid=(("trainer.lr", (1e-4, 1e-3)), ("kl.coef", (0.0, 0.1))))
    assert tune.points("rloo", set()) == [
        {"trainer.lr": 1e-4, "kl.coef": 0.0},
        {"trainer.lr": 1e-4, "kl.coef": 0.1},
        {"trainer.lr": 1e-3, "kl.coef": 0.0},
        {"trainer.lr": 1e-3, "kl.coef": 0.1},
    ]


def test_a_space_draws_the_same_points_for_every_column_and_leaves_out_fixed_keys():
    tune = Tune(seeds=(10,), space="builtin", trials=4)
    rloo, grpo = tune.points("rloo", set()), tune.points("grpo", {"estimator.scale"})
    assert len(rloo) == len(grpo) == 4
    assert set(rloo[0]) == set(grpo[0]) == {"trainer.lr", "kl.coef"}
    assert [p["trainer.lr"] for p in rloo] == [p["trainer.lr"] for p in grpo]
    assert all(1e-5 <= p["trainer.lr"] <= 1e-3 for p in rloo)
    assert len({p["trainer.lr"] for p in rloo}) == 4
    assert (
        "estimator.scale" in Tune(seeds=(10,), space="builtin", trials=2).points("grpo", set())[0]
    )


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({"grid": {"trainer.lr": []}, "seeds": [10]}, "tune.grid is empty"),
        ({"grid": {}, "seeds": [10]}, "tune.grid is empty"),
        ({"grid": {"trainer.lr": [1e-4]}, "seeds": [10], "objective": "test_final"}, "test split"),
        ({"grid": {"trainer.lr": [1e-4]}, "seeds": []}, "tune.seeds must be a non-empty list"),
        ({"grid": {"trainer.lr": [1e-4]}, "seeds": [10, 10]}, "repeats a seed"),
        ({"seeds": [10]}, "needs either grid"),
        ({"space": "builtin", "seeds": [10]}, "needs trials"),
        ({"space": {"trainer.lr": {"low": 1}}, "trials": 2, "seeds": [10]}, "type float"),
        ({"grid": {"trainer.lr": [1e-4]}, "seeds": [10], "budget": 3}, "unknown tune.budget"),
    ],
)
def test_a_bad_tune_table_is_one_line_naming_it(tune, message):
    with pytest.raises(ConfigError, match=message) as err:
        read_tune(tune, "p.toml")
    assert str(err.value).startswith("p.toml: ") and "\n" not in str(err.value)


def test_tuning_seeds_must_not_be_test_seeds():
    tune = read_tune({"grid": {"trainer.lr": [1e-4]}, "seeds": [3, 12]}, "p.toml")
    tune.check_seeds(3)  # test seeds 0, 1, 2
    with pytest.raises(ConfigError, match=r"seeds \[3\] are test seeds \(0..9\)"):
        tune.check_seeds(10)
