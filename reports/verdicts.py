"""Four verdicts per pair of columns: A better, B better, equivalent within ±margin, undecided.

A failed difference test is no evidence of equality (Lakens 2017, "Equivalence tests",
doi:10.1177/1948550617697177), so every pair of columns of a task is tested twice on its
per-seed paired differences d = a - b (runs with the same seed saw the same prompts):

- difference: the paired t-test of mean(d) = 0 (two-sided), as `stats.pairs`;
- equivalence: the paired TOST, two one-sided t-tests of mean(d) <= -margin and of
  mean(d) >= +margin (Schuirmann 1987); p_equiv is the larger of their p-values
  (statsmodels' `ttost_paired`, vectorised here).

Family-wise error: all p-values of one report, both kinds of every pair of every task, are
adjusted together by Holm's step-down (Holm 1979) with Shaffer's (1986) count of the null
hypotheses that can be true at once: a pair's two exclude each other (`adjust`; valid under
any dependence between the tests). A pair is "A better" / "B better" where its adjusted
difference p is below alpha (the sign of mean(d) picks the side; a difference takes
precedence over equivalence), "equivalent" where its adjusted equivalence p is, else
"undecided". A task without a margin gets no equivalence test. docs/statistics.md explains
the rule and the margins.

`verdict_table(scores, margins, alpha)` takes the tidy scores of `stats.pairs`. It is valid
for one look at the data; an adaptive suite, which looks after each batch of seeds, judges
its pairs with reports/sequential.py instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from pgbench.errors import ConfigError
from pgbench.reports import render

A_BETTER, B_BETTER, EQUIVALENT, UNDECIDED = "A better", "B better", "equivalent", "undecided"
LABELS = (A_BETTER, B_BETTER, EQUIVALENT, UNDECIDED)
COLOURS = dict(zip(LABELS, ("#1a9850", "#d73027", "#4575b4", "#bdbdbd"), strict=True))
VERDICTS = [
    "task",
    "a",
    "b",
    "verdict",
    "effect",
    "ci_low",
    "ci_high",
    "margin",
    "n_seeds",
    "p_diff",
    "p_equiv",
]
RATES = ["task", "margin", "pairs", "decided", "rate", *LABELS, "vacuous"]
GAINS = ["task", "estimator", "n", "start", "gain", "ci_low", "ci_high"]
# Default equivalence margins, in the task's metric units (docs/statistics.md, "Margins"):
# arith: about one binomial standard error of accuracy on its 500 test problems;
# fr_en: the chrF delta whose order of two MT systems humans share 70% of the time.
MARGINS = {"arith": 2.0, "fr_en": 1.0}


def margins(tasks: list[str], declared: Mapping[str, float] | None = None) -> dict[str, float]:
    """Each task's margin: `declared` (the protocol's `[stats] margin.<task>`), else MARGINS,
    else NaN (no equivalence test). A declared margin must name one of `tasks` and be a
    finite number above 0."""
    declared = dict(declared or {})
    for task, value in declared.items():
        if task not in tasks:
            raise ConfigError(f"margin.{task} names no task of this suite ({', '.join(tasks)})")
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ConfigError(f"margin.{task} = {value!r} must be a number above 0")
    return {task: float(declared.get(task, MARGINS.get(task, math.nan))) for task in tasks}


def parse_margins(text: str) -> dict[str, float]:
    """`suite.margin`'s value, `task:margin` items separated by commas ("fr_en:0.5,arith:1"),
    as a dict; "" is none. `margins` checks the tasks and values."""
    parsed = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        task, _, value = item.partition(":")
        try:
            parsed[task.strip()] = float(value)
        except ValueError:
            raise ConfigError(
                f"suite.margin item {item!r} must be task:number, e.g. fr_en:0.5"
            ) from None
    return parsed


def paired_tests(
    diffs: np.ndarray, margin: float, confidence: float = 0.95
) -> dict[str, np.ndarray]:
    """Paired t-test and TOST of per-seed differences `diffs` [..., n] (vectorised).

    Returns arrays [...]: effect (mean), ci_low/ci_high (the Student-t interval of the mean at
    `confidence`), p_diff (two-sided test of mean 0) and p_equiv (TOST against ±margin).
    With t = (mean - m) / (sd / sqrt(n)) on n - 1 degrees of freedom: p_diff = 2 P(T > |t_0|),
    p_equiv = max(P(T > t_{-margin}), P(T < t_{+margin})). p-values are NaN with n < 2, with
    constant differences (sd 0: the t statistics are undefined) and, for p_equiv, a NaN margin.
    """
    diffs = np.asarray(diffs, dtype=float)
    n = diffs.shape[-1]
    effect = diffs.mean(axis=-1) if n else np.full(diffs.shape[:-1], math.nan)
    if n < 2:
        nan = np.full_like(effect, math.nan)
        return {"effect": effect, "ci_low": nan, "ci_high": nan, "p_diff": nan, "p_equiv": nan}
    sd = diffs.std(axis=-1, ddof=1)
    se = np.where(sd > 1e-9 * np.maximum(np.abs(effect), 1e-300), sd / math.sqrt(n), math.nan)
    df = n - 1
    half = sps.t.ppf(0.5 + confidence / 2, df) * sd / math.sqrt(n)
    p_diff = 2 * sps.t.sf(np.abs(effect) / se, df)
    p_lower = sps.t.sf((effect + margin) / se, df)  # H0: mean <= -margin
    p_upper = sps.t.cdf((effect - margin) / se, df)  # H0: mean >= +margin
    return {
        "effect": effect,
        "ci_low": effect - half,
        "ci_high": effect + half,
        "p_diff": p_diff,
        "p_equiv": np.maximum(p_lower, p_upper),
    }


def adjust(p_diff: np.ndarray, p_equiv: np.ndarray) -> np.ndarray:
    """Step-down adjusted p-values [..., 2m] of the 2m tests of m pairs (difference tests
    first), each report (leading index) on its own; Shaffer 1986's S1 rule.

    Holm's step-down, dividing not by the number of tests left but by the most of them that
    can be true: a pair's two null hypotheses (mean difference 0; |mean difference| >= margin)
    exclude each other, so that is the number of pairs with a test left. Sorted ascending,
    the k-th smallest finite p (k from 0) becomes the running max of t_k p_(k), capped at 1,
    with t_k the pairs among ranks k and above. NaN tests stay NaN and count for nothing;
    with no equivalence test (p_equiv all NaN) this is Holm's procedure.
    """
    p = np.concatenate([p_diff, p_equiv], axis=-1).astype(float)  # [..., 2m]
    m = p.shape[-1] // 2
    order = np.argsort(p, axis=-1)  # NaN last
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(2 * m), p.shape), axis=-1)
    finite = np.isfinite(p)
    partner = np.concatenate([np.arange(m, 2 * m), np.arange(m)])  # the pair's other test
    later = finite[..., partner] & (rank[..., partner] > rank)
    last = np.take_along_axis(finite & ~later, order, axis=-1)  # a pair's last test, by rank
    open_pairs = np.flip(np.cumsum(np.flip(last, axis=-1), axis=-1), axis=-1)  # t_k
    ranked = np.take_along_axis(p, order, axis=-1)
    adjusted = np.minimum(np.fmax.accumulate(open_pairs * ranked, axis=-1), 1.0)
    adjusted[np.isnan(ranked)] = math.nan
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return out


def decide(
    effect: np.ndarray, p_diff: np.ndarray, p_equiv: np.ndarray, alpha: float = 0.05
) -> np.ndarray:
    """Verdicts [..., m] of m pairs (one report per leading index), from the 2m p-values of a
    report adjusted together (`adjust`; NaN ones never reject): a rejected difference is
    "A better" (effect > 0) or "B better", else a rejected equivalence is "equivalent", else
    "undecided"."""
    p_diff, p_equiv = np.asarray(p_diff, dtype=float), np.asarray(p_equiv, dtype=float)
    rejected = adjust(p_diff, p_equiv) < alpha  # NaN: False
    m = p_diff.shape[-1]
    differ, equal = rejected[..., :m], rejected[..., m:]
    side = np.where(np.asarray(effect) > 0, A_BETTER, B_BETTER)
    return np.where(differ, side, np.where(equal, EQUIVALENT, UNDECIDED))


def verdict_table(
    scores: pd.DataFrame,
    margin: Mapping[str, float],
    alpha: float = 0.05,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Every pair of estimators of each task with its verdict; columns VERDICTS.

    `scores`: task, estimator, seed, value (one final score per run). As in `stats.pairs`, a
    is the estimator with the higher mean on the task (ties alphabetical) and the pair is
    compared on the seeds both ran. `margin`: per task (see `margins`); a task missing from it
    gets no equivalence test. The adjustment runs over all pairs of all tasks (`decide`).
    """
    rows = []
    for task, group in scores.groupby("task"):
        wide = group.pivot(index="seed", columns="estimator", values="value")
        order = sorted(wide.columns, key=lambda e: (-wide[e].mean(), e))  # best first
        task_margin = float(margin.get(task, math.nan))
        for a, b in combinations(order, 2):
            diff = (wide[a] - wide[b]).dropna().to_numpy()
            tests = {k: float(v) for k, v in paired_tests(diff, task_margin, confidence).items()}
            pair = {"task": task, "a": a, "b": b, "margin": task_margin, "n_seeds": len(diff)}
            rows.append(pair | tests)
    table = pd.DataFrame(rows, columns=[c for c in VERDICTS if c != "verdict"])
    table["verdict"] = decide(table.effect, table.p_diff, table.p_equiv, alpha)
    return table[VERDICTS]


def gains(
    scores: pd.DataFrame, start: Mapping[str, float], confidence: float = 0.95
) -> pd.DataFrame:
    """Each column's gain over the starting policy: mean(value) - start with the Student-t
    interval of the mean at `confidence` (the start is one score, the same for every seed).
    Columns GAINS; NaN where the task's start is unknown or a column has one seed."""
    rows = []
    for (task, estimator), group in scores.groupby(["task", "estimator"]):
        values = group.value.to_numpy(float)
        n, origin = len(values), float(start.get(task, math.nan))
        gain = values.mean() - origin
        half = math.nan
        if n >= 2:
            half = sps.t.ppf(0.5 + confidence / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
        rows.append([task, estimator, n, origin, gain, gain - half, gain + half])
    return pd.DataFrame(rows, columns=GAINS)


def vacuous(gain_table: pd.DataFrame) -> dict[str, bool | None]:
    """Per task: True where no column's gain interval lies above 0 (no column learnt, so
    "equivalent" only says that none moved), False where one does, None where unknown."""
    flags: dict[str, bool | None] = {}
    for task, rows in gain_table.groupby("task"):
        known = rows.ci_low.notna()
        flags[task] = None if not known.any() else not bool((rows.ci_low[known] > 0).any())
    return flags


def decision_rates(table: pd.DataFrame, flags: Mapping[str, bool | None]) -> pd.DataFrame:
    """Per task: its margin, pairs, pairs decided (any verdict but undecided), the rate,
    the count of each verdict and whether its equivalences are vacuous; columns RATES."""
    rows = []
    for task, rows_of_task in table.groupby("task"):
        counts = rows_of_task.verdict.value_counts()
        decided = len(rows_of_task) - int(counts.get(UNDECIDED, 0))
        row = {"task": task, "margin": rows_of_task.margin.iloc[0], "pairs": len(rows_of_task)}
        row |= {"decided": decided, "rate": decided / len(rows_of_task)}
        row |= {label: int(counts.get(label, 0)) for label in LABELS}
        rows.append(row | {"vacuous": flags.get(task)})
    return pd.DataFrame(rows, columns=RATES)


ONE_LOOK = (
    "the p-values of both tests of every pair are adjusted together (Holm's step-down with "
    "Shaffer's count), so the chance of any wrong verdict in this report is at most 5%"
)


def markdown(
    table: pd.DataFrame, rates: pd.DataFrame, gain_table: pd.DataFrame, rule: str = ONE_LOOK
) -> list[str]:
    """The report's "Verdicts" section: decision rates, gains over the start, decided pairs;
    `rule` says how the error rate is kept (one look: ONE_LOOK)."""
    lines = [
        "## Verdicts",
        'Each pair is "A better" or "B better" (paired t-test), "equivalent" (paired TOST: '
        f'the difference lies within ±margin) or "undecided"; {rule} (docs/statistics.md). '
        "All pairs: `verdicts.csv`.",
        "Decision rate per task (pairs decided out of all pairs):",
        render.frame_markdown(rates),
        "Gain of each column over the starting policy (mean - start, 95% t-interval):",
        render.frame_markdown(gain_table),
    ]
    for task, flag in zip(rates.task, rates.vacuous, strict=True):
        if flag is True:
            lines.append(
                f"**{task}: the equivalences are vacuous**: no column's gain over the start "
                'has an interval above 0, so "equivalent" only says that none of them learnt.'
            )
        elif flag is None:
            lines.append(f"{task}: the start score is unknown; equivalences are unqualified.")
    decided = table[table.verdict != UNDECIDED]
    lines.append("Decided pairs (p-values before the adjustment):")
    lines.append(render.frame_markdown(decided) if len(decided) else "None.")
    return lines


def write(
    out: Path,
    scores: pd.DataFrame,
    start: Mapping[str, float],
    margin: Mapping[str, float],
    alpha: float = 0.05,
    table: pd.DataFrame | None = None,
    rule: str = ONE_LOOK,
) -> dict[str, Any]:
    """Write verdicts.csv and the verdict matrix verdicts.png (none without a pair) into
    `out`; returns the tables (verdicts, rates, gains), the figures' paths and the Markdown
    section (`markdown`). `table`: verdicts reached otherwise (an adaptive suite's,
    reports/sequential.py, with its `rule`), instead of `verdict_table`'s one look."""
    if table is None:
        table = verdict_table(scores, margin, alpha)
    gain_table = gains(scores, start)
    rates = decision_rates(table, vacuous(gain_table))
    table.to_csv(out / "verdicts.csv", index=False)
    figures = []
    if len(table):
        figures.append(render.verdict_figure(table, out / "verdicts.png", COLOURS))
    return {
        "verdicts": table,
        "rates": rates,
        "gains": gain_table,
        "figures": figures,
        "sections": markdown(table, rates, gain_table, rule),
    }
