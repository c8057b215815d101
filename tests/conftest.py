"""Shared fixtures: a micro policy built once per session through the real tiny bootstrap."""

from pathlib import Path

import pytest

from pgbench import tasks
from pgbench.tiny import MICRO, tiny_policy_dir

MICRO_TASK = {"limit": "2000", "valid_size": "40", "test_size": "40"}


@pytest.fixture(scope="session")
def micro_task():
    return tasks.get("fr_en", **MICRO_TASK)


@pytest.fixture(scope="session")
def micro_policy(tmp_path_factory, micro_task) -> Path:
    """Directory of a micro Llama policy SFT-ed for a few steps on the micro task."""
    return tiny_policy_dir(micro_task, tmp_path_factory.mktemp("cache"), MICRO, progress=False)


@pytest.fixture
def run_overrides(micro_policy, tmp_path) -> dict[str, str]:
    """`key=value` overrides of a fast run on the micro policy, tracked in a temporary MLflow."""
    return {
        "model": str(micro_policy),
        **{f"task.{k}": v for k, v in MICRO_TASK.items()},
        "trainer.steps": "4",
        "trainer.prompts_per_step": "4",
        "rollout.samples_per_prompt": "3",
        "rollout.max_new_tokens": "12",
        "eval.every": "2",
        "eval.size": "16",
        "eval.max_new_tokens": "12",
        "checkpoint.every": "2",
        "output_dir": str(tmp_path / "run"),
        "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
