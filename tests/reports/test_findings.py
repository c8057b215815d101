import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from pgbench.reports.findings import FINDINGS, findings, markdown


def rows(task: str, estimator: str, quantity: str, values: list[float]) -> list[dict]:
    return [
        {"task": task, "estimator": estimator, "seed": s, "quantity": quantity, "value": v}
        for s, v in enumerate(values)
    ]


def table() -> pd.DataFrame:
    data = (
        rows("arith", "rloo", "metric", [50, 52, 54, 56, 58, 60])
        + rows("arith", "reinforce", "metric", [40, 41, 42, 43, 45, 44])  # rloo far better
        + rows("arith", "ppo", "metric", [51, 51, 55, 55, 59, 61])  # a wash with rloo
        + rows("arith", "grpo_seq", "wrong_chars", [9, 8, 10, 9, 11, 10])
        + rows("arith", "dr_grpo", "wrong_chars", [12, 12, 13, 12, 14, 13])  # longer wrong answers
        + rows("fr_en", "rloo", "metric", [40.0, 40.5])  # no reinforce on fr_en
    )
    for task, areas in {"arith": [3.0, 2.0, 1.0, 4.0], "fr_en": [1.0, 2.0, 3.0]}.items():
        for estimator, area in zip(["rloo", "reinforce", "ppo", "grpo"], areas, strict=False):
            data += rows(task, estimator, "auc", [area, area])
    return pd.DataFrame(data)


def test_findings_by_hand():
    variance = {
        "arith": {"rloo": 1.0, "reinforce": 2.0, "ppo": 3.0, "grpo": 0.5},
        "fr_en": {"rloo": 1.0},  # fewer than 3 estimators: no correlation row
    }
    found = findings(table(), variance).set_index(["claim", "task"])
    assert list(found.reset_index().columns) == FINDINGS
    assert len(found) == 4  # rloo-reinforce, rloo-ppo, grpo_seq-dr_grpo on arith; variance

    rloo = np.array([50, 52, 54, 56, 58, 60.0])
    pairs = {
        "reinforce": np.array([40, 41, 42, 43, 45, 44.0]),
        "ppo": np.array([51, 51, 55, 55, 59, 61.0]),
    }
    p = {k: scipy_stats.ttest_rel(rloo, v).pvalue for k, v in pairs.items()}
    seq, dr = np.array([9, 8, 10, 9, 11, 10.0]), np.array([12, 12, 13, 12, 14, 13.0])
    wrong = scipy_stats.ttest_rel(seq, dr).pvalue
    tau = scipy_stats.kendalltau([1.0, 2.0, 3.0, 0.5], [3.0, 2.0, 1.0, 4.0], method="exact")
    raw = sorted([p["reinforce"], p["ppo"], wrong, tau.pvalue])
    holm = np.minimum(1, np.maximum.accumulate([(4 - i) * q for i, q in enumerate(raw)]))
    corrected = dict(zip(raw, holm, strict=True))

    row = found.loc[("RLOO beats REINFORCE without a baseline", "arith")]
    assert math.isclose(row.effect, (rloo - pairs["reinforce"]).mean())
    assert row.ci_low <= row.effect <= row.ci_high and row.n == 6
    assert math.isclose(row.p_holm, corrected[p["reinforce"]])
    assert row.verdict == "supported"
    row = found.loc[("RLOO is at least as good as PPO", "arith")]
    assert math.isclose(row.effect, -1 / 3) and row.verdict == "inconclusive"  # (-1+1-1+1-1-1)/6
    row = found.xs("arith", level="task").filter(like="wrong answers", axis=0).iloc[0]
    assert (row.a, row.b, row.quantity) == ("grpo_seq", "dr_grpo", "wrong_chars")
    assert math.isclose(row.effect, (seq - dr).mean()) and math.isclose(
        row.p_holm, corrected[wrong]
    )
    assert row.verdict == "contradicted"  # grpo_seq's wrong answers are shorter here
    row = found.xs("arith", level="task").filter(like="variance", axis=0).iloc[0]
    assert math.isclose(row.effect, -tau.statistic) and tau.statistic == -1.0
    assert math.isclose(row.p_value, tau.pvalue) and row.n == 4
    assert row.verdict == ("supported" if corrected[tau.pvalue] < 0.05 else "inconclusive")

    text = markdown(found.reset_index())
    assert text.count("\n") == 1 + 4 and "**supported**" in text and "tau = -1.00" in text


def test_off_policy_claims_name_the_stale_columns_and_entropy():
    data = (
        rows("arith", "stale2_tis", "metric", [45, 46, 47, 48])
        + rows("arith", "stale2_ppo_clip", "metric", [44, 44, 46, 45])
        + rows("arith", "stale2_clip_higher", "entropy", [0.9, 0.8, 0.85, 0.95])
        + rows("arith", "stale2_ppo_clip", "entropy", [0.7, 0.75, 0.7, 0.8])
        + rows("arith", "stale4_tis", "metric", [45, 46, 47, 48])  # no stale4_ppo_clip
    )
    found = findings(pd.DataFrame(data)).set_index("claim")
    assert len(found) == 2
    tis = found.loc["Truncated importance sampling (TIS) beats no correction at staleness 2"]
    assert (tis.a, tis.b, tis.quantity) == ("stale2_tis", "stale2_ppo_clip", "metric")
    assert math.isclose(tis.effect, (1 + 2 + 1 + 3) / 4)
    entropy = found.loc[
        "Clip-higher keeps the policy's entropy higher at staleness 2 (mean entropy)"
    ]
    assert entropy.quantity == "entropy" and math.isclose(entropy.effect, 0.1375)
