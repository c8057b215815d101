"""A tuned suite's extra tables: sensitivity, robustness, the budget spent, changed verdicts.

sensitivity.csv: per task, column, tuned key and value, the tuning objective (a valid-split
quantity) averaged over the other tuned keys' values, per tuning seed; `mean` is over the
seeds and `low`/`high` their range.

Robustness of a column: the share of its tried points whose mean objective over the tuning
seeds is within delta of its best point's, where delta is the task's minimum detectable
effect (the median `mde` of the tuned leaderboard's pairs, in the metric's units). 1.0: every
point tried is as good as the best one, as far as these seeds can tell; 0.25 on a 4-point grid:
only the best point is.

A pair's verdict on a leaderboard is "a > b" when its Holm-corrected paired test says so
(p_holm < 0.05), else "no difference"; verdict_changes.csv lists the pairs whose verdict at
the shared defaults differs from the tuned one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pgbench.reports import render, stats

ALPHA = 0.05
SENSITIVITY = ["task", "estimator", "key", "value", "seeds", "mean", "low", "high"]
FIXED = ["task", "estimator", "point", "seed", "objective", "run_id", "tokens", "wall_clock_s"]


def tuned_keys(tuning: pd.DataFrame) -> list[str]:
    return [c for c in tuning.columns if c not in FIXED]


def sensitivity(tuning: pd.DataFrame) -> pd.DataFrame:
    """The objective against each tuned key (see the module docstring): SENSITIVITY columns."""
    rows = []
    for key in tuned_keys(tuning):
        per_seed = tuning.groupby(["task", "estimator", key, "seed"]).objective.mean()
        for (task, column, value), seeds in per_seed.groupby(level=[0, 1, 2]):
            rows.append(
                [task, column, key, value, len(seeds), seeds.mean(), seeds.min(), seeds.max()]
            )
    return pd.DataFrame(rows, columns=SENSITIVITY)


def robustness(tuning: pd.DataFrame, pair_table: pd.DataFrame) -> pd.DataFrame:
    """Per task and column: the share of points within the task's pair MDE of the best."""
    rows = []
    for (task, column), group in tuning.groupby(["task", "estimator"]):
        means = group.groupby("point").objective.mean()
        delta = pair_table[pair_table.task == task].mde.median()
        share = float((means >= means.max() - delta).mean()) if np.isfinite(delta) else math.nan
        rows.append([task, column, share])
    return pd.DataFrame(rows, columns=["task", "estimator", "robustness"])


def verdict_changes(tuned: pd.DataFrame, defaults: pd.DataFrame) -> pd.DataFrame:
    """Pairs whose verdict at the shared defaults differs from the tuned verdict."""
    columns = ["task", "pair", "verdict_defaults", "verdict_tuned"]
    after, before = stats.pair_verdicts(tuned, ALPHA), stats.pair_verdicts(defaults, ALPHA)
    rows = [[*key, before[key], after[key]] for key in after if key in before]
    return pd.DataFrame([r for r in rows if r[2] != r[3]], columns=columns)


def budget(tuning: pd.DataFrame) -> pd.DataFrame:
    """The tuning budget each column spent: points, seeds, runs, tokens and wall-clock."""
    return (
        tuning.groupby(["task", "estimator"])
        .agg(
            points=("point", "nunique"),
            seeds=("seed", "nunique"),
            runs=("run_id", "count"),
            tokens=("tokens", "sum"),
            wall_clock_s=("wall_clock_s", "sum"),
        )
        .reset_index()
    )


def selection(tuning: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """Each tuned column's selected point with its keys' values."""
    keys = tuning.drop_duplicates(["task", "estimator", "point"])
    keys = keys[["task", "estimator", "point", *tuned_keys(tuning)]]
    return chosen.merge(keys, on=["task", "estimator", "point"], how="left")


def sensitivity_figure(table: pd.DataFrame, task: str, path: Path) -> Path:
    """One panel per tuned key: each column's mean objective with its seed range shaded; keys
    whose values span a factor of 10 or more (learning rates) on a log axis."""
    rows = table[table.task == task]
    keys = list(dict.fromkeys(rows.key))
    fig, axes = render.plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 4.5), squeeze=False)
    palette = render.colours(rows.estimator)
    for ax, key in zip(axes[0], keys, strict=True):
        for column, line in rows[rows.key == key].groupby("estimator"):
            line = line.sort_values("value")
            x = line.value.to_numpy()
            ax.plot(x, line["mean"], marker="o", color=palette[column], label=column)
            ax.fill_between(x, line.low, line.high, color=palette[column], alpha=0.1, lw=0)
        values = pd.to_numeric(rows[rows.key == key].value, errors="coerce")
        if values.min() > 0 and values.max() / values.min() >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("tuning objective (valid split)")
        ax.set_title(f"{task}: sensitivity to {key}")
    axes[0][-1].legend(fontsize=7, ncol=2)
    return render._save(fig, path)


def write_tables(
    out: Path, tuned: dict, pair_table: pd.DataFrame, default_pairs: pd.DataFrame
) -> dict[str, pd.DataFrame]:
    """Write sensitivity.csv, selected.csv, tuning.csv, tuning_budget.csv, verdict_changes.csv."""
    tuning = tuned["tuning"]
    tables = {
        "tuning": tuning,
        "sensitivity": sensitivity(tuning),
        "selected": selection(tuning, tuned["selection"]),
        "tuning_budget": budget(tuning),
        "verdict_changes": verdict_changes(pair_table, default_pairs),
    }
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False)
    return tables
