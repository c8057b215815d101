"""`pgbench report`: collect runs from MLflow, summarise, render, log as a report run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient

from pgbench import tasks
from pgbench.reports import collect, render, stats, tables
from pgbench.train.tracking import MLflowTracker

CURVES = ["train/reward_mean", "train/tokens", "train/wall_clock_s"]
VARIANCE = ["total_variance", "mse_to_reference", "cosine_to_reference", "snr"]


def variance_frame(client: MlflowClient, task: str, names: list[str]) -> pd.DataFrame | None:
    """Latest `pgbench variance` results for these estimators, if any were logged."""
    experiment = client.get_experiment_by_name(f"{task}-variance")
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        "attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    metrics = runs[0].data.metrics
    rows = [
        {"estimator": n, **{k: metrics[f"{n}/{k}"] for k in VARIANCE}}
        for n in names
        if f"{n}/total_variance" in metrics
    ]
    return pd.DataFrame(rows) if rows else None


def comparison_tables(
    client: MlflowClient, runs: pd.DataFrame, task: str, metric: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Leaderboard and paired comparisons of each run's final `test/<metric>` (stats.py)."""
    main = f"test/{metric}"
    scores = runs.assign(task=task, value=runs[main])[["task", "estimator", "seed", "value"]]
    scores = scores.dropna(subset=["value"])
    start = collect.start_score(client, runs, main)
    pair_table = stats.pairs(scores)
    board = stats.leaderboard(
        scores, start=None if start is None else {task: start}, pair_table=pair_table
    )
    return board, pair_table


def paired_section(board: pd.DataFrame, pair_table: pd.DataFrame, metric: str) -> str:
    """Markdown of the leaderboard and the paired comparisons, with how to read them."""
    return "\n\n".join(
        [
            "## Leaderboard",
            f"Final test/{metric} per estimator: mean over seeds with its 95% percentile "
            "bootstrap interval, and the interquartile mean (IQM). Rank 1 is the best mean plus "
            "every estimator not significantly different from it (Holm-corrected paired t-test, "
            "alpha 0.05), then the same on the rest. Task `all`: scores normalised to 0 at the "
            "starting policy (the worst run if its score was not logged) and 1 at the best run, "
            "IQM with a stratified bootstrap interval (Agarwal et al. 2021), unranked.",
            render.leaderboard_markdown(board),
            "## Paired comparison",
            "a - b over the seeds both ran (same seed, same prompts): mean difference with its "
            "95% bootstrap interval (seeds resampled), P(a > b) over runs (ties count 1/2), the "
            "paired t-test's p-value Holm-corrected over all pairs, the minimum detectable "
            "effect (MDE: the difference a paired t-test on these seeds detects with power 0.8 "
            "at alpha 0.05) and the seeds needed to detect the observed difference likewise.",
            render.pairs_markdown(pair_table),
        ]
    )


def _figures(
    history: pd.DataFrame, runs: pd.DataFrame, metric: str, reward: str, out: Path
) -> list[Path]:
    """Mean curves per estimator: train reward vs step and vs wall-clock, valid `metric` vs
    completion tokens generated."""
    # per-step rewards swing with each step's prompts: smooth over a tenth of the run
    window = max(render.SMOOTH, int(runs["trainer.steps"].iloc[0]) // 10)
    return [
        render.line_figure(
            history,
            "step",
            "train/reward_mean",
            "training step",
            f"train reward ({reward})",
            "Reward vs step",
            out / "reward_vs_step.png",
            smooth=window,
        ),
        render.line_figure(
            history,
            "train/wall_clock_s",
            "train/reward_mean",
            "wall-clock (s)",
            f"train reward ({reward})",
            "Reward vs wall-clock",
            out / "reward_vs_time.png",
            smooth=window,
        ),
        render.line_figure(
            history.assign(metric=history.metric),
            "train/tokens",
            f"eval/{metric}",
            "completion tokens generated",
            f"valid {metric} (0-100)",
            f"Valid {metric} vs tokens",
            out / f"valid_{metric}_vs_tokens.png",
            smooth=1,
        ),
    ]


def _intro(
    label: str, runs: pd.DataFrame, task: str, metric: str, table: pd.DataFrame
) -> list[str]:
    """The report's opening paragraphs: what was compared, and how to read the summary table."""
    seeds = runs.groupby("estimator").seed.nunique()
    return [
        f"Report of {label}: task {task}, {len(runs)} runs, "
        f"estimators {', '.join(sorted(runs.estimator.unique()))}, seeds per estimator "
        f"{', '.join(f'{e} {n}' for e, n in seeds.items())}.",
        "Cells are means over seeds ± the half-width of a Student-t 95% confidence interval; "
        + ("intervals need 2 or more seeds and are unavailable here. " if seeds.min() < 2 else "")
        + f"p is Welch's two-sided t-test of test/{metric} against the best estimator "
        f"({table.attrs['best']}).",
        f"auc_valid is the area under valid {metric} vs step divided by the steps; "
        "reward_at_equal_tokens / _time is the train reward when every run had generated "
        f"{table.attrs['budget_tokens']:.0f} tokens / had run "
        f"{table.attrs['budget_seconds']:.0f} s.",
    ]


def build_report(uri: str, comparison: str, experiment: str, out: Path) -> dict[str, Any]:
    """Write report.md, report.html, runs.csv, leaderboard.csv, pairs.csv and figures under
    `out`; log them to MLflow."""
    client = MlflowClient(uri)
    runs = collect.runs_frame(collect.find_runs(client, comparison, experiment))
    task = runs.task.iloc[0]
    metric = tasks.REGISTRY.get_class(task).metric
    reward = runs["task.reward"].dropna().iloc[0] if runs["task.reward"].notna().any() else metric
    history = collect.history_frame(client, runs, [*CURVES, *tables.MEANS, f"eval/{metric}"])
    table = tables.summary_table(runs, history, metric)
    out.mkdir(parents=True, exist_ok=True)
    history.to_csv(out / "runs.csv", index=False)
    board, pair_table = comparison_tables(client, runs, task, metric)
    board.to_csv(out / "leaderboard.csv", index=False)
    pair_table.to_csv(out / "pairs.csv", index=False)
    figures = _figures(history, runs, metric, reward, out)
    variance = variance_frame(client, task, sorted(runs.estimator.unique()))
    if variance is not None:
        figures.append(render.variance_figure(variance, out / "gradient_variance.png"))
    label = f"comparison {comparison}" if comparison else f"experiment {experiment}"
    intro = _intro(label, runs, task, metric, table)
    markdown = "\n\n".join(["# pgbench report", *intro, render.markdown_table(table)])
    markdown += "\n\n" + paired_section(board, pair_table, metric)
    if variance is not None:
        markdown += "\n\n## Gradient variance (latest `pgbench variance`)\n\n"
        markdown += render.frame_markdown(variance)
    markdown += "\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in figures) + "\n"
    (out / "report.md").write_text(markdown)
    (out / "report.html").write_text(
        render.html_page(
            "\n".join(["# pgbench report", *intro]),
            {"Runs": table, "Leaderboard": board, "Paired comparison": pair_table},
            figures,
        )
    )
    tracker = MLflowTracker(
        uri,
        f"{task}-reports",
        run_name=f"report-{comparison or experiment}",
        tags={"pgbench.report_of": comparison or experiment},
    )
    tracker.log_artifact(out)
    tracker.finish()
    best = table.set_index("estimator").loc[table.attrs["best"]]
    return {
        "out": str(out),
        "table": table,
        "best": table.attrs["best"],
        "best_score": best[f"test/{metric}"],
        "runs": len(runs),
        "leaderboard": board,
        "pairs": pair_table,
        "intervals": not math.isnan(best.get(f"test/{metric}_ci", math.nan)),
    }
