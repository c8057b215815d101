"""benchmarks/headline_gain.py: which commands it runs, resuming, and the gains table against
a hand computation (pgbench itself replaced by a fake that writes what runs and evals write)."""

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "headline_gain.py"
spec = importlib.util.spec_from_file_location("headline_gain", SCRIPT)
headline_gain = importlib.util.module_from_spec(spec)
spec.loader.exec_module(headline_gain)

TEST_AFTER = {0: 43.0, 1: 44.0, 2: 45.5}  # test chrF after RL by seed; 42.0 before
UNSEEN_AFTER = {0: 41.0, 1: 41.5, 2: 42.6}  # the unseen slice's chrF after; 40.0 before


def fake_pgbench(calls):
    def run(args, threads, log):
        calls.append(args)
        keys = dict(arg.split("=", 1) for arg in args[1:])
        out = Path(keys["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        if args[0] == "run":
            seed = int(keys["seed"])
            (out / "final").mkdir()
            metrics = {"before": 42.0, "after": TEST_AFTER[seed]}
            summary = {
                f"eval_{k}": {"chrf": v, "bleu": v / 2, "embed": 50.0} for k, v in metrics.items()
            }
            summary["train"] = {"train/wall_clock_s": 300.0 + seed}
            (out / "summary.json").write_text(json.dumps(summary))
        else:
            model = keys.get("model")  # none: fr_en's default model, the start
            chrf = 40.0 if model is None else UNSEEN_AFTER[int(Path(model).name[1:])]
            (out / "eval.json").write_text(json.dumps({"chrf": chrf, "bleu": 1.0, "embed": 2.0}))

    return run


def test_runs_each_seed_once_evals_the_slice_and_tables_the_gains(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(headline_gain, "pgbench", fake_pgbench(calls))
    argv = [
        "headline_gain.py",
        "--out",
        str(tmp_path),
        "--seeds",
        "0,1,2",
        "trainer.lr=2e-4",
        "task.reward=chrf",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    headline_gain.main()
    runs = [args for args in calls if args[0] == "run"]
    evals = [args for args in calls if args[0] == "eval"]
    assert len(runs) == 3 and len(evals) == 4  # the starting policy once, each final policy
    assert all("trainer.lr=2e-4" in args for args in runs)
    assert all("task.test_split=unseen" in args and "task.reward=chrf" in args for args in evals)
    assert not any("trainer.lr=2e-4" in args for args in evals)  # eval has no trainer keys
    assert sum(not any(a.startswith("model=") for a in args) for args in evals) == 1

    table = pd.read_csv(tmp_path / "gains.csv")
    assert table["test_chrf_change"].tolist() == [1.0, 2.0, 3.5]
    assert table["unseen_chrf_change"].tolist() == pytest.approx([1.0, 1.5, 2.6])
    # mean 2.1667, sd 1.2583, sem 0.7265, t(0.975, 2) 4.3027: half-width 3.1259
    assert "| test chrf | 42.00 | 44.17 | +2.17 [-0.96, +5.29] |" in capsys.readouterr().out

    calls.clear()
    headline_gain.main()  # finished seeds and evals are read back, not run again
    assert calls == []
