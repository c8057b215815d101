"""Run directories: their default names, finding an unfinished one, refusing a taken one, the
lock that keeps one writer per run, and the greedy completions kept in `samples.csv`."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

import pgbench
from pgbench.config.compose import accepts, output_path
from pgbench.config.urls import redact_values
from pgbench.config.verbs import VERB_ARGS, Config, resolve
from pgbench.errors import ConfigError, PgbenchError
from pgbench.tasks import Example
from pgbench.train import checkpoint

LOCK = ".lock"  # <run dir>/.lock: held by the one process that trains the run


class RunDirBusyError(ConfigError):
    """Another process holds the run directory's lock: it trains that run now."""


def default_output_dir(config: Config) -> str:
    """The run's output_dir, or runs/<task>-<estimator>-s<seed>-<time> (its pattern) filled in."""
    names = {"task": config.task.name, "estimator": config.estimator.name, "seed": config.seed}
    return str(output_path(config, **names))


def unfinished_run_like(config: Config, root: Path = Path("runs")) -> Path | None:
    """The unfinished run under `root` with the same configuration and the newest checkpoint.

    Same means every key but `output_dir` and `resume` (`resume=auto`).
    """
    ignore = {"output_dir", "resume"}
    # saved configs hold URLs without their passwords: compare them that way
    wanted = {k: v for k, v in redact_values(config.to_flat()).items() if k not in ignore}
    found: list[tuple[float, Path]] = []
    for saved in root.glob("*/config.json"):
        run_dir = saved.parent
        latest = checkpoint.latest(run_dir / "checkpoints")
        if latest is None or (run_dir / "summary.json").exists():
            continue
        try:
            saved_values = saved_run_values(json.loads(saved.read_text()))
            values = resolve(saved_values | {"resume": str(run_dir)})
        except (ValueError, PgbenchError):  # written by another version: not the same config
            continue
        if {k: v for k, v in redact_values(values.to_flat()).items() if k not in ignore} == wanted:
            found.append((latest.stat().st_mtime, run_dir))
    return max(found)[1] if found else None


def check_run_dir_free(config: Config) -> None:
    """Refuse to start a new run in an existing, non-empty directory."""
    run_dir = Path(config.output_dir)
    if run_dir.exists() and any(p.name != LOCK for p in run_dir.iterdir()):
        raise ConfigError(
            f"output_dir={run_dir} already exists and is not empty; "
            f"continue it with resume={run_dir}, or pick another output_dir"
        )


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir`'s lock (an flock on <run_dir>/.lock, released when the process dies) while
    a run trains there; RunDirBusyError if another process holds it. Re-entrant in a process.
    Folders it made are removed again if the run wrote nothing there (it failed on bad input)."""
    made = [path for path in (run_dir, *run_dir.parents) if not path.exists()]  # deepest first
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK, is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunDirBusyError(
            f"output_dir={run_dir} is being trained by another process (it holds {lock.lock_file})"
            "; wait for it to finish"
        ) from None
    try:
        yield
    finally:
        lock.release()
        if made and lock.lock_counter == 0 and [p.name for p in run_dir.iterdir()] == [LOCK]:
            (run_dir / LOCK).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # a folder another process wrote to stays
                for path in made:
                    path.rmdir()


def run_dir_busy(run_dir: str | Path) -> bool:
    """Whether a process holds `run_dir`'s lock now, this one included (a probe on a new file
    descriptor, which an flock held elsewhere refuses)."""
    path = Path(run_dir) / LOCK
    if not run_dir or not path.is_file():
        return False
    probe = FileLock(path)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    probe.release()
    return False


def git_commit() -> str:
    """The commit pgbench runs from (empty outside a git checkout), for provenance."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(pgbench.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def append_samples(
    run_dir: Path, step: int, split: str, examples: list[Example], texts: list[str]
) -> None:
    """Add one evaluation's completions to `samples.csv` (header written with the first rows)."""
    path = run_dir / "samples.csv"
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["step", "split", "source", "reference", "completion"])
        for example, text in zip(examples, texts, strict=True):
            writer.writerow([step, split, example.source, example.references[0], text.strip()])


def drop_samples_after(run_dir: Path, step: int) -> None:
    """Remove the `samples.csv` rows of steps after `step` (a resumed run replays them)."""
    path = run_dir / "samples.csv"
    if path.is_file():
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
        kept = [rows[0], *(row for row in rows[1:] if int(row[0]) <= step)]
        tmp = path.with_name(f".{path.name}.tmp")  # a crash mid-write keeps the old file
        with tmp.open("w", newline="") as handle:
            csv.writer(handle).writerows(kept)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)


def saved_run_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config.json's keys that a run takes. Files written before each verb had its own
    dataclass also hold the other verbs' keys (estimators, sweep.*, ...), which never
    affected the run; they are dropped. Any other key stays and is refused by resolve."""
    others = [verb for verb in VERB_ARGS.values() if verb is not Config]
    return {
        k: v
        for k, v in _moved_knobs(values).items()
        if accepts(Config, k) or not any(accepts(verb, k) for verb in others)
    }


def _moved_knobs(values: Mapping[str, Any]) -> dict[str, Any]:
    """A config saved before the update passes and the ratio clip left the estimator (it has
    no trainer.epochs): estimator.epochs / .minibatches -> trainer.* (1 where absent), and
    estimator.clip -> each of loss.clip_low / clip_high that was 0, which then meant "the
    estimator's clip"; without estimator.clip, 0 (or no key) meant unclipped, as 0 does now."""
    values = dict(values)
    if "trainer.epochs" in values:
        return values
    for name in ("epochs", "minibatches"):
        values[f"trainer.{name}"] = values.pop(f"estimator.{name}", 1)
    clip = values.pop("estimator.clip", 0.0)
    for side in ("loss.clip_low", "loss.clip_high"):
        if not float(values.get(side) or 0.0):
            values[side] = clip
    return values
