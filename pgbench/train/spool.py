"""The tracking spool: a run's MLflow records, one JSON line each, kept in its run directory
while MLflow is unreachable and taken exactly once by `pgbench sync` (train/tracking.py).

Exact under a live writer and a killed one:
- a writer appends under a file lock; a sync renames the spool under the same lock, then reads
  the renamed file: a record is in the file taken or in a new spool, never lost between them;
- a line cut short (SIGKILL, a full disk) is ended by the next append, so it spoils no other
  record, and skipped by the reader, which says so;
- a taken file whose upload failed stays, and the next sync takes it first (uploads repeat
  harmlessly: a metric keeps its step and time).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

SPOOL = "tracking_buffer.jsonl"  # in the run directory, while MLflow is unreachable


def _taken(spool: Path) -> Path:
    """The file a sync renames the spool to while it uploads it."""
    return spool.with_suffix(".syncing.jsonl")


def _lock(spool: Path) -> FileLock:
    """Held by a writer to append and by a sync to rename."""
    return FileLock(spool.with_name(spool.name + ".lock"))


def append_record(spool: Path, record: dict[str, Any]) -> None:
    """Append one record as one line; a torn last line before it is ended first."""
    line = json.dumps(record).encode() + b"\n"
    with _lock(spool), spool.open("ab+") as handle:  # "a": every write goes to the end
        end = handle.seek(0, os.SEEK_END)
        if end and handle.seek(end - 1) >= 0 and handle.read(1) != b"\n":
            line = b"\n" + line
        handle.write(line)


def pending(spool: Path) -> bool:
    """Whether records wait to be uploaded (in the spool, or left by a sync that failed)."""
    return spool.is_file() or _taken(spool).is_file()


def take(spool: Path) -> Iterator[list[dict[str, Any]]]:
    """The spool's records in batches: first a batch left by a sync that failed, then the
    spool as it is now, renamed before it is read (a writer appending meanwhile starts a new
    spool). A batch is archived in `*.synced.jsonl` when the caller asks for the next; a batch
    the caller fails on stays, to be taken again. One sync at a time per spool."""
    taken = _taken(spool)
    with FileLock(spool.with_suffix(".sync.lock")):
        for _ in range(2):
            if not taken.is_file():
                with _lock(spool):
                    if not spool.is_file():
                        return
                    spool.rename(taken)
            yield read_records(taken)
            with spool.with_suffix(".synced.jsonl").open("ab") as archive:
                archive.write(taken.read_bytes())
            taken.unlink()


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of one spool file; torn lines are skipped, in one line on stderr."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    records = [record for record in map(_parse, lines) if record is not None]
    if len(records) < len(lines):
        print(
            f"pgbench sync: skipped {len(lines) - len(records)} torn line(s) of {path} (a write "
            f"cut short by a kill or a full disk); uploading the other {len(records)}",
            file=sys.stderr,
        )
    return records


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and "kind" in record else None
