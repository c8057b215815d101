"""Fitted scaling curves (pgbench.reports.scaling) on synthetic curves with known parameters."""

import numpy as np
import pandas as pd

from pgbench.reports.scaling import column_fit, curve, markdown, scaling_figure, scaling_table

COMPUTE = np.linspace(500, 20000, 20)  # generated tokens at each evaluation


def synthetic(asymptote: float, efficiency: float, c_mid: float, noise: float) -> pd.DataFrame:
    """10 seeds of R(C) with R0 = 40 plus Gaussian noise of sd `noise`."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(10):
        values = curve(COMPUTE, 40.0, asymptote, efficiency, c_mid)
        values = values + rng.normal(0, noise, len(COMPUTE))
        rows += [
            {"seed": seed, "step": i + 1, "compute": c, "metric": v}
            for i, (c, v) in enumerate(zip(COMPUTE, values, strict=True))
        ]
    return pd.DataFrame(rows)


def test_a_saturating_curve_is_recovered_within_its_intervals():
    row = column_fit(synthetic(50.0, 1.5, 3000.0, noise=0.3), r0=40.0)
    assert row["identified"] and row["n"] == 10
    for name, truth in (("asymptote", 50.0), ("efficiency", 1.5), ("c_mid", 3000.0)):
        assert row[f"{name}_low"] <= truth <= row[f"{name}_high"], name
    assert abs(row["asymptote"] - 50.0) < 0.5


def test_a_curve_that_does_not_bend_is_not_identified():
    # C_mid far beyond the compute measured: the data are a straight rising line
    row = column_fit(synthetic(90.0, 1.0, 1e6, noise=0.3), r0=40.0)
    assert not row["identified"] and "does not bend" in row["note"]
    assert np.isnan(row["asymptote"])


def test_the_table_fits_each_column_of_each_task_from_histories(tmp_path):
    rows = []
    for column, asymptote in (("rloo", 50.0), ("grpo", 46.0)):
        runs = synthetic(asymptote, 2.0, 4000.0, noise=0.2)
        for run in runs.itertuples():
            key = {"task": "arith", "estimator": column, "seed": run.seed, "step": run.step}
            key["run_id"] = f"{column}-{run.seed}"
            rows.append(key | {"metric": "eval/accuracy", "value": run.metric})
            rows.append(key | {"metric": "train/tokens", "value": run.compute})
        for seed in range(10):  # the start, before any token
            key = {"task": "arith", "estimator": column, "seed": seed, "step": 0}
            rows.append(
                key | {"run_id": f"{column}-{seed}", "metric": "eval/accuracy", "value": 40.0}
            )
    table = scaling_table(pd.DataFrame(rows), {"arith": "eval/accuracy"}).set_index("estimator")
    assert table.loc["rloo", "r0"] == 40.0 and table.identified.all()
    assert abs(table.loc["rloo", "asymptote"] - 50) < 0.5
    assert abs(table.loc["grpo", "asymptote"] - 46) < 0.5
    text = markdown(table.reset_index())
    assert "| arith | rloo | 10 | 40 | 50" in text and "not identified" not in text
    history = pd.DataFrame(rows)
    path = scaling_figure(history, table.reset_index(), "eval/accuracy", tmp_path / "s.png")
    assert path.stat().st_size > 0
