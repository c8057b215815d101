import pandas as pd
import pytest

from pgbench.reports.suite_report import failed_section, per_run_frame


def test_each_run_gives_its_metric_curve_area_entropy_and_wrong_answers(client, log_run):
    experiment = client.create_experiment("arith")
    # grpo is a column of an entropy claim (clip-higher vs GRPO); rloo is not
    grpo = log_run(
        experiment,
        {"estimator": "grpo"},
        {
            "eval/accuracy": [(0, 40.0), (2, 44.0), (4, 50.0)],
            "train/tokens": [(1, 10.0), (2, 20.0)],
            "train/entropy": [(1, 1.0), (2, 2.0)],
        },
    )
    rloo = log_run(
        experiment,
        {"estimator": "rloo"},
        {"eval/accuracy": [(0, 40.0), (4, 40.0)], "train/entropy": [(1, 3.0)]},
    )
    client.log_metric(rloo, "test/wrong_chars", 5.0)
    runs = pd.DataFrame(
        {
            "task": ["arith", "arith"],
            "estimator": ["grpo", "rloo"],
            "seed": [0, 1],
            "run_id": [grpo, rloo],
            "value": [48.0, 41.0],  # the final test metric
        }
    )
    curves, quantities = per_run_frame(client, runs)
    got = {(q.estimator, q.quantity): q.value for q in quantities.itertuples()}
    # area under accuracy-vs-step / steps: ((40 + 44) + (44 + 50)) / 2 * 2 / 4 = 44.5
    assert got == {
        ("grpo", "metric"): 48.0,
        ("grpo", "auc"): pytest.approx(44.5),
        ("grpo", "entropy"): 1.5,
        ("rloo", "metric"): 41.0,
        ("rloo", "auc"): 40.0,
        ("rloo", "wrong_chars"): 5.0,  # no entropy: rloo is in no entropy claim
    }
    assert set(curves.metric) == {"eval/accuracy", "train/tokens"} and set(curves.task) == {"arith"}
    assert len(curves) == 7


def test_failed_cells_are_listed_with_their_last_error_on_one_row_each():
    assert failed_section({}) == []
    heading, table = failed_section({"arith-rloo-s0": "ValueError: a | b\n  at step 3"})
    assert heading == "## Failed cells"
    assert table.splitlines() == [
        "| cell | last error |",
        "| --- | --- |",
        "| arith-rloo-s0 | ValueError: a / b at step 3 |",
    ]
