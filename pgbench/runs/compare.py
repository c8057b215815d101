"""`pgbench compare`: every estimator x every seed, same budget, tagged with one comparison id.

Each run is an ordinary `pgbench run` (own MLflow run, own directory) tagged
`pgbench.comparison=<id>`. With `compare.use_best=true` each estimator gets the best
params of its sweep study (`<task>-<estimator>`), except the sample budget, which stays the
same for all.
"""

from __future__ import annotations

import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna

from pgbench.config.compose import output_path
from pgbench.config.verbs import CompareArgs, Config, SweepArgs, resolve, run_values
from pgbench.errors import ConfigError
from pgbench.train.tracking import MLflowTracker, check_reachable, write_json

BUDGET = (
    "trainer.steps",
    "trainer.prompts_per_step",
    "rollout.samples_per_prompt",
    "rollout.max_new_tokens",
)


def best_params(config: CompareArgs, estimator: str) -> dict[str, Any]:
    """Best params of the sweep study `<task>-<estimator>`, budget keys removed."""
    from pgbench.sweeps.runner import open_storage, storage_url, study_name

    values = {"task": config.task.name, "estimator": estimator}
    sweep_config = resolve(values | {"sweep.storage": config.sweep.storage}, SweepArgs)
    name = study_name(sweep_config)
    if not config.sweep.storage:  # the default local storages of `pgbench sweep`
        folder = Path(f"runs/sweep-{name}")
        journal = folder / "optuna.journal"
        storage = str(journal) if journal.is_file() else storage_url(sweep_config)
        sweep_config = resolve(values | {"sweep.storage": storage}, SweepArgs)
        if not journal.is_file() and not (folder / "optuna.db").is_file():
            raise ConfigError(
                f"compare.use_best: no sweep study {name} in {folder}; run "
                f"`pgbench sweep task={config.task.name} estimator={estimator}` first"
            )
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(sweep_config))
        params = study.best_trial.params
    except (KeyError, ValueError) as err:
        raise ConfigError(
            f"compare.use_best: study {name} has no completed trial ({err})"
        ) from None
    return {k: v for k, v in params.items() if k not in BUDGET}


def plan(config: CompareArgs) -> tuple[str, list[Config]]:
    """The comparison id and every run's config, all checked before any training."""
    if not config.eval.test:  # the comparison is of test scores: refuse before any training
        raise ConfigError("eval.test=false: compare ranks runs by their test metric; remove it")
    comparison = config.compare.id or f"cmp-{datetime.now():%Y%m%d-%H%M%S}"
    folder = output_path(config, id=comparison)
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"output_dir={folder} already exists; pick another compare.id")
    base = run_values(config)  # the run keys; estimator and seed are set per run
    best = {
        name: best_params(config, name)
        for name in config.estimator_names()
        if config.compare.use_best
    }
    runs = []
    for seed in range(config.seeds):
        for name in config.estimator_names():
            values = (
                base
                | best.get(name, {})
                | {"estimator": name, "seed": seed, "output_dir": str(folder / f"{name}-s{seed}")}
            )
            runs.append(resolve(values))
    return comparison, runs


def run_compare(config: CompareArgs) -> dict[str, Any]:
    """Train every planned run; returns per-run results and per-estimator test means."""
    from pgbench.train.trainer import train

    check_reachable(config.tracking.uri)
    comparison, runs = plan(config)
    results = []
    for run in runs:
        tracker = MLflowTracker(
            run.tracking.uri,
            run.mlflow_experiment,
            run_name=f"{comparison}-{run.estimator.name}-s{run.seed}",
            tags={
                "pgbench.comparison": comparison,
                "pgbench.estimator": run.estimator.name,
                "pgbench.seed": str(run.seed),
            },
        )
        summary = train(run, tracker)
        results.append(
            {
                "estimator": run.estimator.name,
                "seed": run.seed,
                "run_id": summary["run_id"],
                "test": summary["eval_after"],
            }
        )
    means = {}
    for name in config.estimator_names():
        scores = [r["test"][config.task.metric] for r in results if r["estimator"] == name]
        spread = statistics.stdev(scores) if len(scores) > 1 else float("nan")
        means[name] = {"mean": statistics.mean(scores), "std": spread, "n": len(scores)}
    outcome = {
        "comparison": comparison,
        "metric": config.task.metric,
        "runs": results,
        "test": means,
        "output_dir": str(Path(runs[0].output_dir).parent),
    }
    write_json(Path(outcome["output_dir"]) / "comparison.json", outcome)
    return outcome
