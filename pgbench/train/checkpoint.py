"""Resumable checkpoints, written durably: a temporary folder, synced to disk, renamed into
place; older checkpoints are deleted only once the new one is on disk.

Layout: <run dir>/checkpoints/step-000020/{weights.safetensors, state.pt}. Weights are the
trainable parameters only (the whole model, or the LoRA adapter); `state.pt` holds the
optimiser, scheduler, RNG and loop state and loads with `torch.load(weights_only=True)`.
`latest` skips a checkpoint whose files are truncated (a disk that filled up, a copy cut
short) and resumes from the one before.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from pgbench.errors import DataError
from pgbench.models.cache import fsync_path, fsync_tree

KEEP = 2  # checkpoints kept on disk; older ones are removed after a successful save


Modules = dict[str, torch.nn.Module | None]  # e.g. {"policy": model, "value_head": None}


def trainable_state(modules: Modules) -> dict[str, torch.Tensor]:
    """Trainable parameters of every module, named `<module>.<parameter>`."""
    return {
        f"{name}.{n}": p.detach().contiguous()
        for name, module in modules.items()
        if module is not None
        for n, p in module.named_parameters()
        if p.requires_grad
    }


def save(folder: Path, step: int, modules: Modules, state: dict[str, Any]) -> Path:
    """Save weights and loop state for `step` under `folder`; returns the checkpoint path."""
    final = folder / f"step-{step:06d}"
    tmp = folder / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(modules), str(tmp / "weights.safetensors"))
    torch.save({**state, "step": step, "torch_rng": torch.get_rng_state()}, tmp / "state.pt")
    fsync_tree(tmp)  # the files' bytes are on disk before the rename makes them the latest
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    fsync_path(folder)  # ... and the rename is, before the older checkpoints go
    for old in sorted(folder.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def intact(path: Path) -> bool:
    """Whether both files of checkpoint `path` are whole: `state.pt` is a zip archive with its
    closing directory (written last), the weights' header covers the file exactly."""
    state = path / "state.pt"
    if not state.is_file() or not zipfile.is_zipfile(state):
        return False
    try:
        with safe_open(str(path / "weights.safetensors"), "pt"):
            return True
    except (OSError, SafetensorError):
        return False


def latest(folder: Path) -> Path | None:
    """The newest intact checkpoint in `folder`, if any."""
    return next((p for p in sorted(folder.glob("step-*"), reverse=True) if intact(p)), None)


def resume_point(folder: Path) -> Path | None:
    """`latest(folder)` for a resumed run; a DataError where checkpoints exist and none is
    intact (the run would otherwise start over without saying so)."""
    found = latest(folder)
    newest = max(folder.glob("step-*"), default=None)
    if found is None and newest is not None:
        raise DataError(
            f"checkpoint {newest} cannot be read (a file is incomplete) and no older one is "
            "intact; delete it to start the run over"
        )
    return found


def load(path: Path, modules: Modules) -> dict[str, Any]:
    """Restore weights and RNG into `modules`/torch from `path`; returns the loop state."""
    try:
        weights = load_file(str(path / "weights.safetensors"))
        state = torch.load(path / "state.pt", weights_only=True)
    except Exception as err:  # corrupted or truncated files raise various types
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        raise DataError(
            f"checkpoint {path} cannot be read ({reason}); delete it to resume from the one before"
        ) from None
    missing = set(trainable_state(modules)) - set(weights)
    if missing:
        raise DataError(f"checkpoint {path} does not match the model (missing {min(missing)})")
    for name, module in modules.items():
        if module is not None:
            prefix = f"{name}."
            own = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
            module.load_state_dict(own, strict=False)
    torch.set_rng_state(state["torch_rng"])
    return state
