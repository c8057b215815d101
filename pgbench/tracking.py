"""Experiment tracking behind a small interface: MLflow, or nothing (for tests and eval).

The training loop talks to a `Tracker`; only this module imports mlflow.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from pgbench.errors import ConfigError


class Tracker(Protocol):
    run_id: str

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: Path, folder: str | None = None) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Keeps metrics in memory and writes nothing (tests, dry runs)."""

    def __init__(self) -> None:
        self.run_id = ""
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.status = "RUNNING"

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        self.status = status


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Raise a ConfigError now if the URI cannot work (MLflow itself retries for minutes)."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
                return
        except (urllib.error.URLError, OSError) as err:
            raise ConfigError(
                f"tracking.uri={uri} is unreachable ({err}); start the MLflow server or use "
                "tracking.uri=sqlite:///mlflow.db for a local file"
            ) from None
    elif uri.startswith("sqlite:///"):
        parent = Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent
        if not parent.is_dir():
            raise ConfigError(f"tracking.uri={uri}: folder {parent} does not exist")
    elif uri.startswith("file:") or "://" not in uri:
        raise ConfigError(
            f"tracking.uri={uri}: MLflow's file store is deprecated; use sqlite:///<path>.db "
            "or an http(s):// MLflow server"
        )


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Keep artifacts of a local SQLite store beside the database file."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
        return (db.parent / "mlartifacts" / experiment).as_uri()
    return None


class MLflowTracker:
    """One MLflow run (new, or resumed by id) on an explicit client: no global mlflow state."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_id: str = "",
        run_name: str = "",
        tags: dict[str, str] | None = None,
    ) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        if run_id:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(experiment, _artifact_location(uri, experiment))
        )
        run = self.client.create_run(experiment_id, run_name=run_name or None, tags=tags or {})
        self.run_id = run.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(key, float(value), now, step)
            for key, value in metrics.items()
            if value is not None and not math.isnan(float(value))
        ]
        self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        if Path(path).is_dir():
            self.client.log_artifacts(self.run_id, str(path), folder)
        else:
            self.client.log_artifact(self.run_id, str(path), folder)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
