"""Fitted scaling curves: each column's valid metric against compute (ScaleRL's form).

    R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B)          Khatri et al. 2025, arXiv:2510.13786

A is the asymptote (where the column's metric saturates), B the efficiency (how sharply it
gets there), C_mid the compute at which half the gain A - R0 is reached. C is compute in
generated completion tokens (`train/tokens`); the tokens scored again by the reference and
by extra update passes are not counted, so PPO's extra scoring is free on this axis. R0 is
fixed at the starting policy's valid metric (step 0, the same for every column of a task);
A, B and C_mid are fitted by least squares (`scipy.optimize.curve_fit`) to the mean curve
over seeds, and their 95% intervals come from refitting the mean curves of seeds resampled
with replacement.

Deviations: ScaleRL fits on pass rates against GPU-hours and leaves out the earliest compute;
pgbench fits every evaluation after step 0, against generated tokens.

A fit is *identified* only when it converges, C_mid lies inside the compute measured (the
curve visibly bends), and the interval of A is narrower than the gain A - R0. Otherwise the
table says why and gives no numbers: a curve still rising linearly has no measurable
asymptote.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit

from pgbench.reports import render

PARAMS = ["asymptote", "efficiency", "c_mid"]
SCALING = [
    "task",
    "estimator",
    "n",
    "r0",
    *(f"{p}{s}" for p in PARAMS for s in ("", "_low", "_high")),
    "identified",
    "note",
]
RESAMPLES = 200


def curve(compute: np.ndarray, r0: float, asymptote: float, efficiency: float, c_mid: float):
    """R(C) of the module docstring."""
    return r0 + (asymptote - r0) / (1 + (c_mid / compute) ** efficiency)


def fit(compute: np.ndarray, metric: np.ndarray, r0: float) -> np.ndarray | None:
    """(A, B, C_mid) fitted to points (C > 0, R), or None when the fit fails (or there are
    fewer than 4 points for 3 parameters)."""
    if len(compute) < 4:
        return None
    top = float(compute.max())
    start = [float(metric.max()), 1.0, float(np.median(compute))]
    bounds = ([-np.inf, 0.05, top * 1e-3], [np.inf, 20.0, top * 1e3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        try:
            params, _ = curve_fit(
                lambda c, a, b, m: curve(c, r0, a, b, m),
                compute,
                metric,
                p0=start,
                bounds=bounds,
                maxfev=20000,
            )
        except (RuntimeError, ValueError):
            return None
    return params if np.isfinite(params).all() else None


def _mean_curve(runs: pd.DataFrame, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean metric per evaluation step over `seeds` (repeats count), with its mean compute."""
    chosen = pd.concat([runs[runs.seed == s] for s in seeds])
    mean = chosen.groupby("step")[["compute", "metric"]].mean()
    return mean.compute.to_numpy(float), mean.metric.to_numpy(float)


def column_fit(runs: pd.DataFrame, r0: float, seed: int = 0) -> dict:
    """The fit and intervals of one column; `runs` has seed, step, compute, metric (step > 0)."""
    seeds = np.sort(runs.seed.unique())
    compute, metric = _mean_curve(runs, seeds)
    row: dict = {"n": len(seeds), "r0": r0} | {
        f"{p}{s}": math.nan for p in PARAMS for s in ("", "_low", "_high")
    }
    params = fit(compute, metric, r0)
    if params is None:
        return row | {
            "identified": False,
            "note": "no fit (fewer than 4 evaluations, or no convergence)",
        }
    rng = np.random.default_rng(seed)
    boots = [fit(*_mean_curve(runs, rng.choice(seeds, len(seeds))), r0) for _ in range(RESAMPLES)]
    boots = np.array([b for b in boots if b is not None])
    low, high = (
        np.percentile(boots, [2.5, 97.5], axis=0) if len(boots) else (params * math.nan,) * 2
    )
    note = ""
    if not compute.min() <= params[2] <= compute.max():
        note = f"C_mid {params[2]:.3g} is outside the compute measured: the curve does not bend yet"
    elif not high[0] - low[0] < abs(params[0] - r0):
        note = "the asymptote's interval is wider than the gain over the start"
    if note:
        return row | {"identified": False, "note": note}
    for i, name in enumerate(PARAMS):
        row |= {name: params[i], f"{name}_low": low[i], f"{name}_high": high[i]}
    return row | {"identified": True, "note": ""}


def scaling_table(history: pd.DataFrame, metrics: dict[str, str]) -> pd.DataFrame:
    """SCALING rows per task and column from tidy histories (collect.history_frame plus task)
    of each task's valid metric (`metrics`: task -> e.g. "eval/chrf") and train/tokens."""
    rows = []
    for task, group in history.groupby("task"):
        wide = group.pivot_table(
            index=["estimator", "seed", "run_id", "step"], columns="metric", values="value"
        ).reset_index()
        wide = wide.rename(columns={"train/tokens": "compute", metrics[task]: "metric"})
        start = float(wide[wide.step == 0].metric.mean())
        runs = wide[wide.step > 0].dropna(subset=["compute", "metric"])
        for column, runs_of in runs.groupby("estimator"):
            rows.append({"task": task, "estimator": column} | column_fit(runs_of, start))
    return pd.DataFrame(rows, columns=SCALING)


def scaling_figure(history: pd.DataFrame, fits: pd.DataFrame, metric: str, path: Path) -> Path:
    """One task: each column's mean valid metric per evaluation (dots) against generated
    tokens, and its fitted curve (line) where the fit is identified."""
    fig, ax = render.plt.subplots(figsize=(7, 4.5))
    palette = render.colours(history.estimator)
    wide = history.pivot_table(
        index=["estimator", "seed", "step"], columns="metric", values="value"
    ).reset_index()
    wide = wide[wide.step > 0].dropna(subset=["train/tokens", metric])
    for column, runs in wide.groupby("estimator"):
        mean = runs.groupby("step")[["train/tokens", metric]].mean()
        ax.scatter(mean["train/tokens"], mean[metric], s=12, color=palette[column], label=column)
        row = fits[fits.estimator == column]
        if len(row) and bool(row.identified.iloc[0]):
            r = row.iloc[0]
            grid = np.linspace(mean["train/tokens"].min(), mean["train/tokens"].max(), 100)
            ax.plot(
                grid, curve(grid, r.r0, r.asymptote, r.efficiency, r.c_mid), color=palette[column]
            )
    ax.set_xlabel("completion tokens generated")
    ax.set_ylabel(f"valid {metric.removeprefix('eval/')}")
    ax.set_title("mean over seeds (dots) and fitted R(C) (lines, identified fits only)")
    ax.legend(fontsize=7, ncol=2)
    return render._save(fig, path)


def markdown(fits: pd.DataFrame) -> str:
    """The fits as Markdown: A, B, C_mid with 95% intervals, or why a fit is not identified."""
    lines = ["| task | column | n | R0 | asymptote A | efficiency B | C_mid (tokens) |"]
    lines.append("|" + " --- |" * 7)
    for r in fits.itertuples():
        if r.identified:
            cells = [
                f"{getattr(r, p):.4g} [{getattr(r, p + '_low'):.4g}, {getattr(r, p + '_high'):.4g}]"
                for p in PARAMS
            ]
        else:
            cells = [f"not identified: {r.note}", "-", "-"]
        lines.append(
            f"| {r.task} | {r.estimator} | {r.n} | {r.r0:.4g} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)
