"""A throwaway PostgreSQL server for the distributed-sweep tests."""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def pg_binary(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """URL of a PostgreSQL server started for this session on a Unix socket (no TCP)."""
    initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are missing; .ci/run installs them")
        pytest.skip("PostgreSQL server binaries not found (CI installs them); skipping")
    root = Path(tempfile.mkdtemp(prefix="pgbench-pg-"))
    prefix = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    data = root / "data"
    subprocess.run(
        prefix + [initdb, "-D", str(data), "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    options = f"-p {port} -k {root} -c listen_addresses=''"
    subprocess.run(
        prefix + [pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    yield f"postgresql+psycopg2://postgres@/postgres?host={root}&port={port}"
    subprocess.run(
        prefix + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True
    )
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def sweep_values(run_overrides, tmp_path):
    """Overrides of a fast sweep on the micro policy."""
    values = run_overrides | {
        "trainer.steps": "2",
        "eval.every": "1",
        "eval.size": "8",
        "output_dir": str(tmp_path / "sweep"),
    }
    values.pop("checkpoint.every")
    return values
