"""Verdicts under repeated looks, for adaptive seeds: a suite judges its pairs after the first
seeds and adds seeds only to the columns that still have an undecided pair.

Looks: every column starts with `initial` test seeds; a pair of columns is judged at
n_1 = initial, n_2 = initial + batch, ... up to `max` seeds, always on the seeds 0..n_j-1
that both columns ran (the planned schedule), and keeps the first verdict it reaches.

The error rate (docs/statistics.md, "Adaptive seeds"): each look j spends a share of alpha
given by Lan and DeMets' (1983) Pocock-type spending function f(t) = alpha ln(1 + (e - 1) t)
at the information fraction t_j = n_j / max (Pocock 1977's design as a spending function):
the look's level is f(t_j) - f(t_{j-1}), and these sum to alpha at the last look. The family
is every pair of the suite (m of them), each pair at alpha / m (Bonferroni), and both tests
of a pair (difference and TOST equivalence, `verdicts.paired_tests`) at the pair's level:
a pair's two null hypotheses exclude each other, so at most one of them is true. A wrong
verdict therefore needs the true hypothesis of some pair to be rejected at some look, and

    P(any wrong verdict) <= sum_pairs sum_looks (alpha / m) (f(t_j) - f(t_{j-1})) = alpha,

whatever the dependence between looks, pairs and tasks (the union bound: the boundaries are
conservative against exact group-sequential ones, which would use the looks' correlation).
The data are what make it valid: an open pair's columns always have the planned seeds at
each look, because seeds are added to both columns of every undecided pair, and a pair's
verdict depends on its own planned data only, never on when other pairs stopped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from pgbench.errors import ConfigError
from pgbench.reports import render, verdicts

# verdicts.VERDICTS, then the look that decided the pair (or the last one judged: -1 none)
# and the level each of its tests was held to there
COLUMNS = [*verdicts.VERDICTS, "look", "level"]


@dataclass(frozen=True)
class Design:
    """An adaptive-seed design: the looks (seed counts) and the family of pairs it judges."""

    looks: tuple[int, ...]  # n_1 < n_2 < ... <= max
    pairs: int  # m: the pairs of every task of the suite, fixed when it is planned
    alpha: float = 0.05

    @classmethod
    def of(cls, initial: int, maximum: int, batch: int, pairs: int) -> Design:
        """Looks at initial, initial + batch, ... and at `maximum` (a last, shorter batch)."""
        if maximum < initial or batch < 1:
            raise ConfigError(
                f"[seeds] needs max >= initial and batch >= 1 (got initial={initial}, "
                f"max={maximum}, batch={batch})"
            )
        looks = list(range(initial, maximum + 1, batch))
        if looks[-1] != maximum:
            looks.append(maximum)
        return cls(tuple(looks), max(pairs, 1))

    def levels(self) -> np.ndarray:
        """Each look's level for each test of one pair: alpha / m times the spending
        function's increment."""
        t = np.asarray(self.looks, dtype=float) / self.looks[-1]
        spent = self.alpha * np.log1p((math.e - 1.0) * t)
        return np.diff(spent, prepend=0.0) / self.pairs


def decide(
    diffs: np.ndarray, margin: float, design: Design
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Vectorised over pairs: per-seed differences `diffs` [..., n] of the planned seeds
    0..n-1, judged at each look with at most n seeds (at least the first look's); returns
    (verdicts [...], the deciding look [...] or else the last one judged, the tests there)."""
    diffs = np.asarray(diffs, dtype=float)
    shape = diffs.shape[:-1]
    verdict = np.full(shape, verdicts.UNDECIDED, dtype=object)
    look = np.zeros(shape, dtype=int)
    tests: dict[str, np.ndarray] = {}
    for j, (n, level) in enumerate(zip(design.looks, design.levels(), strict=True)):
        if n > diffs.shape[-1]:
            break
        now = verdicts.paired_tests(diffs[..., :n], margin)
        open_ = verdict == verdicts.UNDECIDED
        better = np.where(now["effect"] > 0, verdicts.A_BETTER, verdicts.B_BETTER)
        reached = np.where(
            now["p_diff"] < level,
            better,
            np.where(now["p_equiv"] < level, verdicts.EQUIVALENT, verdicts.UNDECIDED),
        )
        verdict = np.where(open_, reached, verdict)
        look = np.where(open_, j, look)
        tests = {k: np.where(open_, v, tests.get(k, v)) for k, v in now.items()}
    return verdict, look, tests


def judge_pair(diffs: pd.Series, margin: float, design: Design) -> dict[str, float | str | int]:
    """A pair's verdict from its per-seed differences (index: seed; NaN: not run), judged at
    each look whose seeds 0..n-1 are all there (`decide`); look -1: not judged yet."""
    planned = diffs.reindex(range(design.looks[-1]))
    ran = int(planned.notna().cumprod().sum())  # the planned seeds run, from seed 0 on
    reached = [n for n in design.looks if n <= ran]
    if not reached:
        effect = float(diffs.mean())
        return {"effect": effect, "n_seeds": int(diffs.notna().sum()), "look": -1}
    verdict, look, tests = decide(planned.to_numpy()[: reached[-1]], margin, design)
    j = int(look)
    row = {k: float(v) for k, v in tests.items()} | {"verdict": str(verdict), "look": j}
    return row | {"n_seeds": design.looks[j], "level": float(design.levels()[j])}


def verdict_table(
    scores: pd.DataFrame, margin: Mapping[str, float], design: Design
) -> pd.DataFrame:
    """Every pair of columns of each task with its verdict under `design`; columns COLUMNS.

    `scores`: task, estimator, seed, value. As in `verdicts.verdict_table`, a is the column
    with the higher mean over all its seeds (ties alphabetical)."""
    rows = []
    for task, group in scores.groupby("task"):
        wide = group.pivot(index="seed", columns="estimator", values="value")
        order = sorted(wide.columns, key=lambda e: (-wide[e].mean(), e))
        task_margin = float(margin.get(task, math.nan))
        for a, b in combinations(order, 2):
            pair = {"task": task, "a": a, "b": b, "margin": task_margin}
            judged = judge_pair(wide[a] - wide[b], task_margin, design)
            rows.append(pair | {"verdict": verdicts.UNDECIDED} | judged)
    return pd.DataFrame(rows, columns=COLUMNS)


def targets(
    table: pd.DataFrame, design: Design, columns: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """The seeds each (task, column) must have run: the first look's, and for each of its pairs
    still undecided the next look after the last one judged (the max at most)."""
    need = dict.fromkeys(columns, design.looks[0])
    for row in table.itertuples():
        if row.verdict != verdicts.UNDECIDED:
            continue
        n = design.looks[min(int(row.look) + 1, len(design.looks) - 1)]
        for column in ((row.task, row.a), (row.task, row.b)):
            need[column] = max(need.get(column, 0), n)
    return need


def seeds_spent(scores: pd.DataFrame, table: pd.DataFrame, design: Design) -> pd.DataFrame:
    """Per task and column: the test seeds it ran, and the pairs of it still undecided."""
    open_pairs = table[table.verdict == verdicts.UNDECIDED]
    rows = []
    for (task, column), group in scores.groupby(["task", "estimator"]):
        mine = open_pairs[
            (open_pairs.task == task) & ((open_pairs.a == column) | (open_pairs.b == column))
        ]
        rows.append([task, column, len(group), design.looks[-1], len(mine)])
    return pd.DataFrame(rows, columns=["task", "estimator", "seeds", "max", "undecided_pairs"])


def rule(design: Design) -> str:
    """The verdicts section's sentence on how this design keeps its error rate."""
    looks = ", ".join(map(str, design.looks))
    return (
        f"pairs are judged after {looks} seeds and keep their first verdict; each look spends "
        f"a share of 5% (Lan-DeMets, Pocock-type) split over the suite's {design.pairs} pairs, "
        "so the chance of any wrong verdict, over all looks, is at most 5%"
    )


def write(out: Path, scores: pd.DataFrame, table: pd.DataFrame, design: Design) -> list[str]:
    """seeds.csv (`seeds_spent`) in `out`, and the report's "Seeds spent" section."""
    spent = seeds_spent(scores, table, design)
    spent.to_csv(out / "seeds.csv", index=False)
    decided = table[table.verdict != verdicts.UNDECIDED]
    at_look = decided.groupby("n_seeds").size().rename("pairs decided").reset_index()
    return [
        "## Seeds spent (adaptive seeds)",
        f"Seeds were added in batches only to the columns with an undecided pair, up to "
        f"{design.looks[-1]}: {int(spent.seeds.sum())} test runs in all, against "
        f"{len(spent) * design.looks[-1]} for every column at the maximum (`seeds.csv`).",
        render.frame_markdown(spent),
        "Pairs decided at each look (seeds per column when decided):",
        render.frame_markdown(at_look) if len(at_look) else "None.",
    ]
