import json

import pytest
from mlflow import MlflowClient

from pgbench.cli import main
from pgbench.config.verbs import CompareArgs, SweepArgs, resolve
from pgbench.errors import ConfigError
from pgbench.runs.compare import plan
from pgbench.sweeps.runner import run_sweep


def fast(run_overrides, tmp_path):
    values = run_overrides | {"trainer.steps": "2", "eval.every": "0"}
    values.pop("output_dir")
    return values


def test_compare_trains_every_estimator_and_seed_with_one_tag(
    run_overrides, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    args = [f"{k}={v}" for k, v in fast(run_overrides, tmp_path).items()]
    code = main(["compare", *args, "estimators=reinforce,rloo", "seeds=2", "compare.id=cmp-t"])
    assert code == 0
    out = capsys.readouterr().out
    assert "comparison cmp-t" in out and "reinforce" in out
    outcome = json.loads((tmp_path / "runs/cmp-t/comparison.json").read_text())
    assert [(r["estimator"], r["seed"]) for r in outcome["runs"]] == [
        ("reinforce", 0),
        ("rloo", 0),
        ("reinforce", 1),
        ("rloo", 1),
    ]
    client = MlflowClient(run_overrides["tracking.uri"])
    experiment = client.get_experiment_by_name("fr_en")
    runs = client.search_runs([experiment.experiment_id], "tags.`pgbench.comparison` = 'cmp-t'")
    assert len(runs) == 4
    # same budget for every run; only estimator and seed differ
    params = [r.data.params for r in runs]
    for key in ("trainer.steps", "rollout.samples_per_prompt", "trainer.prompts_per_step"):
        assert len({p[key] for p in params}) == 1
    chrf = [r["test"]["chrf"] for r in outcome["runs"] if r["estimator"] == "rloo"]
    assert outcome["test"]["rloo"]["mean"] == pytest.approx(sum(chrf) / 2)


def test_use_best_takes_sweep_params_except_budget(run_overrides, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = fast(run_overrides, tmp_path)
    sweep = run_sweep(
        resolve(
            values | {"estimator": "rloo", "sweep.n_trials": "2", "sweep.pruner": "none"},
            SweepArgs,
        )
    )
    _, runs = plan(
        resolve(
            values | {"estimators": "rloo", "seeds": "1", "compare.use_best": "true"},
            CompareArgs,
        )
    )
    assert runs[0].trainer.lr == pytest.approx(sweep["best_params"]["trainer.lr"])
    assert runs[0].kl.coef == pytest.approx(sweep["best_params"]["kl.coef"])
    with pytest.raises(ConfigError, match="no sweep study fr_en-grpo.*pgbench sweep"):
        plan(resolve(values | {"estimators": "grpo", "compare.use_best": "true"}, CompareArgs))


def test_eval_test_false_is_refused_before_any_run(run_overrides, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = resolve(fast(run_overrides, tmp_path) | {"eval.test": "false"}, CompareArgs)
    with pytest.raises(ConfigError, match=r"^eval.test=false: compare ranks runs by their test"):
        plan(config)
    assert not (tmp_path / "runs").exists()
