"""Paired, robust statistics for comparing estimators over seeds.

Follows Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical
Precipice" (arXiv:2108.13264, the `rliable` library): the interquartile mean (IQM), percentile
bootstrap intervals, a stratified bootstrap for aggregates over tasks, the probability of
improvement and performance profiles. rliable itself is archived and pins an old `arch`, so
the same quantities are computed here with scipy and statsmodels.

Input is a tidy table `scores` with columns `task, estimator, seed, value`: one final held-out
metric per run. Runs with the same seed saw the same prompts, so two estimators are compared
on the seeds both ran (paired), and their paired t-tests are Holm-corrected over all pairs of
all tasks.

Bootstrap method: percentile, not BCa. With the 3-10 seeds of a typical comparison, BCa's
acceleration is a jackknife over those few runs and is itself noisy; it is undefined (NaN,
with a warning) when the values are all equal, and scipy cannot stratify it. The percentile
interval is the one rliable reports, is stable for tiny samples and degenerates to a point for
constant data. Its cost: it is somewhat too narrow with very few seeds, so read it together
with the paired test and the minimum detectable effect.

Deviations: none in rliable's definitions. Choices: P(improvement) is rliable's unpaired one
over all runs of the two estimators, while differences and t-tests are paired on seed; `all`
rows get no rank (see `leaderboard`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.tools.sm_exceptions import ConvergenceWarning

ALL = "all"  # task name of the cross-task aggregate rows
LEADERBOARD = ["task", "estimator", "n", "mean", "iqm", "ci_low", "ci_high", "rank"]
PAIRS = [
    "task",
    "a",
    "b",
    "mean_diff",
    "diff_ci_low",
    "diff_ci_high",
    "prob_improvement",
    "p_holm",
    "mde",
    "p_value",
    "n",
    "seeds_needed",
]
PROFILE = ["estimator", "tau", "fraction", "ci_low", "ci_high"]
FEW_SEEDS = 9  # up to here `seeds_needed` counts seeds instead of trusting the nobs solver
RESAMPLES = 10_000  # bootstrap resamples: endpoints vary by about 1% of the width between seeds

Statistic = Callable[[np.ndarray], np.ndarray]  # values [..., n] -> statistic [...] or [k, ...]


def mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Arithmetic mean along `axis` (the statistic form `bootstrap_ci` expects)."""
    return np.mean(values, axis=axis)


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% (scipy's 25% trimmed mean)."""
    return stats.trim_mean(values, 0.25, axis=axis)


def bootstrap_ci(
    strata: Sequence[np.ndarray],
    statistic: Statistic,
    confidence: float = 0.95,
    n_resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of `statistic` over the pooled values of all `strata`.

    Each stratum (a task's seeds) is resampled with replacement within itself, so every
    resample keeps the per-task counts (rliable's stratified bootstrap); one stratum is the
    plain bootstrap. `statistic(values)` gets the pooled resamples as an array [batch, n] and
    reduces the last axis. A stratum of one value is held fixed (it can only redraw itself);
    with no stratum of 2 or more values the interval is NaN. Constant data give a point.
    """
    strata = [np.asarray(s, dtype=float) for s in strata]
    varied = [s for s in strata if len(s) >= 2]
    fixed = np.concatenate([s for s in strata if len(s) < 2] + [np.empty(0)])
    if not varied:
        return np.float64(math.nan), np.float64(math.nan)

    def pooled(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        constant = np.broadcast_to(fixed, (*samples[0].shape[:-1], len(fixed)))
        return statistic(np.concatenate([*samples, constant], axis=-1))

    result = stats.bootstrap(
        varied,
        pooled,
        paired=False,  # independent resampling per stratum = stratified
        vectorized=True,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return result.confidence_interval.low, result.confidence_interval.high


def normalise(
    scores: pd.DataFrame, start: Mapping[str, float] | pd.Series | None = None
) -> pd.DataFrame:
    """Scores as a fraction of the way from the starting policy to the task's best run.

    `value -> (value - start) / (best - start)` per task, where `best` is the task's best run
    and `start` the starting policy's score of the task; tasks missing from `start` (or all,
    with `start=None`) use min-max over their runs (`start` = the worst run). A task whose best
    run does not beat `start` cannot be normalised (0 or negative scale): its values are NaN
    and it drops out of the aggregate.
    """
    start = {} if start is None else dict(start)
    grouped = scores.groupby("task").value
    best = grouped.transform("max")
    low = scores.task.map(start).astype(float).fillna(grouped.transform("min"))
    scale = (best - low).where(best > low)
    return scores.assign(value=(scores.value - low) / scale)


def _task_rows(scores: pd.DataFrame, confidence: float, n_resamples: int, seed: int) -> list[list]:
    """Leaderboard rows per task and estimator: mean, IQM and the bootstrap CI of the mean."""
    rows = []
    for (task, estimator), group in scores.groupby(["task", "estimator"]):
        values = group.value.to_numpy(float)
        low, high = bootstrap_ci([values], mean, confidence, n_resamples, seed)
        rows.append([task, estimator, len(values), values.mean(), float(iqm(values)), low, high])
    return rows


def _aggregate_rows(
    normalised: pd.DataFrame, confidence: float, n_resamples: int, seed: int
) -> list[list]:
    """`all` rows: mean and IQM of the normalised scores, stratified bootstrap CI of the IQM."""
    rows = []
    for estimator, group in normalised.dropna(subset=["value"]).groupby("estimator"):
        strata = [g.value.to_numpy(float) for _, g in group.groupby("task")]
        values = np.concatenate(strata)
        low, high = bootstrap_ci(strata, iqm, confidence, n_resamples, seed)
        rows.append([ALL, estimator, len(values), values.mean(), float(iqm(values)), low, high])
    return rows


def leaderboard(
    scores: pd.DataFrame,
    start: Mapping[str, float] | pd.Series | None = None,
    confidence: float = 0.95,
    n_resamples: int = RESAMPLES,
    seed: int = 0,
    alpha: float = 0.05,
    pair_table: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per task and estimator: n runs, mean, IQM, a bootstrap interval and the rank.

    Task rows: `ci_low`/`ci_high` is the percentile bootstrap interval of the mean over seeds
    (NaN with one seed, a point when all seeds agree); `rank` comes from `ranks` (Holm-corrected
    paired tests, `alpha`). Rows with task `all`: scores normalised by `normalise(scores,
    start)`, pooled over tasks and seeds; `iqm` is rliable's headline aggregate and the interval
    is the stratified bootstrap interval of that IQM. `all` rows have no rank (NaN): a rank is
    a per-task claim backed by the same Holm family as `pairs`. An estimator missing a task
    is aggregated over the tasks it ran. Pass `pair_table` to reuse a `pairs` result.
    """
    rows = _task_rows(scores, confidence, n_resamples, seed)
    rows += _aggregate_rows(normalise(scores, start), confidence, n_resamples, seed)
    board = pd.DataFrame(rows, columns=LEADERBOARD[:-1])
    if pair_table is None:
        pair_table = pairs(scores, confidence, n_resamples, seed)
    ranked = ranks(scores, pair_table, alpha)
    board = board.merge(ranked, on=["task", "estimator"], how="left")
    return board[LEADERBOARD]


def probability_of_improvement(a: np.ndarray, b: np.ndarray) -> float:
    """P(X_a > X_b) over all runs of a and b, ties counting 1/2: U_a / (n_a n_b) (rliable)."""
    return float(stats.mannwhitneyu(a, b).statistic / (len(a) * len(b)))


def detectable_effect(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Standardised effect d (mean / sd of the differences) a paired t-test on n seeds detects.

    Two-sided at `alpha` with `power`; statsmodels solves the noncentral-t power for d, which
    decreases with n (11.55 at 2 seeds, 1.68 at 5, 1.00 at 10 for the defaults).
    """
    d = TTestPower().solve_power(nobs=n, alpha=alpha, power=power, alternative="two-sided")
    return float(np.asarray(d).item())  # a 1-element array where a backup solver was used


def min_detectable_effect(n: int, sd: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Mean paired difference a two-sided paired t-test on n seeds detects with `power`.

    mde = d * sd, with d from `detectable_effect` and sd the standard deviation of the paired
    differences. NaN with fewer than 2 seeds.
    """
    if n < 2 or not np.isfinite(sd):
        return math.nan
    return detectable_effect(n, alpha, power) * sd


def seeds_needed(mean_diff: float, sd: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Seeds a two-sided paired t-test needs to detect `mean_diff` with `power` (at least 2).

    statsmodels' `solve_power` for nobs at effect size |mean_diff| / sd, rounded up; at most
    FEW_SEEDS seeds, the smallest n whose `detectable_effect` is <= the effect size. inf when
    the difference is 0 (no number of seeds detects it); NaN when sd is 0 or NaN (effect size
    undefined: one seed, or identical differences).
    """
    if not (np.isfinite(sd) and sd > 0 and np.isfinite(mean_diff)):
        return math.nan
    if mean_diff == 0:
        return math.inf
    effect = abs(mean_diff) / sd
    if detectable_effect(FEW_SEEDS, alpha, power) > effect:  # needs more than FEW_SEEDS
        with warnings.catch_warnings():
            # statsmodels warns and returns NaN where it does not converge
            warnings.simplefilter("ignore", ConvergenceWarning)
            nobs = TTestPower().solve_power(
                effect, alpha=alpha, power=power, alternative="two-sided"
            )
        return float(math.ceil(nobs)) if np.isfinite(nobs) else math.nan
    # Large effects: with few degrees of freedom and a large noncentrality scipy's noncentral
    # t returns NaN, and the nobs solver stalls or lands off the root. Count up instead.
    n = 2
    while detectable_effect(n, alpha, power) > effect:
        n += 1
    return float(n)


def pair_row(
    task: str,
    a: pd.Series,
    b: pd.Series,
    confidence: float = 0.95,
    n_resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict:
    """Statistics of a - b on one task; `a`, `b` are values indexed by seed."""
    matched = pd.concat({"a": a, "b": b}, axis=1, join="inner")  # seeds both ran
    diff = (matched.a - matched.b).to_numpy(float)
    n = len(diff)
    sd = float(diff.std(ddof=1)) if n >= 2 else math.nan
    low, high = bootstrap_ci([diff], mean, confidence, n_resamples, seed)
    # identical differences (up to float rounding: scipy would warn of catastrophic
    # cancellation) give t = +-inf, p = 0: undefined, so NaN
    spread = sd > 1e-9 * max(abs(float(diff.mean())), 1e-300) if n >= 2 else False
    p = float(stats.ttest_rel(matched.a, matched.b).pvalue) if spread else math.nan
    return {
        "task": task,
        "a": a.name,
        "b": b.name,
        "mean_diff": float(diff.mean()) if n else math.nan,
        "diff_ci_low": float(low),
        "diff_ci_high": float(high),
        "prob_improvement": probability_of_improvement(a.to_numpy(float), b.to_numpy(float)),
        "p_value": p,
        "mde": min_detectable_effect(n, sd),
        "n": n,
        "seeds_needed": seeds_needed(float(diff.mean()) if n else math.nan, sd),
    }


def holm(p_values: pd.Series) -> pd.Series:
    """Holm-corrected p-values over all finite entries; NaN entries stay NaN."""
    finite = p_values.dropna()
    corrected = pd.Series(math.nan, index=p_values.index)
    if len(finite):
        corrected[finite.index] = multipletests(finite.to_numpy(), method="holm")[1]
    return corrected


def pairs(
    scores: pd.DataFrame,
    confidence: float = 0.95,
    n_resamples: int = RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """Every unordered pair of estimators on each task, compared on the seeds both ran.

    Per row (a = the estimator with the higher mean on the task, so mean_diff is usually
    positive; ties alphabetical): `mean_diff` of a - b over the n matched seeds with its
    paired percentile bootstrap interval (seeds resampled); `prob_improvement` P(X_a > X_b)
    over all runs of each; `p_value` of the paired t-test (NaN with n < 2 or constant
    differences) and `p_holm`, Holm-corrected over all pairs of all tasks; `mde`, the mean
    difference detectable with power 0.8 at alpha 0.05; `seeds_needed` to detect the observed
    difference (see `seeds_needed`).
    """
    rows = []
    for task, group in scores.groupby("task"):
        by = {e: g.set_index("seed").value.rename(e) for e, g in group.groupby("estimator")}
        order = sorted(by, key=lambda e: (-by[e].mean(), e))  # best first
        for a, b in combinations(order, 2):
            rows.append(pair_row(task, by[a], by[b], confidence, n_resamples, seed))
    table = pd.DataFrame(rows, columns=[c for c in PAIRS if c != "p_holm"])
    table["p_holm"] = holm(table.p_value)
    return table[PAIRS]


def pair_verdicts(pair_table: pd.DataFrame, alpha: float = 0.05) -> dict[tuple[str, str], str]:
    """Each pair's verdict, keyed (task, "a vs b" with a, b in alphabetical order): "a > b"
    (the better first) where its Holm-corrected paired test rejects at `alpha`, else
    "no difference". Two leaderboards' verdicts compare key by key."""
    verdicts = {}
    for row in pair_table.itertuples():
        verdict = "no difference"
        if row.p_holm < alpha:
            verdict = f"{row.a} > {row.b}" if row.mean_diff > 0 else f"{row.b} > {row.a}"
        verdicts[(row.task, " vs ".join(sorted((row.a, row.b))))] = verdict
    return verdicts


def ranks(scores: pd.DataFrame, pair_table: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Estimators grouped into ranks per task: columns task, estimator, rank (1 = best).

    Rank 1 is the best estimator by mean plus every estimator whose Holm-corrected paired
    difference to it is not significant at `alpha` (an untestable pair, p_holm NaN, counts as
    not significant); remove them and repeat on the rest for rank 2, and so on.
    """
    p_holm = {(r.task, frozenset((r.a, r.b))): r.p_holm for r in pair_table.itertuples(index=False)}
    rows = []
    for task, group in scores.groupby("task"):
        means = group.groupby("estimator").value.mean()
        remaining = sorted(means.index, key=lambda e: (-means[e], e))  # best first
        rank = 1
        while remaining:
            best = remaining[0]
            tied = [
                e
                for e in remaining
                if e == best or not p_holm.get((task, frozenset((best, e))), math.nan) < alpha
            ]
            rows += [{"task": task, "estimator": e, "rank": rank} for e in tied]
            remaining = [e for e in remaining if e not in tied]
            rank += 1
    return pd.DataFrame(rows, columns=["task", "estimator", "rank"])


def performance_profile(
    normalised: pd.DataFrame,
    taus: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """rliable's run-score profile: per estimator and tau, the fraction of runs scoring > tau.

    `normalised` is `normalise(scores, start)`; runs of all tasks are pooled (NaN scores
    dropped) and the band is the stratified (seeds within task) percentile bootstrap interval.
    Columns: estimator, tau, fraction, ci_low, ci_high.
    """
    taus = np.asarray(taus, dtype=float)

    def fractions(values: np.ndarray) -> np.ndarray:  # [..., n] -> [taus, ...]
        return np.stack([(values > tau).mean(axis=-1) for tau in taus])

    frames = []
    for estimator, group in normalised.dropna(subset=["value"]).groupby("estimator"):
        strata = [g.value.to_numpy(float) for _, g in group.groupby("task")]
        low, high = bootstrap_ci(strata, fractions, confidence, n_resamples, seed)
        fraction = fractions(np.concatenate(strata))
        frames.append(
            pd.DataFrame(
                {
                    "estimator": estimator,
                    "tau": taus,
                    "fraction": fraction,
                    "ci_low": np.broadcast_to(low, taus.shape),
                    "ci_high": np.broadcast_to(high, taus.shape),
                }
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PROFILE)
