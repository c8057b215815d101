"""Shared fixtures: a micro policy built once per session through the real tiny bootstrap,
a throwaway PostgreSQL server for the distributed sweep and suite tests, a real MLflow
tracking server on it, and a single-node SLURM cluster on localhost."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on 2 cores: one thread each (before torch)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import contextlib
import getpass
import glob
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from pgbench import tasks
from pgbench.models.tiny import MICRO, tiny_policy_dir

MICRO_TASK = {"limit": "2000", "valid_size": "40", "test_size": "40"}


HOLD = """
import sys
from filelock import FileLock
with FileLock(sys.argv[1]):  # as run_dir_lock takes it, without importing pgbench (fast)
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


@contextlib.contextmanager
def held_by_another_process(lock_file: Path) -> Iterator[None]:
    """The file lock `lock_file` held by another process while the block runs."""
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout.readline() == "held\n"
        yield
    finally:
        other.stdin.close()
        other.wait(timeout=30)


@pytest.fixture
def other_process_lock() -> Callable[[Path], contextlib.AbstractContextManager]:
    """`with other_process_lock(path):` another process holds the file lock `path`."""
    return held_by_another_process


@pytest.fixture(scope="session")
def micro_task():
    return tasks.get("fr_en", **MICRO_TASK)


@pytest.fixture(scope="session")
def micro_policy(tmp_path_factory, micro_task) -> Path:
    """Directory of a micro Llama policy SFT-ed for a few steps on the micro task."""
    return tiny_policy_dir(micro_task, tmp_path_factory.mktemp("cache"), MICRO, progress=False)


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store with its tables made (MLflow's migrations take about a
    second per new store; each test copies this one instead)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def run_overrides(micro_policy, mlflow_store, tmp_path) -> dict[str, str]:
    """`key=value` overrides of a fast run on the micro policy, tracked in a temporary MLflow
    (a copy of the session's empty store)."""
    shutil.copyfile(mlflow_store, tmp_path / "mlflow.db")
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
    with warnings.catch_warnings():  # Optuna marks retried_trial_number experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
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


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a PostgreSQL backend store and a local artifact root
    (served over HTTP, as on a cluster's tracking host); `stop()` and `start()` again on the
    same port, to take it away mid-run."""

    def __init__(self, backend: str, root: Path) -> None:
        self.backend, self.root, self.port = backend, root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120) -> None:
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--workers", "1"]
        command += ["--backend-store-uri", self.backend]
        command += ["--artifacts-destination", str(self.root / "artifacts")]
        log = (self.root / "server.log").open("a")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=log, start_new_session=True, env=os.environ | {"CI": ""}
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        tail = (self.root / "server.log").read_text()[-500:]
        pytest.fail(f"mlflow server did not start on {self.url}: {tail}")

    def stop(self) -> None:
        """Kill the server's process group (uvicorn and its workers) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


@pytest.fixture(scope="session")
def mlflow_server(postgres_server, tmp_path_factory):
    """A real MLflow tracking server for this session, on its own PostgreSQL database."""
    env = os.environ | {"PGPASSWORD": postgres_server.password}
    login = ["-h", "127.0.0.1", "-p", str(postgres_server.port), "-U", "postgres"]
    subprocess.run(
        [pg_binary("createdb"), *login, "mlflow_server"], check=True, capture_output=True, env=env
    )
    server = MlflowServer(
        postgres_server.url("mlflow_server"), tmp_path_factory.mktemp("mlflow-server")
    )
    server.start()
    yield server
    server.stop()


SLURM_CONF = """ClusterName=pgbench
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=1
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def _slurm_binary(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _start_slurm(root: Path, processes: list[subprocess.Popen]) -> str | None:
    """Start munged, slurmctld and slurmd for one node with 2 CPUs; None once the node is
    idle, else why not."""
    (root / "munge.key").write_bytes(secrets.token_bytes(1024))
    (root / "munge.key").chmod(0o400)
    munged = [_slurm_binary("munged"), "--force", f"--key-file={root}/munge.key"]
    munged += [f"--socket={root}/munge.socket", f"--pid-file={root}/munged.pid"]
    munged += [f"--log-file={root}/munged.log", f"--seed-file={root}/munge.seed", "--foreground"]
    for command in (
        munged,
        [_slurm_binary("slurmctld"), "-D", "-i"],
        [_slurm_binary("slurmd"), "-D"],
    ):
        log = (root / f"{Path(command[0]).name}.out").open("w")
        processes.append(subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True))
        time.sleep(1)  # each daemon needs the one before it
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            break
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
        if state.stdout.strip() == "idle":
            return None
        time.sleep(1)
    logs = " | ".join(
        f"{path.name}: {path.read_text().strip().splitlines()[-1:]}"
        for path in sorted(root.glob("*.out"))
    )
    return f"the single-node SLURM cluster did not come up ({logs})"


def squeue_drains(timeout_s: float = 60) -> bool:
    """Whether SLURM's queue empties within `timeout_s`: every worker job of a suite or sweep
    exits once no work is left."""
    deadline = time.monotonic() + timeout_s
    while subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


@pytest.fixture
def queue_drains() -> Callable:
    """`squeue_drains`, for the SLURM launcher tests."""
    return squeue_drains


@pytest.fixture(scope="session")
def slurm_cluster():
    """A single-node SLURM cluster on localhost (munged, slurmctld, slurmd with 2 CPUs) in a
    temporary folder, found by sbatch and squeue through SLURM_CONF; yields the folder."""
    missing = [name for name in SLURM_BINARIES if _slurm_binary(name) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"SLURM binaries {missing} are missing; .ci/run installs slurm-wlm, munge")
        pytest.skip(f"SLURM binaries {missing} not found (apt-get install slurm-wlm munge)")
    root = Path(tempfile.mkdtemp(prefix="pgbench-slurm-"))
    for folder in ("state", "spool"):
        (root / folder).mkdir()
    host, user = socket.gethostname(), getpass.getuser()
    text = SLURM_CONF.format(
        host=host, user=user, root=root, ctld_port=free_port(), d_port=free_port()
    )
    (root / "slurm.conf").write_text(text)
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(root / "slurm.conf")
    processes: list[subprocess.Popen] = []
    try:
        failure = _start_slurm(root, processes)
        if failure:
            pytest.skip(failure)
        yield root
    finally:
        jobs = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True)
        if jobs.stdout.split():
            subprocess.run(["scancel", *jobs.stdout.split()], capture_output=True)
            time.sleep(3)  # KillWait=1: the jobs' processes end before slurmd does
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=30)
        if saved is None:
            os.environ.pop("SLURM_CONF")
        else:
            os.environ["SLURM_CONF"] = saved
        shutil.rmtree(root, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`-n 2 --dist loadgroup`), the tests of the one SLURM cluster run on
    one worker: munged and slurmd are one per machine."""
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))
