import pandas as pd
import pytest
from mlflow import MlflowClient

from pgbench.cli import main
from pgbench.errors import ConfigError
from pgbench.reports.build import build_report


def compare(run_overrides, comparison, seeds, extra=()):
    values = run_overrides | {"trainer.steps": "3", "eval.every": "1", "eval.size": "8"}
    values.pop("output_dir")
    args = [f"{k}={v}" for k, v in values.items()]
    code = main(
        [
            "compare",
            *args,
            "estimators=reinforce,rloo",
            f"seeds={seeds}",
            f"compare.id={comparison}",
            *extra,
        ]
    )
    assert code == 0


def test_report_of_a_small_comparison(run_overrides, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    compare(run_overrides, "cmp-r", 2)
    uri = run_overrides["tracking.uri"]
    code = main(["report", "comparison=cmp-r", f"tracking.uri={uri}", "report.out=out"])
    assert code == 0
    out = tmp_path / "out"
    for name in [
        "report.md",
        "report.html",
        "runs.csv",
        "reward_vs_step.png",
        "reward_vs_time.png",
        "valid_chrf_vs_tokens.png",
    ]:
        assert (out / name).stat().st_size > 0, name
    markdown = (out / "report.md").read_text()
    assert "| reinforce | 2 |" in markdown and "| rloo | 2 |" in markdown
    assert "Welch" in markdown and "unavailable" not in markdown
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert "<h1>pgbench report</h1>" in html and "<h2>Paired comparison</h2>" in html
    assert ">NaN<" not in html and "# " not in html

    # numbers match a direct pandas computation on the same MLflow data
    client = MlflowClient(uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("fr_en").experiment_id],
        "tags.`pgbench.comparison` = 'cmp-r'",
    )

    def mean_step_s(run_id: str) -> float:
        history = client.get_metric_history(run_id, "train/step_time_s")
        return sum(m.value for m in history) / len(history)

    direct = pd.DataFrame(
        [
            {
                "estimator": r.data.params["estimator"],
                "chrf": r.data.metrics["test/chrf"],
                "step_s": mean_step_s(r.info.run_id),
            }
            for r in runs
        ]
    )
    table = build_report(uri, "cmp-r", "", tmp_path / "again")["table"].set_index("estimator")
    for estimator, group in direct.groupby("estimator"):
        assert table.loc[estimator, "test/chrf"] == pytest.approx(group.chrf.mean())
        half = 12.706 * group.chrf.std(ddof=1) / 2**0.5  # t(0.975, 1 dof) * s / sqrt(n)
        assert table.loc[estimator, "test/chrf_ci"] == pytest.approx(half, rel=1e-3)
        assert table.loc[estimator, "step_time_s_mean"] == pytest.approx(group.step_s.mean())
    check_leaderboard_and_pairs(client, runs, out)
    tidy = pd.read_csv(out / "runs.csv")
    assert set(tidy.columns) == {"run_id", "estimator", "seed", "metric", "step", "value"}
    assert len(tidy[tidy.metric == "train/reward_mean"]) == 4 * 3


def check_leaderboard_and_pairs(client: MlflowClient, runs: list, out) -> None:
    """leaderboard.csv and pairs.csv hold the contract columns and the runs' final test/chrf."""
    board = pd.read_csv(out / "leaderboard.csv")
    found = pd.read_csv(out / "pairs.csv")
    leaderboard = "task estimator n mean iqm ci_low ci_high rank"
    contract = "task a b mean_diff diff_ci_low diff_ci_high prob_improvement p_holm mde"
    assert list(board.columns) == leaderboard.split()
    assert list(found.columns[:9]) == contract.split()
    final = pd.DataFrame(
        [
            {
                "estimator": r.data.params["estimator"],
                "seed": int(r.data.params["seed"]),
                "chrf": r.data.metrics["test/chrf"],
                # scored before the first step, then at the end
                "before": client.get_metric_history(r.info.run_id, "test/chrf")[0].value,
            }
            for r in runs
        ]
    )
    per_task = board[board.task == "fr_en"].set_index("estimator")
    for estimator, group in final.groupby("estimator"):
        assert per_task.loc[estimator, "n"] == 2
        assert per_task.loc[estimator, "mean"] == pytest.approx(group.chrf.mean())
        assert per_task.loc[estimator, "rank"] >= 1
    (pair,) = found.itertuples()
    wide = final.pivot(index="seed", columns="estimator", values="chrf")
    assert pair.n == 2
    assert pair.mean_diff == pytest.approx((wide[pair.a] - wide[pair.b]).mean())
    # `all`: (value - start) / (best - start), start = the starting policy's test/chrf
    start, best = final.before.mean(), final.chrf.max()
    aggregate = board[board.task == "all"].set_index("estimator")
    if best > start:
        for estimator, group in final.groupby("estimator"):
            normalised = (group.chrf - start) / (best - start)
            assert aggregate.loc[estimator, "mean"] == pytest.approx(normalised.mean())
    else:  # no run beat the starting policy: nothing to normalise
        assert aggregate.empty
    markdown = (out / "report.md").read_text()
    assert "## Paired comparison" in markdown and "## Leaderboard" in markdown
    assert f"| fr_en | {pair.a} - {pair.b} | 2 |" in markdown


def test_one_seed_renders_without_intervals(run_overrides, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    compare(run_overrides, "cmp-one", 1)
    capsys.readouterr()
    main(["report", "comparison=cmp-one", f"tracking.uri={run_overrides['tracking.uri']}"])
    assert "confidence intervals are unavailable" in capsys.readouterr().out
    assert "unavailable here" in (tmp_path / "reports_out/cmp-one/report.md").read_text()


def test_mixed_budgets_are_refused(run_overrides, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    compare(run_overrides, "cmp-mix", 1)  # 3 steps
    values = run_overrides | {"trainer.steps": "2", "eval.every": "0"}
    values.pop("output_dir")
    args = [f"{k}={v}" for k, v in values.items()]
    assert main(["compare", *args, "estimators=rloo", "seeds=1", "compare.id=cmp-short"]) == 0
    client = MlflowClient(run_overrides["tracking.uri"])
    experiment = client.get_experiment_by_name("fr_en").experiment_id
    (short,) = client.search_runs([experiment], "tags.`pgbench.comparison` = 'cmp-short'")
    client.set_tag(short.info.run_id, "pgbench.comparison", "cmp-mix")
    with pytest.raises(ConfigError, match="differ in trainer.steps"):
        build_report(run_overrides["tracking.uri"], "cmp-mix", "", tmp_path / "r")


def test_report_needs_one_source(capsys):
    assert main(["report"]) == 2
    assert "exactly one of comparison=<id> or experiment=<name>" in capsys.readouterr().err
