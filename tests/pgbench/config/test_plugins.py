"""A task or estimator from outside pgbench, by import string: a run names its folder and
MLflow run with a path-safe name, saves the import string, and `resume=` finds it again."""

import json
import sys

from mlflow import MlflowClient

from pgbench.cli import main
from pgbench.config.verbs import resolve
from pgbench.runs.commands import _run_values
from pgbench.train.rundir import default_output_dir

USER_ESTIMATOR = """
from dataclasses import dataclass

from pgbench.estimators import Estimator


@dataclass(frozen=True)
class Centred(Estimator):
    \"\"\"A_i = r_i - mean_j r_j\"\"\"

    def advantages(self, rewards, state=None):
        return rewards - rewards.mean(dim=1, keepdim=True)
"""


def test_an_estimator_by_import_string_runs_saves_its_string_and_resumes(
    run_overrides, tmp_path, monkeypatch, capsys
):
    (tmp_path / "user_estimators.py").write_text(USER_ESTIMATOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_estimators", raising=False)
    values = run_overrides | {"trainer.steps": "2", "eval.every": "0", "checkpoint.every": "0"}
    values |= {"estimator": "user_estimators:Centred"}
    fresh = resolve({k: v for k, v in values.items() if k != "output_dir"})
    assert fresh.estimator.name == "user_estimators.Centred"
    assert default_output_dir(fresh).startswith("runs/fr_en-user_estimators.Centred-s0-")

    assert main(["run", *(f"{k}={v}" for k, v in values.items())]) == 0
    out = tmp_path / "run"
    saved = json.loads((out / "config.json").read_text())
    assert saved["estimator"] == "user_estimators:Centred"  # the import string, resolvable
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    params = MlflowClient(values["tracking.uri"]).get_run(run_id).data.params
    assert params["estimator"] == "user_estimators:Centred"

    resumed = resolve(_run_values({"resume": str(out)}))
    assert type(resumed.estimator).__name__ == "Centred"
    assert resumed.to_flat() == saved | {"resume": str(out)}
