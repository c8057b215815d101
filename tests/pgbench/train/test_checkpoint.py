"""Checkpoints: atomic writes and no unpickling of arbitrary objects."""

import pytest
import torch

from pgbench.errors import DataError
from pgbench.train import checkpoint


class Payload:
    """Stands for any class an attacker's pickle could name."""


def _modules() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"policy": torch.nn.Linear(3, 2), "value_head": None}


def test_save_then_load_restores_weights_and_state(tmp_path):
    modules = _modules()
    path = checkpoint.save(tmp_path, 4, modules, {"loop": {"step": 4}})
    saved = modules["policy"].weight.detach().clone()
    with torch.no_grad():
        modules["policy"].weight.zero_()
    state = checkpoint.load(path, modules)
    assert state["loop"] == {"step": 4} and state["step"] == 4
    assert torch.equal(modules["policy"].weight, saved)


def test_a_write_killed_midway_leaves_the_previous_checkpoint_in_use(tmp_path):
    modules = _modules()
    previous = checkpoint.save(tmp_path, 2, modules, {"loop": {}})
    # what a kill during the save of step 4 leaves: the temporary folder, half written
    partial = tmp_path / ".step-000004.tmp"
    partial.mkdir()
    (partial / "weights.safetensors").write_bytes(b"\x00" * 10)
    assert checkpoint.latest(tmp_path) == previous
    # the next save of step 4 replaces the leftover and becomes the latest
    assert checkpoint.latest(tmp_path) != checkpoint.save(tmp_path, 4, modules, {"loop": {}})
    assert checkpoint.latest(tmp_path).name == "step-000004" and not partial.exists()


def truncate(path, keep: float) -> None:
    """Cut `path` to `keep` of its size, as a full disk or a cut-short copy leaves it."""
    with open(path, "r+b") as handle:
        handle.truncate(int(path.stat().st_size * keep))


@pytest.mark.parametrize("name", ["state.pt", "weights.safetensors"])
def test_a_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, name):
    modules = _modules()
    previous = checkpoint.save(tmp_path, 2, modules, {"loop": {"step": 2}})
    newest = checkpoint.save(tmp_path, 4, modules, {"loop": {"step": 4}})
    assert checkpoint.latest(tmp_path) == newest
    truncate(newest / name, 0.9)
    assert checkpoint.latest(tmp_path) == previous
    assert checkpoint.load(previous, modules)["loop"] == {"step": 2}
    assert checkpoint.resume_point(tmp_path) == previous
    truncate(previous / name, 0.5)
    assert checkpoint.latest(tmp_path) is None
    # a resumed run does not start over silently: the newest broken checkpoint is named
    with pytest.raises(DataError, match="step-000004 cannot be read .* delete it"):
        checkpoint.resume_point(tmp_path)


def test_older_checkpoints_are_pruned(tmp_path):
    modules = _modules()
    for step in (2, 4, 6):
        checkpoint.save(tmp_path, step, modules, {"loop": {}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000004", "step-000006"]


def test_state_with_arbitrary_objects_is_refused(tmp_path):
    modules = _modules()
    path = checkpoint.save(tmp_path, 2, modules, {"loop": {}})
    # a pickled object of any class would run code on load; weights_only refuses it
    torch.save({"loop": Payload(), "torch_rng": torch.get_rng_state()}, path / "state.pt")
    with pytest.raises(DataError, match="cannot be read"):
        checkpoint.load(path, modules)
