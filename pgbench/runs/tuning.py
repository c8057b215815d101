"""A suite's tuning phase: every column tuned with the same budget, on seeds of its own.

A protocol's `[tune]` table (docs/experiments.md, "Tuned suites"):

    [tune]
    grid = { "trainer.lr" = [3e-5, 1e-4, 3e-4, 1e-3] }  # every combination is a point
    # or: space = "builtin" (each estimator's sweep space) or { key = {type = ...} }, trials = 8
    seeds = [100, 101]         # tuning seeds: disjoint from the test seeds 0..seeds-1
    objective = "valid_final"  # or "valid_auc"; a valid-split quantity, never the test split
    defaults = true            # also rank the columns at the shared defaults
    tasks = ["arith"]          # the tasks tuned (default: all); the others run at defaults

Every column of a tuned task runs every point on every tuning seed, so each gets the same
trials, seeds and steps. A space's points are drawn up front by Optuna's seeded QMC sampler,
independent of results, so the points are known when the suite is planned. A space leaves
out the keys a variant sets (Dr. GRPO's `estimator.scale` is what makes it Dr. GRPO).

Selection (`select`): per task and column, the point with the highest mean objective over
the tuning seeds, ties to the earlier point. Only when every tuning run of a column has
finished is its test phase queued: the selected point on the test seeds.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import pandas as pd

from pgbench.errors import ConfigError
from pgbench.sweeps import spaces

OBJECTIVES = {
    "valid_final": "the valid-split metric at the end of training",
    "valid_auc": "the area under the valid-split curve per step (learning speed)",
}
TUNE_TABLE = {"grid", "space", "trials", "seeds", "objective", "defaults", "tasks"}
SELECTION = ["task", "estimator", "point", "seeds", "objective"]


@dataclass(frozen=True)
class Tune:
    """A protocol's [tune] table, checked for form."""

    seeds: tuple[int, ...]
    objective: str = "valid_final"
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (key, values), in the file's order
    space: str | dict[str, dict[str, Any]] = ""  # "builtin" or a search space
    trials: int = 0
    defaults: bool = True
    tasks: tuple[str, ...] = ()  # empty: every task of the suite

    def tunes(self, task: str) -> bool:
        return not self.tasks or task in self.tasks

    def points(self, estimator: str, fixed: set[str]) -> list[dict[str, Any]]:
        """The points every column of `estimator` runs; a space leaves out the `fixed` keys."""
        if self.grid:
            keys = [key for key, _ in self.grid]
            return [
                dict(zip(keys, combo, strict=True))
                for combo in itertools.product(*(v for _, v in self.grid))
            ]
        space = spaces.builtin(estimator) if self.space == "builtin" else dict(self.space)
        space = {k: v for k, v in space.items() if k not in fixed}
        return draw(space, self.trials)

    def check_seeds(self, test_seeds: int) -> None:
        """Tuning seeds must not be test seeds (0..test_seeds-1)."""
        overlap = sorted(s for s in self.seeds if 0 <= s < test_seeds)
        if overlap:
            raise ConfigError(
                f"[tune] seeds {overlap} are test seeds (0..{test_seeds - 1}); "
                f"tuning seeds must be disjoint from them, e.g. seeds >= {test_seeds}"
            )


def draw(space: spaces.Space, trials: int, seed: int = 0) -> list[dict[str, Any]]:
    """`trials` points of `space` from Optuna's scrambled Sobol sampler, independent of results."""
    with warnings.catch_warnings():  # QMCSampler is experimental; categorical keys fall back
        warnings.simplefilter("ignore")
        sampler = optuna.samplers.QMCSampler(
            seed=seed, scramble=True, warn_independent_sampling=False
        )
        study = optuna.create_study(sampler=sampler)
        return [spaces.suggest(study.ask(), space) for _ in range(trials)]


def read_tune(table: dict[str, Any], where: str) -> Tune:
    """The [tune] table of the protocol at `where`, or a one-line ConfigError."""
    bad = sorted(set(table) - TUNE_TABLE)
    if bad:
        raise ConfigError(f"{where}: unknown tune.{bad[0]}; valid: {sorted(TUNE_TABLE)}")
    objective = table.get("objective", "valid_final")
    if objective not in OBJECTIVES:
        why = " (the test split is never used for selection)" if "test" in str(objective) else ""
        raise ConfigError(
            f"{where}: tune.objective={objective!r} is not a valid-split quantity{why}; "
            f"valid: {', '.join(OBJECTIVES)}"
        )
    seeds = table.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{where}: tune.seeds must be a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: tune.seeds {seeds} repeats a seed")
    grid, space, trials = table.get("grid"), table.get("space"), table.get("trials", 0)
    if (grid is None) == (space is None):
        raise ConfigError(f"{where}: [tune] needs either grid = {{key = [values]}} or space")
    if grid is not None:
        empty = not isinstance(grid, dict) or not grid or any(not v for v in grid.values())
        if empty or not all(isinstance(v, list) for v in grid.values()):
            raise ConfigError(f"{where}: tune.grid is empty; give {{key = [value, ...]}}")
        if trials:
            raise ConfigError(f"{where}: tune.trials applies to a space; a grid runs every point")
    else:
        if space != "builtin":
            spaces.check(space, f"{where}: tune.space")
        if not isinstance(trials, int) or trials < 1:
            raise ConfigError(f"{where}: tune.space needs trials = N (N >= 1 points per column)")
    return Tune(
        seeds=tuple(seeds),
        objective=objective,
        grid=tuple((k, tuple(v)) for k, v in (grid or {}).items()),
        space=space or "",
        trials=trials,
        defaults=bool(table.get("defaults", True)),
        tasks=tuple(table.get("tasks", ())),
    )


def select(runs: pd.DataFrame, seeds: Sequence[int]) -> pd.DataFrame:
    """Per task and column, the point with the best mean valid objective over tuning `seeds`.

    `runs`: one row per run and quantity, columns task, estimator, point, seed, split, value.
    Only rows of the valid split and of the tuning seeds count; a NaN objective (a diverged
    run) ranks last, and ties go to the earlier point. Returns SELECTION columns.
    """
    chosen = runs[(runs.split == "valid") & runs.seed.isin(list(seeds))]
    rows = []
    for (task, column), group in chosen.groupby(["task", "estimator"], sort=False):
        means = group.groupby("point").value.mean().fillna(-math.inf)
        best = int(means.sort_index().idxmax())
        n = int(group[group.point == best].seed.nunique())
        rows.append([task, column, best, n, float(means[best])])
    return pd.DataFrame(rows, columns=SELECTION)
