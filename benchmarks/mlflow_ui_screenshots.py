"""The MLflow UI as a user sees it: screenshots of a finished suite, taken by headless Chromium.

    python benchmarks/mlflow_ui_screenshots.py sqlite:////path/mlflow.db cpu \\
        [--report runs/suite-cpu/suite.html] [--metric eval/accuracy] [--out docs/screenshots]

Starts `mlflow server` on a free localhost port over the suite's tracking store (an SQLite file
is first copied with SQLite's backup API, so a store that is still being written is read
consistently and never touched), and screenshots three views with Chromium's command line
(`apt-get install chromium`): the suite's runs (the filter `tags."pgbench.suite" = '<id>'` in
the experiment of the run below), one run's `--metric` chart, and the suite report
(`suite.html`). Each PNG is downscaled until it is under `--max-kb`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow import MlflowClient
from PIL import Image

# The browser reaches the server by this name (mapped to 127.0.0.1), as a user on a cluster
# does by a host name: on localhost MLflow 3's UI opens its assistant panel over the page.
UI_HOST = "mlflow-ui"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def snapshot(uri: str, folder: Path) -> str:
    """A consistent copy of an SQLite store (SQLite's online backup); other URIs as they are."""
    if not uri.startswith("sqlite:///"):
        return uri
    copy = folder / "mlflow.db"
    with sqlite3.connect(uri.removeprefix("sqlite:///")) as source, sqlite3.connect(copy) as dest:
        source.backup(dest)
    return f"sqlite:///{copy}"


def start_server(store: str, port: int, log: Path) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port, also answering as UI_HOST; returns once /health does."""
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1", "--backend-store-uri", store]
    # as the README's server for a cluster: without the origin, the browser's POSTs (run
    # searches) from a non-localhost page are refused (403) and the run list shows an error
    command += ["--allowed-hosts", f"{UI_HOST}:{port},127.0.0.1:{port}"]
    command += ["--cors-allowed-origins", f"http://{UI_HOST}:{port}"]
    server = subprocess.Popen(
        command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(1)
    server.kill()
    raise SystemExit(f"mlflow server did not start: {log.read_text()[-500:]}")


def pick_run(client: MlflowClient, suite: str, metric: str) -> tuple[str, str]:
    """(experiment id, run id) of the first finished run of the suite that logged `metric`."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments,
        f"tags.`pgbench.suite` = '{suite}' and attributes.status = 'FINISHED'",
        order_by=["tags.`pgbench.task`", "tags.`pgbench.estimator`", "tags.`pgbench.seed`"],
    )
    for run in runs:
        if metric in run.data.metrics:
            return run.info.experiment_id, run.info.run_id
    raise SystemExit(f"no finished run of suite {suite} logged {metric}")


def runs_url(port: int, experiment: str, suite: str) -> str:
    """The experiment's run table (the "Model training" view), filtered to the suite's runs."""
    query = urllib.parse.urlencode(
        {"workflowType": "machine_learning", "searchFilter": f"tags.\"pgbench.suite\" = '{suite}'"},
        quote_via=urllib.parse.quote,
    )
    return f"http://{UI_HOST}:{port}/#/experiments/{experiment}/runs?{query}"


def metric_url(port: int, experiment: str, run: str, metric: str) -> str:
    """The metric page of one run: `metric` against step (every query key the page reads)."""
    query = {
        "runs": json.dumps([run]),
        "metric": json.dumps(metric),
        "experiments": json.dumps([experiment]),
        "plot_metric_keys": json.dumps([metric]),
        "plot_layout": "{}",
        "x_axis": "step",
        "y_axis_scale": "linear",
        "line_smoothness": "1",
        "show_point": "true",
        "deselected_curves": "[]",
        "last_linear_y_axis_range": "[]",
    }
    encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    return f"http://{UI_HOST}:{port}/#/metric/{urllib.parse.quote(metric, safe='')}?{encoded}"


def screenshot(url: str, path: Path, size: str, wait_ms: int) -> None:
    """Chromium renders `url` (virtual time lets the single-page app fetch and draw) to `path`."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not on PATH: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
            + [f"--user-data-dir={profile}", f"--window-size={size}"]
            + [f"--host-resolver-rules=MAP {UI_HOST} 127.0.0.1"]
            + [f"--virtual-time-budget={wait_ms}", f"--screenshot={path}", url],
            check=True,
            capture_output=True,
            timeout=300,
        )


def shrink(path: Path, max_kb: int) -> None:
    """Downscale the PNG by 20% steps until it is under max_kb."""
    while path.stat().st_size > max_kb * 1024:
        image = Image.open(path)
        image = image.resize((image.width * 4 // 5, image.height * 4 // 5), Image.LANCZOS)
        image.save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tracking_uri", help="the suite's store, e.g. sqlite:////path/mlflow.db")
    parser.add_argument("suite", help="the suite id (tag pgbench.suite)")
    parser.add_argument("--report", default="", help="suite.html (default runs/suite-<id>/)")
    parser.add_argument("--metric", default="eval/accuracy", help="the metric to chart")
    parser.add_argument("--out", default="docs/screenshots")
    parser.add_argument("--size", default="1600,1000", help="browser window, width,height")
    parser.add_argument("--wait-ms", type=int, default=15000, help="virtual time to render")
    parser.add_argument("--max-kb", type=int, default=300)
    args = parser.parse_args()
    report = Path(args.report or f"runs/suite-{args.suite}/suite.html").resolve()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        store = snapshot(args.tracking_uri, Path(scratch))
        port = free_port()
        server = start_server(store, port, Path(scratch) / "server.log")
        try:
            client = MlflowClient(f"http://127.0.0.1:{port}")
            experiment, run = pick_run(client, args.suite, args.metric)
            views = {
                "suite_runs.png": runs_url(port, experiment, args.suite),
                "run_metric.png": metric_url(port, experiment, run, args.metric),
                "suite_report.png": report.as_uri(),
            }
            for name, url in views.items():
                screenshot(url, out / name, args.size, args.wait_ms)
                shrink(out / name, args.max_kb)
                print(f"{out / name}: {(out / name).stat().st_size // 1024} KB  <- {url}")
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


if __name__ == "__main__":
    main()
