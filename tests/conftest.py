"""Shared fixtures: a micro policy built once per session through the real tiny bootstrap,
and a throwaway PostgreSQL server for the distributed sweep and suite tests."""

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from pgbench import tasks
from pgbench.tiny import MICRO, tiny_policy_dir

MICRO_TASK = {"limit": "2000", "valid_size": "40", "test_size": "40"}


@pytest.fixture(scope="session")
def micro_task():
    return tasks.get("fr_en", **MICRO_TASK)


@pytest.fixture(scope="session")
def micro_policy(tmp_path_factory, micro_task) -> Path:
    """Directory of a micro Llama policy SFT-ed for a few steps on the micro task."""
    return tiny_policy_dir(micro_task, tmp_path_factory.mktemp("cache"), MICRO, progress=False)


@pytest.fixture
def run_overrides(micro_policy, tmp_path) -> dict[str, str]:
    """`key=value` overrides of a fast run on the micro policy, tracked in a temporary MLflow."""
    return {
        "model": str(micro_policy),
        **{f"task.{k}": v for k, v in MICRO_TASK.items()},
        "trainer.steps": "4",
        "trainer.prompts_per_step": "4",
        "rollout.samples_per_prompt": "3",
        "rollout.max_new_tokens": "12",
        "eval.every": "2",
        "eval.size": "16",
        "eval.max_new_tokens": "12",
        "checkpoint.every": "2",
        "output_dir": str(tmp_path / "run"),
        "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "cache_dir": str(tmp_path / "cache"),  # start evaluations are cached there
    }


def pg_binary(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class PostgresServer:
    """A password-protected PostgreSQL server on 127.0.0.1, as the README's recipe reaches one."""

    port: int
    password: str

    def url(self, database: str = "postgres", password: bool = True) -> str:
        """The README's form: postgresql://user:pass@host:port/db (no driver named)."""
        login = f"postgres:{self.password}" if password else "postgres"
        return f"postgresql://{login}@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server started for this session, with password logins over TCP on
    127.0.0.1 and a second database `mlflow` (MLflow's tables beside Optuna's would clash)."""
    initdb, pg_ctl, createdb = pg_binary("initdb"), pg_binary("pg_ctl"), pg_binary("createdb")
    if not (initdb and pg_ctl and createdb):
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are missing; .ci/run installs them")
        pytest.skip("PostgreSQL server binaries not found (CI installs them); skipping")
    root = Path(tempfile.mkdtemp(prefix="pgbench-pg-"))
    password = f"pgbench-Secret-{secrets.token_hex(6)}"
    (root / "pwfile").write_text(password + "\n")
    prefix = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        prefix = ["runuser", "-u", "postgres", "--"]
        for path in (root, root / "pwfile"):
            shutil.chown(path, "postgres")
    data, port = root / "data", free_port()
    subprocess.run(
        prefix
        + [initdb, "-D", str(data), "-U", "postgres", "--auth=scram-sha-256"]
        + ["--pwfile", str(root / "pwfile")],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run(
        prefix + [pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    env = os.environ | {"PGPASSWORD": password}
    login = ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    subprocess.run([createdb, *login, "mlflow"], check=True, capture_output=True, env=env)
    yield PostgresServer(port, password)
    subprocess.run(
        prefix + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True
    )
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """The README's storage URL of the test server, password included."""
    return postgres_server.url()


def kill_when_running(
    args: list[str], study_name: str, storage: Callable, started: Callable[[FrozenTrial], bool]
) -> FrozenTrial:
    """Start `python -m pgbench <args>`, SIGKILL it once a RUNNING trial of the study passes
    `started`, then wait past the heartbeat grace period (2 heartbeats of 1 s); returns it."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "pgbench", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline, running = time.monotonic() + 120, []
    while not running and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name=study_name, storage=storage())
        except KeyError:  # the study is not created yet
            continue
        running = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if started(t)]
    assert running, "the worker never started a trial"
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    time.sleep(3)
    return running[0]


def killed_and_retry(study: optuna.Study, number: int) -> tuple[FrozenTrial, FrozenTrial]:
    """The killed trial `number` (now FAIL) and the retry of it that completed."""
    killed = study.trials[number]
    assert killed.state == TrialState.FAIL
    retries = [
        t
        for t in study.trials
        if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == number
    ]
    assert retries and retries[0].state == TrialState.COMPLETE
    return killed, retries[0]


@pytest.fixture
def kill_worker() -> Callable:
    """`kill_when_running`, for the distributed sweep and suite tests."""
    return kill_when_running


@pytest.fixture
def retry_of() -> Callable:
    """`killed_and_retry`, for the distributed sweep and suite tests."""
    return killed_and_retry
