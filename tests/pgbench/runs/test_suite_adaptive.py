import pandas as pd
import pytest

from pgbench.errors import ConfigError
from pgbench.runs import suite
from pgbench.runs.suite import plan_suite, run_suite
from tests.pgbench.runs.test_suite import fast

# [seeds]: judge after 3 seeds, then add 1 to the columns of undecided pairs, up to 4
PROTOCOL = """[suite]
tasks = ["fr_en"]
estimators = ["reinforce", "rloo", "grpo"]
id = "adaptive"
[seeds]
initial = 3
max = 4
batch = 1
"""


def synthetic(cell) -> float:
    """Test scores that decide two pairs at the first look and leave one open: grpo is 50
    chrF above the others; reinforce and rloo differ by -3, +3, -3, ... (fr_en's margin: 1)."""
    if cell.estimator == "grpo":
        return 60.0 + 0.1 * cell.seed
    return 10.0 + (3.0 * (-1) ** cell.seed if cell.estimator == "rloo" else 0.0)


@pytest.fixture
def scored(monkeypatch):
    """Each run trains (2 steps on the micro policy) and records as usual; its test value is
    `synthetic`'s."""
    record = suite._record

    def record_synthetic(plan, cell, trial, summary):
        record(plan, cell, trial, summary)
        return synthetic(cell)

    monkeypatch.setattr(suite, "_record", record_synthetic)


def interrupt_at(monkeypatch, calls: set[int]) -> None:
    """Ctrl-C in the middle of these attempts (1-based), as a user stopping the suite."""
    attempt, count = suite.attempt, [0]

    def interrupted(plan, cell, trial, worker):
        count[0] += 1
        if count[0] in calls:
            trial.set_user_attr("interrupted", True)
            raise KeyboardInterrupt
        return attempt(plan, cell, trial, worker)

    monkeypatch.setattr(suite, "attempt", interrupted)


def test_seeds_are_added_only_to_columns_with_an_undecided_pair_and_survive_interrupts(
    run_overrides, tmp_path, scored, monkeypatch
):
    protocol = tmp_path / "adaptive.toml"
    protocol.write_text(PROTOCOL)
    values = fast(run_overrides, tmp_path) | {"suite": str(protocol)}
    plan = plan_suite(values)
    assert plan.design.looks == (3, 4) and plan.design.pairs == 3
    assert len(plan.cells) == 9  # the first look's seeds; seed 3 waits in the reserve
    # stopped in the first look and again in the added seeds' look: each rerun continues
    interrupt_at(monkeypatch, {5, 11})
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            run_suite(plan_suite(values))
    outcome = run_suite(plan_suite(values))
    assert not outcome["missing"] and not outcome["failed"]
    out = tmp_path / "suite"
    runs = pd.read_csv(out / "runs.csv")
    seeds = runs.groupby("estimator").seed.apply(sorted).to_dict()
    assert seeds == {"grpo": [0, 1, 2], "reinforce": [0, 1, 2, 3], "rloo": [0, 1, 2, 3]}
    judged = pd.read_csv(out / "verdicts.csv").set_index(["a", "b"])
    assert judged.loc[("grpo", "reinforce"), "verdict"] == "A better"
    assert judged.loc[("grpo", "rloo"), "n_seeds"] == 3
    assert judged.loc[("reinforce", "rloo"), "verdict"] == "undecided"
    assert judged.loc[("reinforce", "rloo"), "n_seeds"] == 4
    spent = pd.read_csv(out / "seeds.csv").set_index("estimator")
    assert spent.seeds.to_dict() == {"grpo": 3, "reinforce": 4, "rloo": 4}
    report = (out / "suite.md").read_text()
    assert "## Seeds spent (adaptive seeds)" in report and "11 test runs in all" in report
    # the command again: everything is decided or at the max, nothing runs
    monkeypatch.setattr(suite, "attempt", None)  # any attempt would fail loudly
    assert run_suite(plan_suite(values))["runs"] == 11


def test_a_seeds_table_is_checked(tmp_path):
    protocol = tmp_path / "bad.toml"
    values = {"suite": str(protocol), "output_dir": str(tmp_path / "o")}
    protocol.write_text(PROTOCOL.replace("max = 4", "max = 2"))
    with pytest.raises(ConfigError, match=r"\[seeds\] needs max >= initial"):
        plan_suite(values)
    protocol.write_text(PROTOCOL.replace("batch = 1", "step = 1"))
    with pytest.raises(ConfigError, match=r"\[seeds\] takes initial, max and batch"):
        plan_suite(values)
    # on the command line: seeds and suite.seeds_max, which leave an unnamed suite's id alone
    inline = {"tasks": "fr_en", "estimators": "rloo,grpo", "output_dir": str(tmp_path / "o")}
    fixed = plan_suite(inline | {"seeds": "10"})
    adaptive = plan_suite(inline | {"seeds": "10", "suite.seeds_max": "30"})
    assert fixed.design is None and adaptive.id == fixed.id
    assert adaptive.design.looks == (10, 15, 20, 25, 30) and adaptive.design.pairs == 1
