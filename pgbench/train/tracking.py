"""Experiment tracking behind a small interface: MLflow, or nothing (for tests and eval).

The training loop talks to a `Tracker`; only this module imports mlflow.
"""

from __future__ import annotations

import json
import math
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock

from pgbench.config.urls import (
    check_database,
    is_database,
    redact,
    redact_values,
    restore,
    without_userinfo,
)
from pgbench.errors import ConfigError, DataError
from pgbench.train.spool import SPOOL, append_record, pending, take


class Tracker(Protocol):
    run_id: str

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: Path, folder: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Keeps metrics in memory and writes nothing (tests, dry runs)."""

    def __init__(self) -> None:
        self.run_id = ""
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.tags: dict[str, str] = {}
        self.status = "RUNNING"

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def finish(self, status: str = "FINISHED") -> None:
        self.status = status


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a local SQLite store (`sqlite:///<path>`); None for other URIs."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).expanduser().resolve()


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Raise a ConfigError now if the URI cannot work (MLflow itself retries for minutes)."""
    shown = redact(uri)
    if uri.startswith(("http://", "https://")):
        bare = without_userinfo(uri).rstrip("/")  # no user:password@ (which may hold a `/`)
        try:
            with urllib.request.urlopen(f"{bare}/health", timeout=timeout_s):
                return
        except urllib.error.HTTPError:  # the server answered (a login-protected /health)
            return
        except (urllib.error.URLError, OSError) as err:
            raise ConfigError(
                f"tracking.uri={shown} is unreachable ({redact(str(err))}); start the MLflow "
                "server or use tracking.uri=sqlite:///mlflow.db for a local file"
            ) from None
    elif (db := _sqlite_file(uri)) is not None:
        if not db.parent.is_dir():
            raise ConfigError(f"tracking.uri={shown}: folder {db.parent} does not exist")
    elif is_database(uri):
        check_database("tracking.uri", uri, round(timeout_s))
    elif uri.startswith("file:") or "://" not in uri:
        raise ConfigError(
            f"tracking.uri={shown}: MLflow's file store is deprecated; use sqlite:///<path>.db "
            "or an http(s):// MLflow server"
        )


def open_store(uri: str) -> Any:
    """An MlflowClient of `uri`; a local SQLite store's tables are made (or found) first under
    a file lock beside it: processes opening a new store at once would race to make them, and
    all but one fail (`duplicate column name`)."""
    from mlflow import MlflowClient

    db = _sqlite_file(uri)
    if db is None:
        return MlflowClient(tracking_uri=uri)
    with FileLock(f"{db}.lock"):
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # the store's tables exist from here on
    return client


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Keep artifacts of a local SQLite store beside the database file."""
    db = _sqlite_file(uri)
    return None if db is None else (db.parent / "mlartifacts" / experiment).as_uri()


def _experiment_id(client: Any, uri: str, experiment: str) -> str:
    """The experiment's id, created if missing; a worker that loses the race to create it
    (parallel suite workers on a fresh server) takes the winner's."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(experiment)
    if found:
        return found.experiment_id
    try:
        return client.create_experiment(experiment, _artifact_location(uri, experiment))
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(experiment).experiment_id


class MLflowTracker:
    """One MLflow run (new, or resumed by id) on an explicit client: no global mlflow state."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_id: str = "",
        run_name: str = "",
        tags: dict[str, str] | None = None,
        spool: Path | None = None,
        once_per_step: bool = False,
    ) -> None:
        """`spool`: a JSONL file that takes the records while MLflow is unreachable.
        `once_per_step`: a resumed run logs no metric at a step it already has (a run resumed
        from its last checkpoint replays the steps after it, which were logged before the crash).
        A resumed run first uploads what its last attempt left in `spool`, in order, and tags
        the time it resumed (`pgbench.resumed_ms`): a sync never sets an older status over it.
        """
        self.client = open_store(uri)
        self.spool = spool
        self.offline = False
        self.last_steps: dict[str, int] | None = {} if run_id and once_per_step else None
        self.resumed = bool(run_id)
        if run_id:
            self.run_id = run_id
            if spool is not None and pending(spool):  # its last attempt's records come first
                count = upload_spool(self.client, run_id, spool)
                print(f"pgbench: uploaded {count} records buffered in {spool}", file=sys.stderr)
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, RESUMED_TAG, str(_now_ms()))
            return
        run = self.client.create_run(
            _experiment_id(self.client, uri, experiment),
            run_name=run_name or None,
            tags=redact_values(tags or {}),
        )
        self.run_id = run.info.run_id

    def _send(self, record: dict[str, Any]) -> None:
        """Send one record to MLflow; with a spool, buffer it there once MLflow fails."""
        if not self.offline:
            try:
                replay(self.client, self.run_id, record)
                return
            except Exception as err:  # MLflow raises many types when the server is gone
                if self.spool is None:
                    raise
                self.offline = True
                print(
                    f"pgbench: MLflow unreachable ({type(err).__name__}); buffering to "
                    f"{self.spool}; upload later with `pgbench sync {self.spool.parent}`",
                    file=sys.stderr,
                )
        append_record(self.spool, record)

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params, every URL's password hidden (pgbench.config.urls). A resumed run keeps the
        params it logged first: MLflow refuses a changed value, and a run resumed by another
        copy of pgbench has another `git_commit` and `model_path`."""
        shown = {key: redact(str(value)) for key, value in params.items()}
        if self.resumed and not self.offline:
            logged = self.client.get_run(self.run_id).data.params
            shown = {key: value for key, value in shown.items() if key not in logged}
        if shown:
            self._send({"kind": "params", "params": shown})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        values = {
            key: float(value)
            for key, value in metrics.items()
            if value is not None and not math.isnan(float(value))
        }
        if self.last_steps is not None and not self.offline:
            values = {k: v for k, v in values.items() if step > self._last_step(k)}
            if not values:
                return
        record = {"kind": "metrics", "step": step, "time_ms": _now_ms()}
        self._send(record | {"metrics": values})

    def _last_step(self, key: str) -> int:
        """The last step of `key` logged to this run before it was resumed (-1 if none)."""
        if key not in self.last_steps:
            history = self.client.get_metric_history(self.run_id, key)
            self.last_steps[key] = max((m.step for m in history), default=-1)
        return self.last_steps[key]

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._send({"kind": "artifact", "path": str(Path(path).resolve()), "folder": folder})

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tags on this run (a sweep trial's state, a sweep's best parameters)."""
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, redact(value))

    def fail_if_running(self, run_id: str, tags: dict[str, str]) -> None:
        """Tag another run of this store and end it FAILED if it still claims to be RUNNING
        (its worker died without saying so)."""
        if self.client.get_run(run_id).info.status == "RUNNING":
            for key, value in tags.items():
                self.client.set_tag(run_id, key, redact(value))
            self.client.set_terminated(run_id, "FAILED")

    def finish(self, status: str = "FINISHED") -> None:
        """End the run; its time goes with it, so that a sync never sets it over a newer one."""
        self._send({"kind": "finish", "status": status, "time_ms": _now_ms()})


def _now_ms() -> int:
    return int(time.time() * 1000)


def replay(client: Any, run_id: str, record: dict[str, Any]) -> None:
    """Apply one tracking record (params, metrics, artifact or finish) to an MLflow run."""
    from mlflow.entities import Metric, Param

    kind = record["kind"]
    if kind == "params":
        items = [Param(key, value) for key, value in record["params"].items()]
        for start in range(0, len(items), 100):
            client.log_batch(run_id, params=items[start : start + 100])
    elif kind == "metrics":
        step, now = record["step"], record["time_ms"]
        metrics = [Metric(k, v, now, step) for k, v in record["metrics"].items()]
        client.log_batch(run_id, metrics=metrics)
    elif kind == "artifact":
        if Path(record["path"]).is_dir():
            client.log_artifacts(run_id, record["path"], record["folder"])
        else:
            client.log_artifact(run_id, record["path"], record["folder"])
    elif kind == "finish":  # at its own end time (older spools: now)
        client.set_terminated(run_id, record["status"], end_time=record.get("time_ms"))
    else:
        raise ValueError(f"unknown tracking record kind {kind!r}")


RESUMED_TAG = "pgbench.resumed_ms"  # when the run was last resumed (ms since the epoch)


def upload_spool(client: Any, run_id: str, spool: Path) -> int:
    """Upload a run's spooled records to it (pgbench.train.spool takes them exactly once);
    returns how many. A buffered status older than the run's state on the server is skipped."""
    count = 0
    with closing(take(spool)) as batches:
        for records in batches:
            for record in records:  # metrics keep their step and time: a repeat adds nothing
                if not _stale(client, run_id, record) and not _gone(record):
                    replay(client, run_id, record)
            count += len(records)
    return count


def _stale(client: Any, run_id: str, record: dict[str, Any]) -> bool:
    """A buffered status older than the run's end or last resume on the server: e.g. a
    KILLED spooled during an outage, after which the run was resumed online and finished."""
    if record["kind"] != "finish" or "time_ms" not in record:
        return False
    run = client.get_run(run_id)
    newer = max(run.info.end_time or 0, int(run.data.tags.get(RESUMED_TAG, 0)))
    if record["time_ms"] >= newer:
        return False
    print(
        f"pgbench sync: kept run {run_id} {run.info.status}; skipped its buffered "
        f"{record['status']} status, older than the run's last end or resume",
        file=sys.stderr,
    )
    return True


def _gone(record: dict[str, Any]) -> bool:
    """A buffered artifact no longer on disk (e.g. a checkpoint rotated away since)."""
    if record["kind"] != "artifact" or Path(record["path"]).exists():
        return False
    print(f"pgbench sync: skipped artifact {record['path']}: no longer on disk", file=sys.stderr)
    return True


def sync(run_dir: Path, uri: str | None = None) -> int:
    """Upload a run's buffered tracking records to its MLflow run; returns how many.

    `uri` is the tracking URI again, for a saved one whose password was hidden."""
    info_path = run_dir / "run.json"
    if not info_path.is_file():
        raise DataError(f"{run_dir} is not a pgbench run directory ({info_path} is missing)")
    if not pending(run_dir / SPOOL):
        return 0
    info = json.loads(info_path.read_text())
    uri = restore("tracking.uri", info["tracking_uri"], uri, str(info_path))
    check_reachable(uri)
    return upload_spool(open_store(uri), info["run_id"], run_dir / SPOOL)


def sync_pending(run_dir: Path, uri: str | None = None) -> int:
    """Upload what a finished run still buffers, before its metrics are read (a suite cell's
    objective reads its valid curve from MLflow); 0 if nothing waits. A ConfigError says so
    if MLflow is still unreachable: the curve would lack its tail."""
    return sync(run_dir, uri) if pending(run_dir / SPOOL) else 0


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged point of one run's metric, by step."""
    points = open_store(uri).get_metric_history(run_id, key)
    return sorted((p.step, p.value) for p in points)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (temporary file, then rename), every URL's password hidden."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(redact_values(data), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
