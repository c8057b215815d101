"""Stopping a local suite with several workers: Ctrl-C or SIGTERM to its main process
interrupts the spawned workers too (each marks its run KILLED), and the main process exits
instead of waiting for them to empty the queue."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]
MAIN = "from tests.pgbench.runs.workers_fixture import main; main()"


def wait_for(path: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.1)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_main_process_stops_every_worker(tmp_path, stop):
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", MAIN, str(tmp_path)]
    main = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    wait_for(tmp_path / "started-0")
    wait_for(tmp_path / "started-1")
    main.send_signal(stop)  # to the main process only, as `kill` or a scheduler sends it
    _, stderr = main.communicate(timeout=60)  # the workers sleep 120 s unless interrupted
    assert (tmp_path / "interrupted-0").exists() and (tmp_path / "interrupted-1").exists()
    assert main.returncode != 0 and "KeyboardInterrupt" in stderr
    assert stderr.count("Traceback") == 1  # the spawned worker ends quietly
