"""Re-derive a finished suite's verdicts from its runs.csv, with no new runs.

    python benchmarks/verdicts_from_runs.py reports/examples/suite-cpu [more folders]
        [--margin fr_en=1.0] [--start arith=39.4]

For each folder: reads runs.csv (task, estimator, seed, metric, value, run_id: one final test
score per run) and writes verdicts.csv and verdicts.png into it with the suite report's code
(`pgbench.reports.verdicts.write`), then prints the decision rates and gains as Markdown.

The starting policy's test score per task is not in runs.csv: it is recovered exactly from
leaderboard.csv's `all` rows, whose means are the runs normalised as
(value - start) / (best - start) (`stats.normalise`), unless `--start` gives it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pgbench.reports import render, stats, verdicts


def start_from_leaderboard(scores: pd.DataFrame, board: pd.DataFrame) -> dict[str, float]:
    """Each task's start score, solved from the `all` rows' normalised means.

    An estimator's `all` mean is sum over its runs of (v - s_t) / (B_t - s_t), divided by its
    runs, with B_t the task's best run. Where the starts of its other tasks are known, that is
    one linear equation in s_t: s_t = (sum v - S B_t) / (k - S), with k its runs on task t and
    S its normalised sum on t. Tasks are solved one at a time until none is left.
    """
    best = scores.groupby("task").value.max()
    means = board[board.task == stats.ALL].set_index("estimator")
    start: dict[str, float] = {}
    while len(start) < len(best):
        found = len(start)
        for estimator, runs in scores.groupby("estimator"):
            unknown = set(runs.task) - set(start)
            if len(unknown) != 1 or estimator not in means.index:
                continue
            (task,) = unknown
            total = float(means.loc[estimator, "mean"]) * len(runs)
            for other, rows in runs[runs.task != task].groupby("task"):
                total -= ((rows.value - start[other]) / (best[other] - start[other])).sum()
            values = runs.value[runs.task == task]
            start[task] = float((values.sum() - total * best[task]) / (len(values) - total))
        if len(start) == found:
            raise SystemExit(f"cannot solve the start of {sorted(set(best.index) - set(start))}")
    return start


def pairs_of(items: list[str]) -> dict[str, float]:
    """`task=value` arguments as a dict."""
    return {key: float(value) for key, value in (item.split("=", 1) for item in items)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="suite report folders")
    parser.add_argument("--margin", nargs="*", default=[], help="task=margin overrides")
    parser.add_argument("--start", nargs="*", default=[], help="task=start score overrides")
    args = parser.parse_args()
    for folder in args.folders:
        runs = pd.read_csv(folder / "runs.csv")
        scores = runs[["task", "estimator", "seed", "value"]]
        board = folder / "leaderboard.csv"  # absent for joined runs: give --start
        start = start_from_leaderboard(scores, pd.read_csv(board)) if board.is_file() else {}
        start |= pairs_of(args.start)
        margin = verdicts.margins(sorted(scores.task.unique()), pairs_of(args.margin))
        result = verdicts.write(folder, scores, start, margin)
        print(f"## {folder}\n\nstart: {start}\n")
        print(render.frame_markdown(result["rates"]) + "\n")
        print(render.frame_markdown(result["gains"]) + "\n")


if __name__ == "__main__":
    main()
