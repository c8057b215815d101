"""`model=`: which folder or hub id a run's policy comes from."""

from __future__ import annotations

from pathlib import Path

from pgbench.errors import DataError
from pgbench.models.shipped import shipped_policy
from pgbench.models.smollm2 import smollm2_dir
from pgbench.models.tiny import tiny_policy_dir
from pgbench.tasks import Task


def resolve_model(model: str, task: Task, cache_dir: str) -> str:
    """Folder or hub id of the policy named by `model=`: tiny, smollm2, a run dir, a path or
    an id."""
    if model == "tiny":  # the shipped policy, or one built for another spec or data
        shipped = shipped_policy(task)
        return str(shipped or tiny_policy_dir(task, Path(cache_dir).expanduser()))
    if model == "smollm2":
        return str(smollm2_dir(Path(cache_dir).expanduser()))
    path = Path(model).expanduser()
    if (path / "summary.json").is_file():  # a pgbench run directory: its final policy
        final = path / "final"
        if not final.is_dir():
            raise DataError(f"run directory {path} has no final policy ({final} is missing)")
        return str(final)
    if path.exists():
        if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
            raise DataError(f"model={model}: {path} is not a Hugging Face model folder")
        return str(path)
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise DataError(
            f"model={model}: no such folder; use tiny, smollm2, a hub id or a model folder"
        )
    return model
