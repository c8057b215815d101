"""Known effects: the probes a protocol declares (positive and negative controls with an
expected answer and its source), judged on the suite's runs, and each estimator's property
card (its change under each reward transform).

A probe compares two columns a and b of one task on the seeds both ran (per-seed
differences a - b, `verdicts.paired_tests`), and expects one of:

- "a better" (a positive control): detected where the paired t-test rejects with a > b;
- "equivalent" (an invariance): detected where TOST rejects within the task's margin (or
  where the two columns' runs score the same on every seed: p_equiv 0);
- "not a better" (a negative control): passes unless the t-test finds a > b.

The probes of a report are one family: the p-value each expectation needs (p_diff, or
p_equiv) is Holm-adjusted over all of them at 5%. A probe whose expected effect is not
detected is a **blind spot**, reported with its minimum detectable effect (MDE: the true
difference its paired t-test detects 80% of the time at its first Holm level, alpha / M,
given the differences' sd) and the seeds its observed effect would need for that.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from pgbench.errors import ConfigError
from pgbench.reports import render, verdicts  # render selects the file backend, Agg

EXPECT = ("a better", "equivalent", "not a better")
PROBES = [
    *("probe", "task", "a", "b", "expect", "source", "n_seeds", "effect", "ci_low", "ci_high"),
    *("p", "p_holm", "outcome", "mde", "seeds_needed"),
]
CARD = ["task", "estimator", "property", "n_seeds", "effect", "ci_low", "ci_high"]
POWER = 0.8
MAX_SEEDS = 1000  # "seeds needed" beyond this is reported as more than it


@dataclass(frozen=True)
class Probe:
    """A protocol's [probe.NAME] table: columns a and b of `task`, the verdict expected of
    a against b, and where the expectation comes from."""

    name: str
    task: str
    a: str
    b: str
    expect: str
    source: str


def parse(tables: object, where: str) -> list[Probe]:
    """A protocol's [probe.NAME] tables (task, a, b, expect, source) as probes."""
    keys = {"task", "a", "b", "expect", "source"}
    if not isinstance(tables, dict):
        raise ConfigError(f"{where}: write each probe as a table, [probe.NAME]")
    probes = []
    for name, table in tables.items():
        if not isinstance(table, dict) or set(table) != keys:
            raise ConfigError(f"{where}: [probe.{name}] needs exactly {sorted(keys)}")
        if table["expect"] not in EXPECT:
            raise ConfigError(
                f"{where}: [probe.{name}] expect = {table['expect']!r}; valid: {list(EXPECT)}"
            )
        probes.append(Probe(name, *(str(table[k]) for k in ("task", "a", "b", "expect", "source"))))
    return probes


def _needed(diffs: np.ndarray, expect: str, margin: float, alpha: float) -> tuple[float, float]:
    """(MDE, seeds the observed mean would need) for a probe's test at level `alpha`."""
    n, sd, mean = len(diffs), float(np.std(diffs, ddof=1)), float(np.mean(diffs))
    if n < 2 or not sd > 0:
        return math.nan, math.nan
    power = TTestPower()
    mde = sd * power.solve_power(nobs=n, alpha=alpha, power=POWER)
    if expect == "equivalent":  # TOST: the interval at 1 - 2 alpha inside ±margin
        seeds = np.arange(2, MAX_SEEDS)
        half = sps.t.ppf(1 - alpha, seeds - 1) * sd / np.sqrt(seeds)
        fits = seeds[half < margin - abs(mean)]
        return mde, float(fits[0]) if len(fits) else math.inf
    if not abs(mean) > 0:
        return mde, math.inf
    with warnings.catch_warnings():  # a large effect needs fewer than 2 seeds: no root
        warnings.simplefilter("ignore", ConvergenceWarning)
        seeds = power.solve_power(effect_size=abs(mean) / sd, alpha=alpha, power=POWER)
    if not seeds < MAX_SEEDS:  # NaN: no root (an effect clear with the fewest seeds)
        return mde, math.inf if seeds >= MAX_SEEDS else 2.0
    return mde, float(math.ceil(seeds))


def judge(
    probes: list[Probe], scores: pd.DataFrame, margins: Mapping[str, float], alpha: float = 0.05
) -> pd.DataFrame:
    """Each probe's test, Holm-adjusted over the probes, and its outcome (PROBES columns).

    `scores`: task, estimator, seed, value."""
    rows = []
    for probe in probes:
        task = scores[scores.task == probe.task]
        wide = task.pivot(index="seed", columns="estimator", values="value")
        missing = [c for c in (probe.a, probe.b) if c not in wide.columns]
        if missing:
            raise ConfigError(
                f"[probe.{probe.name}] names {missing[0]}, not a column of {probe.task}"
            )
        diffs = (wide[probe.a] - wide[probe.b]).dropna().to_numpy()
        margin = float(margins.get(probe.task, math.nan))
        tests = {k: float(v) for k, v in verdicts.paired_tests(diffs, margin).items()}
        if len(diffs) > 1 and not np.any(diffs):  # identical runs: no difference, exactly
            tests |= {"p_diff": 1.0, "p_equiv": 0.0 if margin > 0 else math.nan}
        p = tests["p_equiv"] if probe.expect == "equivalent" else tests["p_diff"]
        mde, seeds = _needed(diffs, probe.expect, margin, alpha / len(probes))
        keep = ("effect", "ci_low", "ci_high")
        rows.append(
            [probe.name, probe.task, probe.a, probe.b, probe.expect, probe.source, len(diffs)]
            + [tests[k] for k in keep]
            + [p, math.nan, "", mde, seeds]
        )
    table = pd.DataFrame(rows, columns=PROBES)
    ok = table.p.notna()
    if ok.any():
        table.loc[ok, "p_holm"] = multipletests(table.p[ok], alpha=alpha, method="holm")[1]
    table["outcome"] = [_outcome(r, alpha) for r in table.itertuples()]
    return table


def _outcome(row: object, alpha: float) -> str:
    """detected / blind spot for a positive control or an invariance; passed / failed for a
    negative control."""
    rejected = bool(row.p_holm < alpha)  # NaN: not rejected
    if row.expect == "not a better":
        return "failed" if rejected and row.effect > 0 else "passed"
    if row.expect == "a better":
        rejected = rejected and row.effect > 0
    return "detected" if rejected else "blind spot"


def card(scores: pd.DataFrame, properties: Mapping[str, tuple[str, str]]) -> pd.DataFrame:
    """The property card (CARD columns): for each column `properties` maps to (estimator,
    property), its paired difference from the estimator's own column, seed by seed."""
    rows = []
    for task, group in scores.groupby("task"):
        wide = group.pivot(index="seed", columns="estimator", values="value")
        for column, (estimator, prop) in properties.items():
            if column not in wide.columns or estimator not in wide.columns:
                continue
            diffs = (wide[column] - wide[estimator]).dropna().to_numpy()
            tests = verdicts.paired_tests(diffs, math.nan)
            effect = [float(tests[k]) for k in ("effect", "ci_low", "ci_high")]
            rows.append([task, estimator, prop, len(diffs), *effect])
    return pd.DataFrame(rows, columns=CARD)


def write(
    out: Path,
    probes: list[Probe],
    scores: pd.DataFrame,
    margins: Mapping[str, float],
    properties: Mapping[str, tuple[str, str]],
) -> tuple[list[str], list[Path]]:
    """probes.csv, card.csv and card.png in `out`, for the probes and the transform columns
    there are; returns the report's sections and figures."""
    lines: list[str] = []
    if probes:
        table = judge(probes, scores, margins)
        table.to_csv(out / "probes.csv", index=False)
        lines += _probe_section(table)
    props = card(scores, properties)
    if not len(props):
        return lines, []
    props.to_csv(out / "card.csv", index=False)
    lines += [
        "## Property card",
        "Each estimator's change under each reward transform: its test score minus its own "
        "untransformed column's, paired by seed (mean [95% t-interval]; `card.csv`, `card.png`).",
        render.frame_markdown(props),
    ]
    return lines, [card_figure(props, out / "card.png")]


def _probe_section(table: pd.DataFrame) -> list[str]:
    positive = table[table.expect != "not a better"]
    negative = table[table.expect == "not a better"]
    found = int((positive.outcome == "detected").sum())
    held = int((negative.outcome == "passed").sum())
    seeds = ", ".join(sorted({str(n) for n in table.n_seeds}))
    return [
        "## Known effects (probes)",
        f"**{found} of {len(positive)} known effects detected**, and {held} of {len(negative)} "
        f"negative controls passed, at this budget ({seeds} seeds per column; the probes' "
        "p-values Holm-adjusted together at 5%). A blind spot is an expected effect not "
        "detected: `mde` is the smallest difference its test detects 80% of the time with "
        "these seeds, `seeds_needed` the seeds its observed effect would need (`probes.csv`; "
        "docs/statistics.md).",
        render.frame_markdown(table),
    ]


def card_figure(props: pd.DataFrame, path: Path) -> Path:
    """The property card as a heatmap per task: estimators x properties, coloured by the
    effect (blue above 0, red below) and labelled with it."""
    tasks = sorted(props.task.unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 4), dpi=120, squeeze=False)
    for task, ax in zip(tasks, axes[0], strict=True):
        grid = props[props.task == task].pivot(
            index="estimator", columns="property", values="effect"
        )
        bound = float(np.nanmax(np.abs(grid.to_numpy()))) or 1.0
        ax.imshow(grid.to_numpy(), cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
        for (i, j), value in np.ndenumerate(grid.to_numpy()):
            label = "-" if math.isnan(value) else f"{value:+.2f}"
            ax.text(j, i, label, ha="center", va="center", fontsize=8)
        ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=8)
        ax.set_title(f"{task}: change under each transform", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
