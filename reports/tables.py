"""Summary statistics of a comparison: per-estimator means, 95% intervals and tests.

Intervals are Student-t 95% confidence intervals of the mean over seeds (unavailable,
NaN, with one seed). Each estimator is tested against the best one (highest mean of the
main test metric) with Welch's t-test (two-sided, unequal variances).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

MEANS = ["train/step_time_s", "train/rollout_tokens_per_s"]  # per-step metrics shown as means


def mean_ci(values: pd.Series) -> tuple[float, float]:
    """Mean and half-width of its 95% t-interval (NaN half-width for fewer than 2 values)."""
    values = values.dropna()
    if len(values) < 2:
        return float(values.mean()) if len(values) else math.nan, math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)


def at_budget(history: pd.DataFrame, x: str, y: str, budget: float) -> pd.Series:
    """Per run, `y` at the last point where `x` <= budget (x and y are metrics logged per step)."""
    wide = history[history.metric.isin([x, y])].pivot_table(
        index=["run_id", "step"], columns="metric", values="value"
    )
    wide = wide.dropna().reset_index()
    within = wide[wide[x] <= budget]
    return within.sort_values("step").groupby("run_id")[y].last()


def area_under_curve(history: pd.DataFrame, metric: str) -> pd.Series:
    """Per run, the trapezoid area under metric-vs-step divided by the steps covered."""
    curves = history[history.metric == metric].sort_values("step").groupby("run_id")
    return curves.apply(
        lambda c: np.trapezoid(c.value, c.step) / max(c.step.max() - c.step.min(), 1)
    )


def summary_table(runs: pd.DataFrame, history: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per estimator; `<col>` is the mean over seeds, `<col>_ci` its 95% half-width."""
    per_run = runs.set_index("run_id")
    columns = [c for c in per_run.columns if c.startswith("test/")]
    columns += ["train/kl", "train/peak_memory_mb"]  # at the end of the run
    per_run = per_run[["estimator", *[c for c in columns if c in per_run]]].copy()
    for name in MEANS:  # averaged over the run's steps, not its last step
        steps = history[history.metric == name]
        per_run[f"{name.removeprefix('train/')}_mean"] = steps.groupby("run_id").value.mean()
    per_run["auc_valid"] = area_under_curve(history, f"eval/{metric}")
    tokens = history[history.metric == "train/tokens"].groupby("run_id").value.max().min()
    clock = history[history.metric == "train/wall_clock_s"].groupby("run_id").value.max().min()
    per_run["reward_at_equal_tokens"] = at_budget(
        history, "train/tokens", "train/reward_mean", tokens
    )
    per_run["reward_at_equal_time"] = at_budget(
        history, "train/wall_clock_s", "train/reward_mean", clock
    )
    rows = []
    for estimator, group in per_run.groupby("estimator"):
        row = {"estimator": estimator, "seeds": len(group)}
        for column in group.columns.drop("estimator"):
            row[column], row[f"{column}_ci"] = mean_ci(group[column])
        rows.append(row)
    table = pd.DataFrame(rows)
    main = f"test/{metric}"
    best = table.loc[table[main].idxmax(), "estimator"]
    table["p_vs_best"] = [
        welch_p(
            per_run.loc[per_run.estimator == e, main], per_run.loc[per_run.estimator == best, main]
        )
        for e in table.estimator
    ]
    table.attrs |= {"best": best, "budget_tokens": tokens, "budget_seconds": clock}
    return table


def welch_p(a: pd.Series, b: pd.Series) -> float:
    """Two-sided Welch's t-test p-value (NaN when either side has fewer than 2 values, or
    neither varies). From summary statistics: scipy's ttest_ind warns of catastrophic
    cancellation on a side whose values are (nearly) all equal, as short runs' scores often are."""
    sd_a, sd_b = a.std(ddof=1), b.std(ddof=1)
    if len(a) < 2 or len(b) < 2 or a.equals(b) or sd_a == sd_b == 0:
        return math.nan
    welch = stats.ttest_ind_from_stats(
        a.mean(), sd_a, len(a), b.mean(), sd_b, len(b), equal_var=False
    )
    return float(welch.pvalue)
