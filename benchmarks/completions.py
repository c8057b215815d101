"""Sample completions before and after training, for a suite's best and worst column.

    python benchmarks/completions.py runs/suite-cpu_smollm2 [--task fr_en] [--seed 0] [--n 4]

Reads the suite's leaderboard.csv (best and worst column by mean final test metric) and the
test-split rows of each column's run at `--seed`, `<suite>/<task>-<column>[-t<p>]-s<seed>/
samples.csv` (step 0 is the starting policy, the same for every column; the last step is the
trained one), and prints a Markdown table: source, reference, start, the best column's and
the worst column's completion.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def test_completions(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The test split's saved completions at the start and at the end of one run."""
    samples = pd.read_csv(run_dir / "samples.csv")
    test = samples[samples.split == "test"]
    return test[test.step == 0], test[test.step == test.step.max()]


def run_dir(suite: Path, task: str, column: str, seed: int) -> Path:
    """The column's test run at `seed`: `<task>-<column>-s<seed>`, or in a tuned suite the
    selected point's `<task>-<column>-t<p>-s<seed>` (the one that finished)."""
    found = [
        d
        for d in [suite / f"{task}-{column}-s{seed}", *suite.glob(f"{task}-{column}-t*-s{seed}")]
        if (d / "summary.json").exists()
    ]
    if len(found) != 1:
        raise SystemExit(f"expected one finished run of {column} at seed {seed}, found {found}")
    return found[0]


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", type=Path, help="the suite's output directory")
    parser.add_argument("--task", default="fr_en")
    parser.add_argument("--seed", type=int, default=0, help="test seed whose runs are shown")
    parser.add_argument("--n", type=int, default=4, help="completions shown")
    args = parser.parse_args()
    board = pd.read_csv(args.suite / "leaderboard.csv")
    board = board[board.task == args.task].sort_values("mean", ascending=False)
    best, worst = board.estimator.iloc[0], board.estimator.iloc[-1]
    start, best_end = test_completions(run_dir(args.suite, args.task, best, args.seed))
    _, worst_end = test_completions(run_dir(args.suite, args.task, worst, args.seed))
    print(
        f"best `{best}` ({board['mean'].iloc[0]:.2f}), worst `{worst}` "
        f"({board['mean'].iloc[-1]:.2f}); seed {args.seed}, test split\n"
    )
    print(f"| source | reference | start | {best} | {worst} |")
    print("| --- | --- | --- | --- | --- |")
    rows = zip(start.itertuples(), best_end.itertuples(), worst_end.itertuples(), strict=True)
    for i, (before, good, bad) in enumerate(rows):
        if i == args.n:
            break
        assert before.source == good.source == bad.source, "runs saved different examples"
        cells = [
            before.source,
            before.reference,
            before.completion,
            good.completion,
            bad.completion,
        ]
        print("| " + " | ".join(cell(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
