"""Snapshot a running suite's finished work into one small tar.gz, to continue it elsewhere.

    python benchmarks/suite_snapshot.py DIR SNAPSHOT.tar.gz [--store mlflow.db] [--runs runs]

DIR is the folder the suite commands run in; `--store` (its SQLite MLflow store) and `--runs`
(where the suites' output folders are) are relative to it. The snapshot keeps what resuming
needs and nothing heavy:
- each suite's suite.journal (its complete lines), cells.json and report files (.csv, .md);
- for every finished cell (it has summary.json): config.json, run.json, summary.json and
  samples.csv. No checkpoints, weights or MLflow artifacts;
- the MLflow SQLite store, copied with SQLite's backup API (consistent while workers write).

The journals are copied first and the store last, so the store holds every run the journals
and cells name: a trial that finishes meanwhile is RUNNING in the copied journal and
finished in the store, and a cell with summary.json is read, never trained again.

Unfinished cells are left out: on restore their trials, left RUNNING in the journal, are
failed and queued again (the resume rule of pgbench.runs.suite), so they train from the
start. Restore: `mkdir -p DIR && tar xzf SNAPSHOT -C DIR`, then rerun the suite's commands
from DIR (the same paths, so the store's artifact locations stay valid).

Only journal suites with a SQLite store are supported: a suite on PostgreSQL
(`suite.storage=postgresql://...`) or an MLflow server is refused in one line; back those
up with the database's own tools (pg_dump).
"""

from __future__ import annotations

import argparse
import sqlite3
import tarfile
import tempfile
from pathlib import Path

from pgbench.errors import DataError

CELL_FILES = ("config.json", "run.json", "summary.json", "samples.csv")
JOURNAL = "suite.journal"


def complete_lines(path: Path) -> bytes:
    """The file up to its last newline: a line being appended is left out."""
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1]


def journal_suites(runs: Path) -> list[Path]:
    """The suite folders under `runs`; a DataError where one keeps its trials elsewhere."""
    suites = sorted(p for p in runs.glob("suite-*") if p.is_dir())
    if not suites:
        raise DataError(f"{runs} holds no suite-* folder; pass the folder the suite runs in")
    for suite in suites:
        if not (suite / JOURNAL).is_file():
            raise DataError(
                f"{suite} has no {JOURNAL}: its trials live in a database (suite.storage="
                "postgresql://...), which this snapshot cannot copy; back it up with pg_dump"
            )
    return suites


def add_suite(tar: tarfile.TarFile, suite: Path, runs_name: str, tmp: Path) -> list[str]:
    """Add `suite`'s journal (first), report files and finished cells; returns those cells."""
    journal = tmp / f"{suite.name}.journal"
    journal.write_bytes(complete_lines(suite / JOURNAL))
    tar.add(journal, f"{runs_name}/{suite.name}/{JOURNAL}")
    kept = []
    for path in sorted(suite.glob("*")):
        if path.is_file() and path.suffix in (".json", ".csv", ".md"):
            tar.add(path, f"{runs_name}/{suite.name}/{path.name}")
        elif (path / "summary.json").is_file():
            kept.append(f"{suite.name}/{path.name}")
            for name in CELL_FILES:
                if (path / name).is_file():
                    tar.add(path / name, f"{runs_name}/{suite.name}/{path.name}/{name}")
    return kept


def backup_store(store: Path, copy: Path) -> None:
    """Copy the SQLite store `store` to `copy` with SQLite's online backup."""
    # read-only: a wrong path is an error, never a new empty database
    source = sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True)
    target = sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def snapshot(folder: Path, out: Path, store: str = "mlflow.db", runs: str = "runs") -> list[str]:
    """Write the snapshot of `folder` to `out`; returns the finished cells it holds."""
    if not (folder / store).is_file():
        raise DataError(
            f"{folder / store} is not a file: the snapshot copies a SQLite MLflow store "
            "(--store, relative to the folder); back up an MLflow server with its own tools"
        )
    suites = journal_suites(folder / runs)
    partial = out.with_name(f"{out.name}.part")
    kept = []
    try:
        with tempfile.TemporaryDirectory() as tmp, tarfile.open(partial, "w:gz") as tar:
            for suite in suites:  # journals first ...
                kept += add_suite(tar, suite, runs, Path(tmp))
            if (folder / "run.sh").is_file():
                tar.add(folder / "run.sh", "run.sh")
            backup_store(folder / store, Path(tmp) / "store.db")  # ... the store last
            tar.add(Path(tmp) / "store.db", store)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where the suite commands run")
    parser.add_argument("out", type=Path, help="the snapshot to write (.tar.gz)")
    parser.add_argument("--store", default="mlflow.db", help="the SQLite MLflow store in it")
    parser.add_argument("--runs", default="runs", help="the folder of the suites in it")
    args = parser.parse_args()
    try:
        kept = snapshot(args.folder, args.out, args.store, args.runs)
    except DataError as err:
        parser.exit(2, f"suite_snapshot: {err}\n")
    size = args.out.stat().st_size / 2**20
    print(f"wrote {args.out} ({size:.1f} MiB): {len(kept)} finished cells")


if __name__ == "__main__":
    main()
