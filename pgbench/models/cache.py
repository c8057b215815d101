"""Model folders built once into a shared cache, safely under concurrency.

Several processes (suite workers, SLURM jobs on one shared disk) may ask for the same folder at
once. `build_once` serialises them with a file lock on `<target>.lock`; the first builds into
its own temporary folder (`.<name>.tmp-<pid>-<uuid>`), writes a marker last (JSON recording
every file's size), syncs it to disk and renames it into place. The others wait, then find
the complete target and use it: an existing complete target always wins. A target whose
marker is missing, unreadable or disagrees with the files' sizes (an interrupted or raced
build) is rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

SIZES = "sizes"  # the marker's record of {file name: bytes}


def private_tmp(path: Path) -> Path:
    """A sibling path of `path` that no other process or thread uses."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def complete(folder: Path, marker: str) -> bool:
    """Whether `folder` holds `marker` and every file it lists, at the recorded size."""
    try:
        sizes = json.loads((folder / marker).read_text())[SIZES]
        return all((folder / name).stat().st_size == size for name, size in sizes.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def fsync_path(path: Path) -> None:
    """Flush one file, or one folder's entries, to disk."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def fsync_tree(folder: Path) -> None:
    """Flush every file of `folder`, then the folder itself, to disk."""
    for path in sorted(folder.iterdir()):
        if path.is_file():
            fsync_path(path)
    fsync_path(folder)


def seal(folder: Path, marker: str, info: dict[str, Any]) -> None:
    """Write `marker` last: `info` plus the size of every other file of `folder`."""
    sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    sizes.pop(marker, None)
    (folder / marker).write_text(json.dumps(info | {SIZES: sizes}, indent=2) + "\n")
    fsync_tree(folder)


def build_once(
    target: Path, marker: str, build: Callable[[Path], dict[str, Any]], wait_note: str = ""
) -> Path:
    """`target` if complete; else `build(tmp)` fills a private folder and returns the marker's
    facts, and the sealed folder replaces `target`, all under `<target>.lock`. `wait_note` is
    printed when another process holds the lock."""
    if complete(target, marker):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{target}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if wait_note:
            print(wait_note, flush=True)
        lock.acquire()
    try:
        if complete(target, marker):  # another process built it while we waited
            return target
        tmp = private_tmp(target)
        try:
            tmp.mkdir()
            seal(tmp, marker, build(tmp))
            shutil.rmtree(target, ignore_errors=True)  # an incomplete leftover
            tmp.rename(target)
            fsync_path(target.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        lock.release()
    return target
