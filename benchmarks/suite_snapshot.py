"""Snapshot a running suite's finished work into one small tar.gz, to continue it elsewhere.

    python benchmarks/suite_snapshot.py /work/suite-smollm2 suite-cpu_smollm2.tar.gz

DIR is the folder the suite commands run in (its `mlflow.db` and `runs/`). The snapshot keeps
what resuming needs and nothing heavy:
- the MLflow SQLite store, copied with SQLite's backup API (consistent while workers write);
- each suite's cells.json, suite.journal (its complete lines) and report files (.csv, .md);
- for every finished cell (it has summary.json): config.json, run.json, summary.json and
  samples.csv. No checkpoints, weights or MLflow artifacts.

Unfinished cells are left out: on restore their trials, left RUNNING in the journal, are
failed and queued again (the resume rule of pgbench.runs.suite), so they train from the
start. Restore: `mkdir -p DIR && tar xzf SNAPSHOT -C DIR`, then rerun the suite's commands
from DIR (the same paths, so the store's artifact locations stay valid).
"""

from __future__ import annotations

import argparse
import sqlite3
import tarfile
import tempfile
from pathlib import Path

CELL_FILES = ("config.json", "run.json", "summary.json", "samples.csv")


def complete_lines(path: Path) -> bytes:
    """The file up to its last newline: a line being appended is left out."""
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1]


def snapshot(folder: Path, out: Path) -> list[str]:
    """Write the snapshot of `folder` to `out`; returns the finished cells it holds."""
    kept = []
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(out, "w:gz") as tar:
        store = Path(tmp) / "mlflow.db"
        with sqlite3.connect(folder / "mlflow.db") as source, sqlite3.connect(store) as copy:
            source.backup(copy)
        tar.add(store, "mlflow.db")
        for extra in ("run.sh",):
            if (folder / extra).is_file():
                tar.add(folder / extra, extra)
        for suite in sorted((folder / "runs").glob("suite-*")):
            journal = Path(tmp) / f"{suite.name}.journal"
            journal.write_bytes(complete_lines(suite / "suite.journal"))
            tar.add(journal, f"runs/{suite.name}/suite.journal")
            for path in sorted(suite.glob("*")):
                if path.is_file() and path.suffix in (".json", ".csv", ".md"):
                    tar.add(path, f"runs/{suite.name}/{path.name}")
                elif (path / "summary.json").is_file():
                    kept.append(f"{suite.name}/{path.name}")
                    for name in CELL_FILES:
                        if (path / name).is_file():
                            tar.add(path / name, f"runs/{suite.name}/{path.name}/{name}")
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where the suite commands run")
    parser.add_argument("out", type=Path, help="the snapshot to write (.tar.gz)")
    args = parser.parse_args()
    kept = snapshot(args.folder, args.out)
    size = args.out.stat().st_size / 2**20
    print(f"wrote {args.out} ({size:.1f} MiB): {len(kept)} finished cells")


if __name__ == "__main__":
    main()
