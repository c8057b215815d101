"""Rendering a comparison: matplotlib figures, Markdown and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from pgbench import estimators  # noqa: E402
from pgbench.reports import stats  # noqa: E402

SMOOTH = 5  # steps in the rolling mean of noisy per-step curves
SIGNIFICANT = 0.05  # Holm-corrected p below which a pair is drawn filled


def colours(names: Iterable[str] = ()) -> dict[str, str]:
    """One colour per registered estimator and per extra label in `names`, fixed per label.

    Registered estimators, in registry order, then other labels (variants such as "dr_grpo"),
    sorted, take tab10's colours, then tab20's, tab20b's and tab20c's, without repeats.
    """
    registered = estimators.REGISTRY.names()
    extra = sorted(set(names) - set(registered))
    maps = ("tab10", "tab20", "tab20b", "tab20c")
    palette = list(
        dict.fromkeys(matplotlib.colors.to_hex(c) for m in maps for c in plt.get_cmap(m).colors)
    )
    return {name: palette[i % len(palette)] for i, name in enumerate([*registered, *extra])}


def mean_band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs of curves [runs, points] and its 95% percentile bootstrap band [points].

    Whole runs are resampled (`stats.bootstrap_ci`, the same resamples at every point); with
    one run the band is NaN.
    """
    mean = curves.mean(axis=0)
    if len(curves) < 2:
        return mean, np.full_like(mean, math.nan), np.full_like(mean, math.nan)
    low, high = stats.bootstrap_ci([curves], stats.mean)
    return mean, low, high


def _band(ax: Axes, x: np.ndarray, curves: np.ndarray, colour: str, label: str) -> None:
    """Mean of curves [runs, points] with its bootstrap band (`mean_band`) shaded."""
    mean, low, high = mean_band(curves)
    ax.plot(x, mean, color=colour, label=f"{label} (n={len(curves)})")
    if len(curves) > 1:
        ax.fill_between(x, low, high, color=colour, alpha=0.12, linewidth=0)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _curves(
    history: pd.DataFrame, x: str, y: str, grid: np.ndarray, smooth: int
) -> dict[str, np.ndarray]:
    """Per estimator, y(x) of every run interpolated on `grid`: {estimator: [runs, points]}."""
    out: dict[str, list[np.ndarray]] = {}
    for (estimator, _), run in history.groupby(["estimator", "run_id"]):
        wide = run.pivot_table(index="step", columns="metric", values="value").sort_index()
        if x != "step" and 0 in wide.index:  # cumulative x (tokens, seconds): 0 before step 1
            wide.loc[0, x] = 0.0
        ys = wide[y].rolling(smooth, min_periods=1).mean() if smooth > 1 else wide[y]
        xs = wide.index.to_numpy(float) if x == "step" else wide[x].to_numpy(float)
        keep = ~np.isnan(xs) & ~np.isnan(ys.to_numpy(float))
        out.setdefault(estimator, []).append(np.interp(grid, xs[keep], ys.to_numpy(float)[keep]))
    return {name: np.stack(curves) for name, curves in out.items()}


def line_figure(
    history: pd.DataFrame,
    x: str,
    y: str,
    xlabel: str,
    ylabel: str,
    title: str,
    path: Path,
    smooth: int = SMOOTH,
) -> Path:
    """Mean curve per estimator (any label) of y against x, a step-logged metric or 'step'.

    Runs are interpolated on a common grid of x up to the shortest run; the shaded band is the
    95% percentile bootstrap interval of the mean over runs at each x (`mean_band`), absent for
    an estimator with one run.
    """
    xs = history[history.metric == x].value if x != "step" else history.step
    ends = history[history.metric == y].groupby("run_id").step.max() if x == "step" else None
    top = (
        ends.min()
        if ends is not None
        else history[history.metric == x].groupby("run_id").value.max().min()
    )
    starts_at_zero = x != "step" and (history[history.metric == y].step == 0).any()
    grid = np.linspace(0.0 if starts_at_zero else max(xs.min(), 0), top, 100)
    fig, ax = plt.subplots(figsize=(8.0, 4.0), dpi=120)
    runs = _curves(history, x, y, grid, smooth)
    palette = colours(runs)
    for name, curves in sorted(runs.items()):
        _band(ax, grid, curves, palette[name], name)
    if smooth > 1:
        title += f" (rolling mean of {smooth} points)"
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the curves
    return _save(fig, path)


def variance_figure(variance: pd.DataFrame, path: Path) -> Path:
    """Bar chart of total gradient variance (log scale) and cosine to the reference."""
    palette = colours(variance.estimator)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 3.6), dpi=120)
    bar_colours = [palette[e] for e in variance.estimator]
    left.bar(variance.estimator, variance.total_variance, color=bar_colours)
    left.set(yscale="log", ylabel="total variance (trace of covariance)", title="Gradient variance")
    left.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    left.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))  # 0.2, not 2x10^-1
    left.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    right.bar(variance.estimator, variance.cosine_to_reference, color=bar_colours)
    right.set(ylabel="mean cosine to reference gradient", title="Gradient direction", ylim=(0, 1))
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="x", rotation=20)
    return _save(fig, path)


def _task_panels(table: pd.DataFrame) -> tuple[Figure, list[tuple[str, pd.DataFrame, Axes]]]:
    """One panel per task of `table` (the `all` aggregate last), each as tall as its rows."""
    tasks = sorted(table.task.unique(), key=lambda task: (task == stats.ALL, task))
    groups = [table[table.task == task] for task in tasks]
    fig, axes = plt.subplots(
        len(tasks),
        1,
        figsize=(8.0, 1.0 + 0.9 * len(tasks) + 0.35 * len(table)),
        dpi=120,
        squeeze=False,
        gridspec_kw={"height_ratios": [len(g) + 1 for g in groups]},
    )
    return fig, list(zip(tasks, groups, axes[:, 0], strict=True))


def _interval_panel(ax: Axes, rows: pd.DataFrame, palette: dict[str, str]) -> None:
    """Leaderboard rows of one task, best first: interval as a line, mean dot, IQM diamond."""
    rows = rows.sort_values(["rank", "mean"], ascending=[True, False])
    y = np.arange(len(rows))
    row_colours = [palette[e] for e in rows.estimator]
    ax.hlines(y, rows.ci_low, rows.ci_high, colors=row_colours, linewidth=2)
    ax.scatter(rows["mean"], y, c=row_colours, marker="o", zorder=3)
    ax.scatter(rows.iqm, y, c="none", edgecolors=row_colours, marker="D", zorder=3)
    ranked = rows.estimator + " (rank " + rows["rank"].astype("Int64").astype(str) + ")"
    ax.set_yticks(y, ranked.where(rows["rank"].notna(), rows.estimator))
    ax.invert_yaxis()  # best at the top
    ax.grid(axis="x", alpha=0.3)


def interval_figure(board: pd.DataFrame, path: Path) -> Path:
    """Leaderboard (stats.leaderboard) per task: mean, IQM and 95% bootstrap interval.

    Task panels show the interval of the mean; the `all` panel (normalised scores pooled over
    tasks) the stratified interval of the IQM, as `stats.leaderboard` computes them.
    """
    fig, panels = _task_panels(board)
    palette = colours(board.estimator)
    for task, rows, ax in panels:
        _interval_panel(ax, rows, palette)
        if task == stats.ALL:
            ax.set_title("all tasks, normalised score (interval of the IQM)", fontsize=10)
        else:
            ax.set_title(f"{task} (interval of the mean)", fontsize=10)
    key = [  # neutral markers: the colours are the estimators'
        Line2D([], [], color="k", linewidth=2, label="95% interval"),
        Line2D([], [], color="k", marker="o", linestyle="", label="mean"),
        Line2D([], [], color="k", marker="D", markerfacecolor="none", linestyle="", label="IQM"),
    ]
    panels[0][2].legend(handles=key, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Final score: mean and 95% bootstrap interval over seeds")
    return _save(fig, path)


def _pairs_panel(ax: Axes, rows: pd.DataFrame) -> None:
    """Pairs of one task: mean_diff with its interval; filled if p (Holm) < SIGNIFICANT."""
    y = np.arange(len(rows))
    significant = (rows.p_holm < SIGNIFICANT).to_numpy()  # NaN (untestable) is not
    for chosen, filled in ((significant, True), (~significant, False)):
        part = rows[chosen]
        label = f"p (Holm) < {SIGNIFICANT}" if filled else "not significant"
        width = 2.5 if filled else 1.0
        ax.hlines(y[chosen], part.diff_ci_low, part.diff_ci_high, colors="k", linewidth=width)
        ax.plot(
            part.mean_diff,
            y[chosen],
            "o",
            color="k",
            markerfacecolor="k" if filled else "white",
            label=label,
        )
    ax.axvline(0.0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(y, rows.a + " - " + rows.b)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)


def pairs_figure(pairs: pd.DataFrame, path: Path) -> Path:
    """Paired differences (stats.pairs) per task: mean a - b and its 95% bootstrap interval.

    Filled, bold: the Holm-corrected paired t-test rejects "no difference" at SIGNIFICANT;
    hollow: it does not, or is untestable (one seed, constant differences).
    """
    fig, panels = _task_panels(pairs)
    for task, rows, ax in panels:
        _pairs_panel(ax, rows)
        ax.set_title(task, fontsize=10)
    panels[-1][2].set_xlabel("mean difference a - b over matched seeds")
    panels[0][2].legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Paired differences: mean and 95% bootstrap interval")
    return _save(fig, path)


def profile_figure(profile: pd.DataFrame, path: Path) -> Path:
    """rliable performance profile (stats.performance_profile): P(normalised score > tau).

    One line per estimator with its stratified 95% bootstrap band (none where NaN).
    """
    palette = colours(profile.estimator)
    fig, ax = plt.subplots(figsize=(7.0, 4.0), dpi=120)
    for name, rows in profile.groupby("estimator"):
        colour = palette[name]
        ax.plot(rows.tau, rows.fraction, color=colour, label=name)
        ax.fill_between(rows.tau, rows.ci_low, rows.ci_high, color=colour, alpha=0.15, linewidth=0)
    ax.set(
        xlabel="normalised score tau (0 = start or worst run, 1 = best run)",
        ylabel="fraction of runs with score > tau",
        title="Performance profile with 95% bootstrap band",
        ylim=(-0.02, 1.02),
    )
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _verdict_panel(ax: Axes, rows: pd.DataFrame, palette: Mapping[str, str]) -> None:
    """One task's verdicts as the upper triangle of a matrix: row a, column b, effect a - b."""
    names = list(dict.fromkeys([*rows.a, *rows.b]))  # best first, as the table orders pairs
    index = {name: i for i, name in enumerate(names)}
    codes = np.full((len(names), len(names)), np.nan)
    size = 7 if len(names) <= 12 else 5
    for row in rows.itertuples():
        i, j = index[row.a], index[row.b]
        codes[i, j] = list(palette).index(row.verdict)
        effect = "-" if math.isnan(row.effect) else f"{round(row.effect, 2) + 0.0:.2f}"  # no -0.00
        ax.text(j, i, effect, ha="center", va="center", fontsize=size)
    cmap = matplotlib.colors.ListedColormap(list(palette.values()))
    ax.imshow(codes, cmap=cmap, vmin=-0.5, vmax=len(palette) - 0.5)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=size + 1)
    ax.set_yticks(range(len(names)), names, fontsize=size + 1)


def verdict_figure(table: pd.DataFrame, path: Path, palette: Mapping[str, str]) -> Path:
    """Verdict matrix per task (reports/verdicts.py): a cell per pair, row a and column b
    (columns best first), coloured by its verdict (`palette`: verdict -> colour, four
    entries) and labelled with the mean paired difference a - b."""
    tasks = sorted(table.task.unique())
    widths = [len({*table.a[table.task == t], *table.b[table.task == t]}) for t in tasks]
    side = 2.0 + 0.42 * max(widths)
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(side * len(tasks), side + 0.6), dpi=120, squeeze=False
    )
    for task, ax in zip(tasks, axes[0], strict=True):
        rows = table[table.task == task]
        _verdict_panel(ax, rows, palette)
        ax.set_title(f"{task} (margin {_cell(rows.margin.iloc[0], 2)})", fontsize=10)
    key = [Patch(color=colour, label=label) for label, colour in palette.items()]
    axes[0, -1].legend(handles=key, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Verdicts per pair (row a vs column b; cell: mean difference a - b)")
    return _save(fig, path)


def _number(value: float, digits: int) -> str:
    """`digits` significant digits, but never an exponent for values below a million."""
    return f"{value:.0f}" if 10**digits <= abs(value) < 1e6 else f"{value:.{digits}g}"


def _fmt(value: float, ci: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return _number(value, 3) if math.isnan(ci) else f"{_number(value, 3)} ± {_number(ci, 2)}"


def markdown_table(table: pd.DataFrame) -> str:
    """The summary as a Markdown table: mean ± 95% CI half-width per column."""
    value_columns = [
        c
        for c in table.columns
        if not c.endswith("_ci") and c not in ("estimator", "seeds", "p_vs_best")
    ]
    header = ["estimator", "seeds", *value_columns, f"p vs {table.attrs['best']} (Welch)"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in table.to_dict("records"):
        cells = [row["estimator"], str(row["seeds"])]
        cells += [_fmt(row[c], row.get(f"{c}_ci", math.nan)) for c in value_columns]
        p = row["p_vs_best"]
        cells.append("-" if math.isnan(p) else f"{p:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def frame_markdown(frame: pd.DataFrame) -> str:
    """A plain frame as a Markdown table (numbers to 4 significant digits)."""
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in frame.values]
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def html_page(intro: str, tables: dict[str, pd.DataFrame], figures: list[Path]) -> str:
    """A self-contained HTML page: the intro (Markdown headings become headings), each table
    under its title (missing values as -), and the figures inlined as PNG."""
    images = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"/><figcaption>{p.stem}</figcaption></figure>'
        for p in figures
    )
    lines = [line.strip() for line in intro.splitlines() if line.strip()]
    paragraphs = "".join(
        f"<h1>{html.escape(line.lstrip('# '))}</h1>"
        if line.startswith("#")
        else f"<p>{html.escape(line)}</p>"
        for line in lines
    )
    sections = "".join(
        f"<h2>{html.escape(title)}</h2>{table.to_html(index=False, float_format=_g4, na_rep='-')}"
        for title, table in tables.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>pgbench report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        f"img{{max-width:100%}}</style></head><body>{paragraphs}{sections}{images}"
        "</body></html>"
    )


def _g4(value: float) -> str:
    return f"{value:.4g}"


def _interval(low: float, high: float) -> str:
    """`[low, high]`, or `-` when the interval is unavailable (NaN)."""
    if math.isnan(low) or math.isnan(high):
        return "-"
    return f"[{_number(low, 3)}, {_number(high, 3)}]"


def _cell(value: float, digits: int = 3) -> str:
    return "-" if math.isnan(value) else _number(value, digits)


def leaderboard_markdown(board: pd.DataFrame) -> str:
    """The leaderboard (stats.leaderboard) as Markdown, best rank first within each task."""
    header = ["task", "rank", "estimator", "n", "mean", "95% CI", "IQM"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in board.sort_values(
        ["task", "rank", "mean"], ascending=[True, True, False]
    ).itertuples():
        rank = "-" if math.isnan(row.rank) else str(int(row.rank))
        cells = [row.task, rank, row.estimator, str(row.n), _cell(row.mean)]
        cells += [_interval(row.ci_low, row.ci_high), _cell(row.iqm)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pairs_markdown(pairs: pd.DataFrame) -> str:
    """Paired comparisons (stats.pairs) as Markdown: one row per pair of estimators."""
    header = ["task", "a - b", "seeds", "mean diff [95% CI]", "P(a > b)", "p (Holm)", "MDE"]
    header.append("seeds needed")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in pairs.itertuples():
        diff = _cell(row.mean_diff)
        if not math.isnan(row.diff_ci_low):
            diff += " " + _interval(row.diff_ci_low, row.diff_ci_high)
        needed = "-" if math.isnan(row.seeds_needed) else f"{row.seeds_needed:.0f}"
        cells = [row.task, f"{row.a} - {row.b}", str(row.n), diff]
        cells += [f"{row.prob_improvement:.2f}", _cell(row.p_holm), _cell(row.mde), needed]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
