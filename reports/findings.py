"""Findings: the field's claims about estimators, tested on a suite's runs.

A pair claim says "a > b" for a per-run quantity (the final held-out metric, the mean
length of wrong test answers, or the policy's mean entropy over training) of two leaderboard
columns (estimators or protocol variants); it is tested on every task where both columns
ran, by the paired difference a - b over the seeds both ran (`stats.pair_row`: mean, 95%
percentile bootstrap interval, paired t-test). The correlation claim says lower gradient
variance (`pgbench variance`) goes with faster learning (a larger area under the valid
curve): Kendall's tau across estimators, exact p-value.

All the p-values of one findings table are Holm-corrected together, and each row gets:
    supported      corrected p < 0.05 and the effect has the claimed sign
    contradicted   corrected p < 0.05 and the opposite sign
    inconclusive   otherwise: no difference detected at these seeds (see mde)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from scipy import stats as scipy_stats

from pgbench.reports import stats

FINDINGS = [
    "claim",
    "task",
    "a",
    "b",
    "quantity",
    "effect",
    "ci_low",
    "ci_high",
    "n",
    "p_value",
    "p_holm",
    "mde",
    "verdict",
    "source",
]


@dataclass(frozen=True)
class Claim:
    """`quantity` of column a is larger than that of column b."""

    claim: str
    source: str
    a: str
    b: str
    quantity: str = "metric"  # a column of `per_run.quantity`


CLAIMS = [
    Claim(
        "RLOO beats REINFORCE without a baseline",
        "Ahmadian et al. 2024, arXiv:2402.14740",
        "rloo",
        "reinforce",
    ),
    Claim(
        "RLOO is at least as good as PPO", "Ahmadian et al. 2024, arXiv:2402.14740", "rloo", "ppo"
    ),
    Claim(
        "GRPO's std scaling and per-sequence length normalisation lengthen wrong answers, "
        "against Dr. GRPO (mean characters of wrong test answers)",
        "Liu et al. 2025, arXiv:2503.20783",
        "grpo_seq",
        "dr_grpo",
        quantity="wrong_chars",
    ),
    Claim(
        "k1 KL in the reward beats k3 KL in the loss",
        '"A Comedy of Estimators", arXiv:2512.21852',
        "rloo",
        "rloo_k3",
    ),
    Claim(
        "Lite PPO (group mean, batch std, token-level loss) beats GRPO",
        "Liu et al. 2025, Tricks or Traps, arXiv:2508.08221",
        "lite_ppo",
        "grpo",
    ),
    Claim(
        "Clip-higher keeps the policy's entropy higher than symmetric clipping (mean entropy)",
        "Yu et al. 2025, DAPO, arXiv:2503.14476",
        "clip_higher",
        "grpo",
        quantity="entropy",
    ),
]
# the off-policy protocol's columns at staleness k are named stale<k>_<variant>
for _k in (2, 4):
    _stale = f"stale{_k}_"
    CLAIMS += [
        Claim(
            f"CISPO beats GSPO on rollouts {_k} updates stale",
            "Khatri et al. 2025, ScaleRL, arXiv:2510.13786",
            _stale + "cispo",
            _stale + "gspo",
        ),
        Claim(
            f"GSPO beats PPO-clip on rollouts {_k} updates stale",
            "Khatri et al. 2025, ScaleRL, arXiv:2510.13786",
            _stale + "gspo",
            _stale + "ppo_clip",
        ),
        Claim(
            f"Truncated importance sampling (TIS) beats no correction at staleness {_k}",
            "verl rollout correction; Yao et al. 2025",
            _stale + "tis",
            _stale + "ppo_clip",
        ),
        Claim(
            f"Masked importance sampling (MIS) beats no correction at staleness {_k}",
            "verl rollout correction; Liu, Li et al. 2025",
            _stale + "mis",
            _stale + "ppo_clip",
        ),
        Claim(
            f"Clip-higher keeps the policy's entropy higher at staleness {_k} (mean entropy)",
            "Yu et al. 2025, DAPO, arXiv:2503.14476",
            _stale + "clip_higher",
            _stale + "ppo_clip",
            quantity="entropy",
        ),
    ]
VARIANCE_CLAIM = "Lower gradient variance goes with faster learning (valid-curve area)"
VARIANCE_SOURCE = "pgbench variance; Kendall's tau across estimators"


def _pair_rows(per_run: pd.DataFrame) -> list[dict]:
    rows = []
    for claim in CLAIMS:
        values = per_run[per_run.quantity == claim.quantity]
        for task, group in values.groupby("task"):
            by = {e: g.set_index("seed").value.rename(e) for e, g in group.groupby("estimator")}
            if claim.a not in by or claim.b not in by:
                continue
            row = stats.pair_row(task, by[claim.a], by[claim.b])
            rows.append(
                {
                    "claim": claim.claim,
                    "task": task,
                    "a": claim.a,
                    "b": claim.b,
                    "quantity": claim.quantity,
                    "effect": row["mean_diff"],
                    "ci_low": row["diff_ci_low"],
                    "ci_high": row["diff_ci_high"],
                    "n": row["n"],
                    "p_value": row["p_value"],
                    "mde": row["mde"],
                    "source": claim.source,
                }
            )
    return rows


def _variance_rows(per_run: pd.DataFrame, variance: dict[str, dict[str, float]]) -> list[dict]:
    """Kendall's tau of total gradient variance against mean valid-curve area, per task."""
    rows = []
    auc = per_run[per_run.quantity == "auc"].groupby(["task", "estimator"]).value.mean()
    for task, by_estimator in sorted(variance.items()):
        common = [e for e in sorted(by_estimator) if (task, e) in auc.index]
        if len(common) < 3:
            continue
        result = scipy_stats.kendalltau(
            [by_estimator[e] for e in common], [auc[task, e] for e in common], method="exact"
        )
        rows.append(
            {
                "claim": VARIANCE_CLAIM,
                "task": task,
                "a": "total_variance",
                "b": "auc",
                "quantity": "kendall_tau",
                # the claim is a negative association: supported when tau < 0
                "effect": -float(result.statistic),
                "ci_low": math.nan,
                "ci_high": math.nan,
                "n": len(common),
                "p_value": float(result.pvalue),
                "mde": math.nan,
                "source": VARIANCE_SOURCE,
            }
        )
    return rows


def findings(
    per_run: pd.DataFrame,
    variance: dict[str, dict[str, float]] | None = None,
    alpha: float = 0.05,
    extra: list[dict] | None = None,
) -> pd.DataFrame:
    """Every claim on every task where its columns ran, with a verdict (see the module doc).

    `per_run` has columns task, estimator, seed, quantity, value (quantities: metric, auc,
    wrong_chars, ...); `variance` maps task -> {estimator: total_variance}. For the variance
    claim, `effect` is -tau, so a positive effect is the claimed direction. `extra`: more
    rows of the same form (the transfer finding, reports/transfer.py).
    """
    rows = _pair_rows(per_run) + _variance_rows(per_run, variance or {}) + (extra or [])
    table = pd.DataFrame(rows, columns=[c for c in FINDINGS if c not in ("p_holm", "verdict")])
    table["p_holm"] = stats.holm(table.p_value)
    significant = table.p_holm < alpha
    table["verdict"] = "inconclusive"
    table.loc[significant & (table.effect > 0), "verdict"] = "supported"
    table.loc[significant & (table.effect < 0), "verdict"] = "contradicted"
    return table[FINDINGS]


def markdown(table: pd.DataFrame) -> str:
    """The findings as a Markdown table (effects in the quantity's units)."""
    lines = [
        "| claim | task | a vs b | effect (a - b) [95% CI] | p (Holm) | MDE | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in table.itertuples():
        interval = "" if math.isnan(row.ci_low) else f" [{row.ci_low:.2f}, {row.ci_high:.2f}]"
        effect = f"{row.effect:+.2f}{interval}"
        if row.quantity in ("kendall_tau", "transfer_tau"):
            tau = -row.effect if row.quantity == "kendall_tau" else row.effect
            effect = f"tau = {tau:+.2f} (n={row.n})"
        mde = "" if math.isnan(row.mde) else f"{row.mde:.2f}"
        lines.append(
            f"| {row.claim} ({row.source}) | {row.task} | {row.a} vs {row.b} ({row.quantity}) "
            f"| {effect} | {row.p_holm:.3g} | {mde} | **{row.verdict}** |"
        )
    return "\n".join(lines)
