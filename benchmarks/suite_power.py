"""What difference can a finished suite detect? Its power, from its runs.csv, with no new runs.

    python benchmarks/suite_power.py reports/examples/suite-cpu [more folders] [--seeds 10,20,30]

For each task of each folder: the paired differences between every two columns, seed by seed,
give the sd of a pair's difference (the median over pairs, and the 90th percentile). The
minimum detectable effect (MDE) is the true difference a pair's paired t-test detects 80% of
the time with n seeds (statsmodels `TTestPower`), at two levels: the report's first Holm step
(alpha / m over the m pairs of the report, the least any detected pair needed) and a single
pre-declared comparison (alpha = 5%, as a probe family of one). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from statsmodels.stats.power import TTestPower

POWER = 0.8


def pair_sds(runs: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per task: the sd over seeds of every pair's paired difference."""
    out = {}
    for task, group in runs.groupby("task"):
        wide = group.pivot(index="seed", columns="estimator", values="value")
        sds = [(wide[a] - wide[b]).dropna().std(ddof=1) for a, b in combinations(wide.columns, 2)]
        out[task] = np.asarray(sds)
    return out


def mde(sd: float, seeds: int, alpha: float) -> float:
    """The difference detected 80% of the time by a paired t-test on `seeds` seeds."""
    return float(sd * TTestPower().solve_power(nobs=seeds, alpha=alpha, power=POWER))


def table(folder: Path, seeds: list[int]) -> pd.DataFrame:
    runs = pd.read_csv(folder / "runs.csv")
    sds = pair_sds(runs)
    pairs = sum(len(v) for v in sds.values())
    rows = []
    for task, values in sds.items():
        ran = int(runs[runs.task == task].groupby("estimator").seed.nunique().median())
        for n in sorted({ran, *seeds}):
            sd, high = float(np.median(values)), float(np.quantile(values, 0.9))
            rows.append(
                [folder.name, task, len(values), n, sd, mde(sd, n, 0.05 / pairs)]
                + [mde(high, n, 0.05 / pairs), mde(sd, n, 0.05)]
            )
    columns = ["suite", "task", "pairs", "seeds", "sd_diff", "mde_report", "mde_report_p90"]
    return pd.DataFrame(rows, columns=[*columns, "mde_one_test"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="finished suites (runs.csv)")
    parser.add_argument("--seeds", default="10,20,30", help="seed counts to tabulate")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    frame = pd.concat([table(f, seeds) for f in args.folders], ignore_index=True)
    print(frame.round(2).to_markdown(index=False))


if __name__ == "__main__":
    main()
