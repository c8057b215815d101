from pathlib import Path

import pytest

from pgbench import tasks
from pgbench.errors import DataError
from pgbench.models.resolve import resolve_model
from pgbench.models.shipped import SHIPPED

TASK = tasks.get("arith")


def test_tiny_is_the_tasks_shipped_policy(tmp_path):
    assert resolve_model("tiny", TASK, str(tmp_path)) == str(SHIPPED / "arith")


def test_a_run_directory_means_its_final_policy(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    with pytest.raises(DataError, match=f"run directory {run} has no final policy"):
        resolve_model(str(run), TASK, str(tmp_path))
    (run / "final").mkdir()
    assert resolve_model(str(run), TASK, str(tmp_path)) == str(run / "final")


@pytest.mark.parametrize("marker", ["config.json", "adapter_config.json"])
def test_a_model_folder_is_used_as_it_is(tmp_path, marker):
    (tmp_path / marker).write_text("{}")
    assert resolve_model(str(tmp_path), TASK, str(tmp_path / "cache")) == str(tmp_path)


def test_a_folder_without_a_model_is_refused(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path} is not a Hugging Face model folder"):
        resolve_model(str(tmp_path), TASK, str(tmp_path))


@pytest.mark.parametrize("model", ["./missing", "/no/such/model", "~/missing", "a/b/c"])
def test_a_path_that_does_not_exist_is_refused(tmp_path, model):
    with pytest.raises(DataError, match=f"model={model}: no such folder"):
        resolve_model(model, TASK, str(tmp_path))


def test_anything_else_is_a_hub_id_left_to_transformers(tmp_path):
    assert resolve_model("HuggingFaceTB/SmolLM2-135M", TASK, str(tmp_path)) == (
        "HuggingFaceTB/SmolLM2-135M"
    )
    assert not list(Path(tmp_path).iterdir())  # nothing fetched or built
