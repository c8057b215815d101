"""The suite's worker processes with a light target (no torch, no study) for
tests/pgbench/runs/test_suite_signals.py: `main` runs as a suite's main process would, with
worker 0 here and worker 1 spawned; each records being started and interrupted."""

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pgbench.runs.suite import _run_workers


@dataclass
class FakePlan:
    workers: int
    folder: Path


def wait_for_interrupt(plan: FakePlan, worker: int) -> None:
    (plan.folder / f"started-{worker}").touch()
    try:
        time.sleep(120)
    except KeyboardInterrupt:
        (plan.folder / f"interrupted-{worker}").touch()
        raise


def main() -> None:
    _run_workers(FakePlan(2, Path(sys.argv[1])), wait_for_interrupt)
