from collections import Counter

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from pgbench.runs.protocol import plan_suite
from pgbench.runs.suite import open_storage, run_suite

GRID = '[tune]\ngrid = {"trainer.lr" = [1e-4, 3e-3]}\nseeds = [10, 11]\n'


def protocol(tmp_path, estimators: str, tune: str = GRID, seeds: int = 2) -> str:
    path = tmp_path / "tuned.toml"
    path.write_text(
        f'[suite]\ntasks = ["fr_en"]\nestimators = [{estimators}]\nseeds = {seeds}\n{tune}'
    )
    return str(path)


def fast(run_overrides, tmp_path) -> dict[str, str]:
    values = run_overrides | {"trainer.steps": "2", "eval.every": "1", "checkpoint.every": "0"}
    return values | {"output_dir": str(tmp_path / "suite"), "trainer.lr": "1e-4"}


def test_a_tuned_suite_tests_the_selected_point_and_reports_sensitivity(run_overrides, tmp_path):
    values = fast(run_overrides, tmp_path) | {"suite": protocol(tmp_path, '"reinforce", "rloo"')}
    plan = plan_suite(values)
    assert sum(c.tuning for c in plan.cells) == 2 * 2 * 2  # columns x points x tuning seeds
    result = run_suite(plan)
    assert result["missing"] == [] and result["runs"] == 4
    out = tmp_path / "suite"
    tuning = pd.read_csv(out / "tuning.csv")
    assert len(tuning) == 8 and set(tuning.seed) == {10, 11}
    # the selection is the best mean valid objective of the tuning runs, recomputed by hand
    means = tuning.groupby(["estimator", "trainer.lr"]).objective.mean()
    selected = pd.read_csv(out / "selected.csv").set_index("estimator")
    client = MlflowClient(values["tracking.uri"])
    runs = pd.read_csv(out / "runs.csv")
    for column in ("reinforce", "rloo"):
        best = means[column].idxmax() if means[column].nunique() > 1 else 1e-4
        assert selected.loc[column, "trainer.lr"] == best
        lrs = {
            client.get_run(r).data.params["trainer.lr"]
            for r in runs[runs.estimator == column].run_id
        }
        assert {float(v) for v in lrs} == {best}
    # tuning runs never score the test split
    for run_id in tuning.run_id:
        metrics = client.get_run(run_id).data.metrics
        assert "eval/chrf" in metrics and not any(k.startswith("test/") for k in metrics)
        assert client.get_run(run_id).data.tags["pgbench.phase"] == "tune"
    # each run's valid-curve area (the valid_auc objective): trapezoids over steps / steps
    study = optuna.load_study(study_name=f"suite-{plan.id}", storage=open_storage(plan))
    trial = next(t for t in study.trials if t.user_attrs.get("run_id") == tuning.run_id[0])
    points = sorted(
        (p.step, p.value) for p in client.get_metric_history(tuning.run_id[0], "eval/chrf")
    )
    area = sum(
        (s1 - s0) * (v0 + v1) / 2
        for (s0, v0), (s1, v1) in zip(points[:-1], points[1:], strict=True)
    )
    assert len(points) == 3  # steps 0, 1, 2 (eval.every=1)
    assert trial.user_attrs["valid_auc"] == pytest.approx(area / (points[-1][0] - points[0][0]))
    assert trial.user_attrs["valid_final"] == pytest.approx(points[-1][1])
    sensitivity = pd.read_csv(out / "sensitivity.csv")
    assert len(sensitivity) == 4 and set(sensitivity.seeds) == {2}
    row = sensitivity[(sensitivity.estimator == "rloo") & (sensitivity.value == 3e-3)].iloc[0]
    runs_at = tuning[(tuning.estimator == "rloo") & (tuning["trainer.lr"] == 3e-3)].objective
    assert (row["mean"], row.low, row.high) == pytest.approx(
        (runs_at.mean(), runs_at.min(), runs_at.max())
    )
    assert (out / "sensitivity_fr_en.png").stat().st_size > 0
    board = pd.read_csv(out / "leaderboard.csv")
    robust = board[board.task == "fr_en"].robustness
    assert robust.between(0.5, 1.0).all()  # the best of 2 points, and maybe the other
    assert len(pd.read_csv(out / "leaderboard_defaults.csv")) >= 2
    budget = pd.read_csv(out / "tuning_budget.csv")
    assert set(budget.runs) == {4} and (budget.tokens > 0).all()
    text = (out / "suite.md").read_text()
    assert "## Tuning" in text and "## Leaderboard at the shared defaults" in text


def test_defaults_false_ranks_no_column_at_the_defaults(run_overrides, tmp_path):
    """A selected point equal to the defaults runs the defaults cells (the same runs), but
    with `defaults = false` they are the tuned leaderboard only, not a second, untuned one."""
    grid = '[tune]\ngrid = {"trainer.lr" = [1e-4]}\nseeds = [10]\ndefaults = false\n'
    values = fast(run_overrides, tmp_path) | {"suite": protocol(tmp_path, '"rloo"', grid, 1)}
    result = run_suite(plan_suite(values))
    assert result["missing"] == [] and result["runs"] == 1
    out = tmp_path / "suite"
    assert list(pd.read_csv(out / "runs.csv").estimator) == ["rloo"]
    assert (out / "fr_en-rloo-s0" / "summary.json").exists()  # the defaults cell ran
    assert not (out / "leaderboard_defaults.csv").exists()
    assert "## Leaderboard at the shared defaults" not in (out / "suite.md").read_text()


def tuning_seed(trial) -> bool:
    return int(trial.user_attrs["cell"].rsplit("-s", 1)[1]) >= 10  # tuning seeds: 10, 11


def test_a_killed_suite_resumes_in_both_phases(run_overrides, tmp_path, kill_worker):
    values = fast(run_overrides, tmp_path) | {
        "suite": protocol(tmp_path, '"rloo"', GRID + "defaults = false\n", seeds=4),
        "threads": "1",
    }
    plan = plan_suite(values)
    args = ["suite", *(f"{k}={v}" for k, v in values.items())]
    name = f"suite-{plan.id}"
    for tuning in (True, False):  # kill the suite while a tuning cell runs, then a test cell
        killed = kill_worker(
            args, name, lambda: open_storage(plan), lambda t, want=tuning: tuning_seed(t) == want
        )
        assert tuning_seed(killed) == tuning
    result = run_suite(plan)
    assert result["missing"] == [] and result["runs"] == 4
    study = optuna.load_study(study_name=name, storage=open_storage(plan))
    done = Counter(t.user_attrs["cell"] for t in study.get_trials(states=(TrialState.COMPLETE,)))
    assert len(done) == 8 and set(done.values()) == {1}  # 4 tuning + 4 test runs, each once
    assert len(study.get_trials(states=(TrialState.FAIL,))) == 2  # the two killed
