"""examples/plugin, installed with pip: its task and estimator are found by entry point (and
by import string), and a suite compares its estimator with rloo.

The package is installed into a folder of this test (`pip install --target`) that is put on
sys.path, so that other tests running meanwhile never see its entry points."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from pgbench import estimators, tasks
from pgbench.cli import main
from pgbench.config.verbs import help_rows, resolve
from pgbench.errors import ConfigError
from pgbench.tasks import Example

PLUGIN = Path(__file__).parents[1] / "examples" / "plugin"
pytestmark = pytest.mark.xdist_group("plugin_package")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """examples/plugin installed by pip into a folder of this module's tests."""
    target = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    command += ["--no-cache-dir", "--quiet", "--target", str(target), str(PLUGIN)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return target


@pytest.fixture
def plugin(installed, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(installed))
    for name in [m for m in sys.modules if m.startswith("pgbench_example_plugin")]:
        monkeypatch.delitem(sys.modules, name)
    return installed


def test_its_task_and_estimator_are_found_by_entry_point(plugin):
    assert "echo" in tasks.CATALOG.plugins() and "median" in estimators.CATALOG.plugins()
    listed = {row[0]: row[3] for row in help_rows()}  # `pgbench run --help`
    assert "rloo, median, or pkg.module:Class" in listed["estimator"]
    config = resolve({"task": "echo", "estimator": "median", "task.test_size": "4"})
    median = type(config.estimator)
    assert median.name == "median" and config.task.name == "echo"
    assert estimators.CATALOG.get_class("pgbench_example_plugin.estimator:MedianBaseline") is median
    flat = config.to_flat()
    assert (flat["task"], flat["estimator"]) == ("echo@0.1.0", "median@0.1.0")  # with versions
    assert resolve(flat).to_flat() == flat  # a resumed run or a SLURM worker resolves it again
    worker = "import json, sys; from pgbench.config.verbs import resolve; "
    worker += "c = resolve(json.loads(sys.argv[1])); print(c.task.name, c.estimator.name)"
    env = os.environ | {"PYTHONPATH": str(plugin)}  # a fresh process, as on a SLURM node
    done = subprocess.run(
        [sys.executable, "-c", worker, json.dumps(flat)], env=env, capture_output=True, text=True
    )
    assert done.stdout.split() == ["echo", "median"], done.stderr
    with pytest.raises(ConfigError, match="made with version 0.0.9 of its package, 0.1.0 is"):
        resolve(flat | {"estimator": "median@0.0.9"})
    # A_i = r_i - median_j r_j: medians 2 (of 1, 2, 2, 9) and 5 (of 4, 5, 5, 100)
    rewards = torch.tensor([[1.0, 2.0, 9.0, 2.0], [4.0, 5.0, 100.0, 5.0]])
    advantages = config.estimator.advantages(rewards)
    assert advantages.tolist() == [[-1.0, 0.0, 7.0, 0.0], [-1.0, 0.0, 95.0, 0.0]]
    task = config.task
    assert task.reward(["chat", " chien \n", "chat"], [Example("chat", ("chat",))] * 3) == [
        1.0,
        0.0,
        1.0,
    ]
    assert len(task.splits().test) == 4


def test_a_suite_compares_its_estimator_with_rloo(plugin, run_overrides, tmp_path, capsys):
    values = run_overrides | {"trainer.steps": "2", "eval.every": "0", "checkpoint.every": "0"}
    values |= {"output_dir": str(tmp_path / "suite")}
    args = [f"{k}={v}" for k, v in values.items()]
    args += ["tasks=fr_en", "estimators=rloo,median", "seeds=2", "suite.id=plug"]
    assert main(["suite", *args]) == 0, capsys.readouterr().err
    out = tmp_path / "suite"
    board = pd.read_csv(out / "leaderboard.csv")
    assert set(board[board.task == "fr_en"].estimator) == {"rloo", "median"}
    judged = pd.read_csv(out / "verdicts.csv")
    assert len(judged) == 1 and {judged.a[0], judged.b[0]} == {"rloo", "median"}
    assert judged.n_seeds[0] == 2
    assert sorted(p.name for p in out.glob("fr_en-median-s*")) == [
        "fr_en-median-s0",
        "fr_en-median-s1",
    ]


def test_a_protocol_file_lists_its_estimator_by_import_string(plugin, tmp_path):
    from pgbench.runs.protocol import plan_suite

    path = tmp_path / "mine.toml"
    path.write_text(
        '[suite]\ntasks = ["echo"]\nseeds = 1\n'
        'estimators = ["rloo", "pgbench_example_plugin.estimator:MedianBaseline"]\n'
    )
    plan = plan_suite({"suite": str(path), "output_dir": str(tmp_path / "out")})
    names = [cell.name for cell in plan.cells]
    assert names == ["echo-rloo-s0", "echo-pgbench_example_plugin.estimator.MedianBaseline-s0"]
    saved = plan.cells[1].values["estimator"]
    assert saved == "pgbench_example_plugin.estimator:MedianBaseline@0.1.0"
