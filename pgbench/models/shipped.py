"""The tiny policies that ship with pgbench, one per task, and the manifest that names them.

`pgbench/policies/<task>/` holds a Hugging Face folder (fp32 safetensors and the tokenizer)
and `tiny.json`, its manifest: the TinySpec, the data's cache key, the sha256 of every file
(`sha256` is the weights', the policy's identity), the torch version and CPU capability it
was built on, and the valid/test metrics measured when it was built. `model=tiny` loads the
shipped policy of the task after checking every hash, so every machine starts from the same
bytes; nothing is trained and nothing is written. A task whose spec or training data differ
from the shipped policy's (another `task.source`, `task.limit`, a task without one) builds
its own into the cache as before (`pgbench.models.tiny`).

`pgbench build-tiny task=NAME output_dir=DIR` builds (or reuses from the cache) a policy,
measures it and writes the folder with its manifest: how the shipped ones were made, and
how a user makes their own (`model=DIR`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from pgbench.errors import ConfigError, DataError
from pgbench.models.cache import SIZES, fsync_tree, private_tmp
from pgbench.tasks import Task

SHIPPED = Path(__file__).parents[1] / "policies"
MANIFEST = "tiny.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file of a policy folder but its manifest."""
    return {
        p.name: file_sha256(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a policy folder; {} where there is none (any other model folder)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DataError(f"{path} is not valid JSON (truncated?); {_remedy(folder)}") from None


def _remedy(folder: Path) -> str:
    task = Path(folder).name
    return (
        "reinstall pgbench, or build the policy: pgbench build-tiny "
        f"task={task} output_dir=DIR, then model=DIR"
        if Path(folder).parent == SHIPPED
        else "rebuild it with pgbench build-tiny"
    )


def verify(folder: Path) -> dict[str, Any]:
    """The manifest of `folder` once every file it lists is present with its sha256; a
    missing, truncated or changed file is a one-line DataError naming it."""
    manifest = read_manifest(folder)
    if not manifest:
        raise DataError(f"{Path(folder) / MANIFEST} is missing; {_remedy(folder)}")
    for name, expected in manifest.get("files", {}).items():
        path = Path(folder) / name
        if not path.is_file():
            raise DataError(f"{path} is missing; {_remedy(folder)}")
        if file_sha256(path) != expected:
            raise DataError(
                f"{path} does not match its sha256 in {MANIFEST} (truncated or changed); "
                f"{_remedy(folder)}"
            )
    return manifest


def shipped_policy(task: Task) -> Path | None:
    """The verified shipped policy of `task`, or None where its spec or training data differ
    from what the shipped one was built from (or no policy ships for the task)."""
    from pgbench.models.tiny import cache_key, task_spec, train_pairs

    folder = SHIPPED / task.name
    if not folder.is_dir():
        return None
    manifest = verify(folder)
    # the key hashes the spec (the task's tiny_overrides) and the training data
    spec = dataclasses.replace(task_spec(task), precision=manifest["spec"]["precision"])
    return folder if cache_key(task, train_pairs(task), spec) == manifest["cache_key"] else None


def policy_params(folder: str | Path) -> dict[str, Any]:
    """What a run logs about a policy folder with a manifest: its weights' sha256 and how it
    was built (`tiny.precision`, `tiny.threads`, `tiny.cpu_capability`); {} for others."""
    manifest = read_manifest(Path(folder)) if Path(folder).is_dir() else {}
    if not manifest:
        return {}
    facts = {"precision": manifest["spec"].get("precision")}
    facts |= {k: manifest.get(k) for k in ("threads", "cpu_capability")}
    params = {f"tiny.{k}": v for k, v in facts.items() if v is not None}
    return params | ({"model_sha256": manifest["sha256"]} if "sha256" in manifest else {})


def check_free(out: Path) -> None:
    """Refuse to write a policy into a non-empty folder."""
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output_dir={out} already exists and is not empty; pick another")


def write_policy(source: Path, out: Path, facts: dict[str, Any]) -> dict[str, Any]:
    """Copy the built policy `source` to `out` with its manifest: the build's record, `facts`
    (the measured metrics, the cache key) and the sha256 of every file.

    Written into a private temporary folder, synced, then renamed onto `out` (missing or
    empty) in one step: a concurrent writer of `out` makes this one fail, never a mix.
    """
    check_free(out)
    tmp = private_tmp(out)
    try:
        shutil.copytree(source, tmp)
        for path in tmp.iterdir():  # readable by every user of an installed package
            path.chmod(0o644)
        manifest = {"torch": torch.__version__} | read_manifest(tmp) | facts
        manifest.pop(SIZES, None)  # the cache's completeness record; `files` supersedes it
        manifest["files"] = file_hashes(tmp)
        manifest["sha256"] = manifest["files"]["model.safetensors"]
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        fsync_tree(tmp)
        try:
            tmp.rename(out)  # POSIX: replaces an empty folder, fails on a non-empty one
        except OSError:
            check_free(out)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest
