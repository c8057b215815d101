"""The transfer finding: does a cheap proxy policy rank the columns as the real one does?

Two suites ran the same columns on the same task under the same protocol, one on the real
policy (e.g. SmolLM2) and one on a proxy (e.g. the tiny policy, `suite.proxy` names its
output folder). Per task, over the columns both ran:
  - the order: Kendall's tau between the columns' mean final test metrics on the two
    policies, with its exact p-value (scipy.stats.kendalltau, method="exact"); it joins the
    Findings, Holm-corrected with the other claims (supported: tau > 0 and p_holm < 0.05);
  - each pair's verdict on each policy, as the leaderboard's pairs decide it
    (`stats.pair_verdicts`: "a > b" where the Holm-corrected paired test rejects at 5%, else
    "no difference"); a pair agrees when both verdicts are the same.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from scipy import stats as scipy_stats

from pgbench.reports import stats

CLAIM = "The proxy ranks the columns as the real policy does (mean test metric)"
SOURCE = "pgbench transfer; Kendall's tau across columns"


def read_proxy(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The proxy suite's runs.csv and pairs.csv (plan_suite checked that they are there)."""
    return pd.read_csv(folder / "runs.csv"), pd.read_csv(folder / "pairs.csv")


def tau_rows(runs: pd.DataFrame, proxy_runs: pd.DataFrame, proxy: str) -> list[dict]:
    """One findings row per task: Kendall's tau of the columns' mean test metric."""
    real = runs.groupby(["task", "estimator"]).value.mean()
    cheap = proxy_runs.groupby(["task", "estimator"]).value.mean()
    rows = []
    for task in sorted(set(runs.task) & set(proxy_runs.task)):
        common = sorted(set(real[task].index) & set(cheap[task].index))
        if len(common) < 3:
            continue
        result = scipy_stats.kendalltau(
            [real[task, c] for c in common], [cheap[task, c] for c in common], method="exact"
        )
        rows.append(
            {
                "claim": CLAIM,
                "task": task,
                "a": "this suite",
                "b": proxy,
                "quantity": "transfer_tau",
                "effect": float(result.statistic),
                "ci_low": math.nan,
                "ci_high": math.nan,
                "n": len(common),
                "p_value": float(result.pvalue),
                "mde": math.nan,
                "source": SOURCE,
            }
        )
    return rows


def pair_agreement(pairs: pd.DataFrame, proxy_pairs: pd.DataFrame, alpha: float = 0.05):
    """Every pair both suites tested: its verdict on each policy and whether they agree."""
    real, cheap = stats.pair_verdicts(pairs, alpha), stats.pair_verdicts(proxy_pairs, alpha)
    table = pd.DataFrame(
        [(*key, real[key], cheap[key]) for key in sorted(set(real) & set(cheap))],
        columns=["task", "pair", "verdict", "proxy_verdict"],
    )
    table["agree"] = table.verdict == table.proxy_verdict
    return table
