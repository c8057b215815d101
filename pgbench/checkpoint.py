"""Resumable checkpoints, written atomically: a temporary folder renamed into place.

Layout: <run dir>/checkpoints/step-000020/{weights.safetensors, state.pt}. Weights are the
trainable parameters only (the whole model, or the LoRA adapter); `state.pt` holds the
optimiser, scheduler, RNG and loop state and loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pgbench.errors import DataError

KEEP = 2  # checkpoints kept on disk; older ones are removed after a successful save


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save(folder: Path, step: int, model: torch.nn.Module, state: dict[str, Any]) -> Path:
    """Save weights and loop state for `step` under `folder`; returns the checkpoint path."""
    final = folder / f"step-{step:06d}"
    tmp = folder / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), str(tmp / "weights.safetensors"))
    torch.save({**state, "step": step, "torch_rng": torch.get_rng_state()}, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(folder.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(folder: Path) -> Path | None:
    """The newest complete checkpoint in `folder`, if any."""
    done = sorted(p for p in folder.glob("step-*") if (p / "state.pt").is_file())
    return done[-1] if done else None


def load(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Restore weights and RNG into `model`/torch from `path`; returns the loop state."""
    try:
        weights = load_file(str(path / "weights.safetensors"))
        state = torch.load(path / "state.pt", weights_only=True)
    except Exception as err:  # corrupted or truncated files raise various types
        raise DataError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err})") from None
    missing = set(trainable_state(model)) - set(weights)
    if missing:
        raise DataError(
            f"checkpoint {path} does not match the model (missing {sorted(missing)[0]})"
        )
    model.load_state_dict(weights, strict=False)
    torch.set_rng_state(state["torch_rng"])
    return state
