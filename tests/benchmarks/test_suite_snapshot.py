"""benchmarks/suite_snapshot.py: what a snapshot keeps, in which order it copies the journal
and the MLflow store, and the one-line refusals (a PostgreSQL suite, no SQLite store)."""

import importlib.util
import sqlite3
import sys
import tarfile
from pathlib import Path

import pytest

from pgbench.errors import DataError

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "suite_snapshot.py"
spec = importlib.util.spec_from_file_location("suite_snapshot", SCRIPT)
suite_snapshot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite_snapshot)


def make_suite_folder(root: Path) -> Path:
    """A suite folder as `pgbench suite` leaves it mid-way: a store with one run, a journal
    whose last line is being appended, one finished and one unfinished cell."""
    root.mkdir()
    store = sqlite3.connect(root / "mlflow.db")
    with store:
        store.execute("CREATE TABLE runs (run_uuid TEXT, status TEXT)")
        store.execute("INSERT INTO runs VALUES ('abc', 'FINISHED')")
    store.close()
    suite = root / "runs" / "suite-demo"
    (suite / "rloo-s0").mkdir(parents=True)
    (suite / "grpo-s0").mkdir()
    (suite / "suite.journal").write_bytes(b'{"op": 0}\n{"op": 1}\n{"op": 2, "half')
    (suite / "cells.json").write_text("[]")
    for name in ("config.json", "run.json", "summary.json", "samples.csv"):
        (suite / "rloo-s0" / name).write_text(name)
    (suite / "rloo-s0" / "checkpoints").mkdir()  # never copied
    (suite / "grpo-s0" / "run.json").write_text("{}")  # unfinished: left out
    return root


def test_a_snapshot_keeps_complete_journal_lines_finished_cells_and_the_store(tmp_path):
    folder = make_suite_folder(tmp_path / "work")
    out = tmp_path / "snap.tar.gz"
    assert suite_snapshot.snapshot(folder, out) == ["suite-demo/rloo-s0"]
    with tarfile.open(out) as tar:
        names = tar.getnames()
        journal = tar.extractfile("runs/suite-demo/suite.journal").read()
        tar.extract("mlflow.db", tmp_path / "restored", filter="data")
    assert journal == b'{"op": 0}\n{"op": 1}\n'  # the half-written line is left out
    cell = [f"runs/suite-demo/rloo-s0/{n}" for n in suite_snapshot.CELL_FILES]
    suite_files = ["runs/suite-demo/suite.journal", "runs/suite-demo/cells.json"]
    assert sorted(names) == sorted([*suite_files, *cell, "mlflow.db"])
    assert names[0] == "runs/suite-demo/suite.journal" and names[-1] == "mlflow.db"
    copy = sqlite3.connect(tmp_path / "restored" / "mlflow.db")
    assert copy.execute("SELECT * FROM runs").fetchall() == [("abc", "FINISHED")]
    copy.close()


def test_the_journal_is_read_before_the_store_is_backed_up(tmp_path, monkeypatch):
    folder = make_suite_folder(tmp_path / "work")
    order = []
    real_lines, real_backup = suite_snapshot.complete_lines, suite_snapshot.backup_store
    monkeypatch.setattr(
        suite_snapshot, "complete_lines", lambda p: order.append("journal") or real_lines(p)
    )
    monkeypatch.setattr(
        suite_snapshot, "backup_store", lambda *a: order.append("store") or real_backup(*a)
    )
    suite_snapshot.snapshot(folder, tmp_path / "snap.tar.gz")
    # a trial finishing in between is RUNNING in the journal copy (queued again on restore)
    # and finished in the store; the other order would keep a COMPLETE trial with no run
    assert order == ["journal", "store"]


def test_a_postgresql_suite_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    folder = make_suite_folder(tmp_path / "work")
    (folder / "runs" / "suite-demo" / "suite.journal").unlink()  # suite.storage=postgresql://
    out = tmp_path / "snap.tar.gz"
    with pytest.raises(DataError, match="has no suite.journal: its trials live in a database"):
        suite_snapshot.snapshot(folder, out)
    monkeypatch.setattr(sys, "argv", ["suite_snapshot.py", str(folder), str(out)])
    with pytest.raises(SystemExit) as exited:
        suite_snapshot.main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("suite_snapshot: ") and err.count("\n") == 1 and "pg_dump" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # nothing written


def test_a_folder_without_a_sqlite_store_is_refused_and_left_unchanged(tmp_path):
    folder = make_suite_folder(tmp_path / "work")
    with pytest.raises(DataError, match=r"nowhere\.db is not a file: the snapshot copies a SQLite"):
        suite_snapshot.snapshot(folder, tmp_path / "snap.tar.gz", store="nowhere.db")
    assert not (folder / "nowhere.db").exists()  # never created as an empty database
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_the_script_names_no_machine_path():
    text = SCRIPT.read_text()
    assert "/work/" not in text and "/home/" not in text and "/root" not in text
