import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from pgbench import estimators
from pgbench.cli import main
from pgbench.runs.variance import COLUMNS, statistics

LISTED = ["reinforce", "rloo", "grpo", "reinforce_pp", "ppo"]


def test_statistics_hand_computed():
    grads = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])
    reference = torch.tensor([2.0, 0.0])
    # mean [2, 1]; squared deviations 1+1, 1+1, 0+4 -> 8, / (B-1) = 4
    stats = statistics(grads, reference)
    assert stats["total_variance"] == pytest.approx(4.0)
    # errors to the reference: 1, 1, 9 -> mean 11/3
    assert stats["mse_to_reference"] == pytest.approx(11 / 3)
    # cosines: 1, 1, 2/sqrt(13)
    assert stats["cosine_to_reference"] == pytest.approx((2 + 2 / 13**0.5) / 3)
    assert stats["snr"] == pytest.approx(5 / 4)


def test_variance_verb_on_micro_policy(run_overrides, tmp_path, capsys):
    keys = ["model", "task.limit", "task.valid_size", "task.test_size", "tracking.uri"]
    args = [f"{k}={run_overrides[k]}" for k in keys]
    out = tmp_path / "variance"
    code = main(
        [
            "variance",
            *args,
            f"estimators={','.join(LISTED)}",
            "variance.batches=6",
            "variance.reference_batches=4",
            "trainer.prompts_per_step=4",
            "rollout.samples_per_prompt=4",
            "rollout.max_new_tokens=10",
            f"output_dir={out}",
        ]
    )
    assert code == 0
    table = pd.read_csv(out / "variance.csv")
    assert list(table.columns) == COLUMNS
    assert list(table.estimator) == LISTED
    assert (table.total_variance > 0).all() and (table.seconds_per_gradient > 0).all()
    assert "total_variance" in capsys.readouterr().out
    client = MlflowClient(run_overrides["tracking.uri"])
    experiment = client.get_experiment_by_name("fr_en-variance")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["rloo/total_variance"] == pytest.approx(table.total_variance[1])


def test_variance_verb_accepts_every_other_registered_estimator(run_overrides, tmp_path):
    # the estimators the test above does not list (those added since), at the smallest sizes
    others = [n for n in estimators.REGISTRY.names() if n not in LISTED]
    assert {"gpg", "opo", "reinforce_pp_baseline"} <= set(others)
    keys = ["model", "task.limit", "task.valid_size", "task.test_size", "tracking.uri"]
    args = [f"{k}={run_overrides[k]}" for k in keys]
    out = tmp_path / "variance"
    code = main(
        [
            "variance",
            *args,
            f"estimators={','.join(others)}",
            "variance.batches=2",
            "variance.reference_batches=1",
            "trainer.prompts_per_step=2",
            "rollout.samples_per_prompt=2",
            "rollout.max_new_tokens=6",
            f"output_dir={out}",
        ]
    )
    assert code == 0
    table = pd.read_csv(out / "variance.csv")
    assert list(table.estimator) == others
    assert table.total_variance.notna().all()


def test_reinforce_without_baseline_has_more_variance_than_rloo(run_overrides, tmp_path):
    # every chrF reward is positive, so without a baseline each sample pushes its own
    # log-probability up: a large, noisy common component that RLOO's baseline removes
    keys = ["model", "task.limit", "task.valid_size", "task.test_size", "tracking.uri"]
    args = [f"{k}={run_overrides[k]}" for k in keys]
    out = tmp_path / "variance"
    main(
        [
            "variance",
            *args,
            "estimators=reinforce,rloo",
            "variance.batches=8",
            "variance.reference_batches=2",
            "trainer.prompts_per_step=4",
            "rollout.samples_per_prompt=4",
            "rollout.max_new_tokens=10",
            f"output_dir={out}",
        ]
    )
    table = pd.read_csv(out / "variance.csv").set_index("estimator")
    assert table.total_variance["reinforce"] > table.total_variance["rloo"]
