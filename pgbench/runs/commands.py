"""What each verb does once its keys are parsed: the functions `pgbench <verb>` calls.

Each takes the verb's `key=value` overrides, resolves its configuration (pgbench.config.verbs),
runs it and prints the outcome; it returns the exit code. Heavy imports stay in the functions,
so `pgbench --help` starts fast.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from pgbench.config.compose import output_path
from pgbench.config.urls import URL_KEYS, restore
from pgbench.config.verbs import (
    BuildTinyArgs,
    CompareArgs,
    Config,
    EvalArgs,
    ReportArgs,
    SweepArgs,
    VarianceArgs,
    resolve,
)
from pgbench.errors import ConfigError, DataError

T = TypeVar("T")


def _metrics_table(before: dict[str, float], after: dict[str, float]) -> str:
    lines = [f"{'test metric':<12}{'before':>10}{'after':>10}{'change':>10}"]
    for name in sorted(after):
        old, new = before.get(name, float("nan")), after[name]
        lines.append(f"{name:<12}{old:>10.2f}{new:>10.2f}{new - old:>+10.2f}")
    return "\n".join(lines)


def _run_values(overrides: dict[str, str]) -> dict[str, Any]:
    """Overrides, or for `resume=<dir>` the run's saved configuration.

    `resume=auto` continues the newest unfinished run with the same configuration, or starts
    a new run when there is none. A URL key (tracking.uri) may be given again with its
    password, which the saved config.json never holds.
    """
    if "resume" not in overrides:
        return overrides
    if overrides["resume"] == "auto":
        from pgbench.train.rundir import unfinished_run_like

        fresh = {k: v for k, v in overrides.items() if k != "resume"}
        found = unfinished_run_like(resolve(fresh))
        if found is None:
            print("resume=auto: no unfinished run with this configuration; starting a new one")
            return fresh
        print(f"resume=auto: continuing {found}")
        overrides = {"resume": str(found)} | {k: v for k, v in fresh.items() if k in URL_KEYS}
    run_dir = Path(overrides["resume"])
    saved = run_dir / "config.json"
    if not saved.is_file():
        raise DataError(f"resume={run_dir}: no pgbench run there ({saved} is missing)")
    extra = sorted(set(overrides) - {"resume", *URL_KEYS})
    if extra:
        raise ConfigError(
            f"resume={run_dir} continues with its saved config.json; drop {', '.join(extra)}"
        )
    from pgbench.train.rundir import saved_run_values

    values = saved_run_values(json.loads(saved.read_text()))
    for key in set(values) & set(URL_KEYS):  # saved without their passwords
        values[key] = restore(key, values[key], overrides.get(key), str(saved))
    return values | {"resume": str(run_dir), "output_dir": str(run_dir)}


def _configure(values: dict[str, Any], args: type[T]) -> T:
    """Resolve and check the verb's configuration, then set this process's torch threads."""
    from pgbench.hardware import use_threads

    config = resolve(values, args)
    use_threads(config.threads)
    return config


def run(overrides: dict[str, str]) -> int:
    """Train one policy with one estimator, tracked in MLflow."""
    from pgbench import parallel
    from pgbench.train.tracking import check_reachable
    from pgbench.train.trainer import train

    config = _configure(_run_values(overrides), Config)
    check_reachable(config.tracking.uri)
    config.task.check_reward()  # a missing reward model fails now, not after the bootstrap
    summary = train(config)
    processes = parallel.current(config.device)
    processes.close()
    if not processes.main:  # `accelerate launch`: one report, not N
        return 0
    print(f"\nrun {summary['run_id']} in {summary['output_dir']} ({summary['steps']} steps)")
    print(_metrics_table(summary["eval_before"], summary["eval_after"]))
    return 0


def evaluate_policy(overrides: dict[str, str]) -> int:
    """Score a policy (tiny, a run directory, or a model path) on the task's test split."""
    from pgbench.config.sections import LoraConfig
    from pgbench.engine.evaluate import evaluate
    from pgbench.hardware import pick_device
    from pgbench.models.policy import load_policy
    from pgbench.models.resolve import resolve_model
    from pgbench.train.tracking import write_json

    config = _configure(overrides, EvalArgs)
    config.task.check_reward()  # the embed metric's model loads before any decoding
    out = output_path(config)
    test = config.task.splits().test
    source = resolve_model(config.model, config.task, config.cache_dir)
    policy = load_policy(source, LoraConfig(), pick_device(config.device))  # no new adapters
    metrics, _ = evaluate(
        policy.model,
        policy.tokenizer,
        config.task,
        test,
        config.eval.max_new_tokens,
        config.eval.batch_size,
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", metrics | {"model_path": source, "examples": len(test)})
    for name, value in sorted(metrics.items()):
        print(f"{name:<8}{value:>8.2f}")
    print(f"wrote {out / 'eval.json'}")
    return 0


def build_tiny(overrides: dict[str, str]) -> int:
    """Build the task's tiny policy (or take it from the cache), measure it on the valid and
    test splits, and write it with its manifest (pgbench.models.shipped)."""
    from pgbench.config.sections import LoraConfig
    from pgbench.engine.evaluate import evaluate
    from pgbench.hardware import describe, pick_device
    from pgbench.models.policy import load_policy
    from pgbench.models.shipped import check_free, write_policy
    from pgbench.models.tiny import FORMAT, tiny_policy_dir

    config = _configure(overrides, BuildTinyArgs)
    task, settings = config.task, config.eval
    task.check_reward()
    out = output_path(config, task=task.name)
    check_free(out)  # before minutes of training
    source = tiny_policy_dir(task, Path(config.cache_dir).expanduser())
    policy = load_policy(str(source), LoraConfig(), pick_device(config.device))
    splits, metrics = task.splits(), {}
    for split, examples in (("valid", splits.valid[: settings.size]), ("test", splits.test)):
        scores, texts = evaluate(
            policy.model,
            policy.tokenizer,
            task,
            examples,
            settings.max_new_tokens,
            settings.batch_size,
        )
        metrics[split] = scores
    facts = {"task": task.name, "format": FORMAT, "cache_key": source.name.rpartition("-")[2]}
    facts["eval"] = dataclasses.asdict(settings) | describe(policy.model.device)
    facts["metrics"] = metrics
    facts["test_completions"] = texts[:4]  # greedy: the same on every load (tested)
    manifest = write_policy(source, out, facts)
    for split, scores in metrics.items():
        print(f"{split:<6}" + "  ".join(f"{k} {v:.2f}" for k, v in sorted(scores.items())))
    print(f"wrote {out} (weights sha256 {manifest['sha256'][:16]}); use it with model={out}")
    return 0


def variance(overrides: dict[str, str]) -> int:
    """Gradient variance of each estimator on the same rollouts of a fixed policy."""
    from pgbench.runs.variance import run_variance

    config = _configure(overrides, VarianceArgs)
    config.task.check_reward()
    table, path = run_variance(config)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {path}")
    return 0


def sweep(overrides: dict[str, str]) -> int:
    """Tune one estimator with Optuna; each trial is a nested MLflow run."""
    from pgbench.sweeps.runner import run_sweep

    config = resolve(overrides, SweepArgs)
    config.task.check_reward()
    if config.sweep.launcher == "slurm":
        from pgbench.sweeps.launch import launch_sweep

        result = launch_sweep(config)
        if result is None:  # submitted, not waited for
            return 0
    else:
        result = run_sweep(config)
    counts = ", ".join(f"{n} {state.lower()}" for state, n in result["trials"].items())
    print(f"\nstudy {result['study']} in {result['storage']}: {counts}")
    if "best_params" in result:
        print(f"best valid score {result['best_value']:.2f} (trial {result['best_trial']}):")
        for key, value in result["best_params"].items():
            print(f"  {key} = {value}")
        print(f"re-run it with:\n  {result['command']}")
    return 0


def compare(overrides: dict[str, str]) -> int:
    """Train every estimator for every seed with the same budget, under one comparison id."""
    from pgbench.runs.compare import run_compare

    config = _configure(overrides, CompareArgs)
    config.task.check_reward()
    outcome = run_compare(config)
    metric = outcome["metric"]
    print(f"\ncomparison {outcome['comparison']} ({outcome['output_dir']}/comparison.json)")
    print(f"{'estimator':<14}{'test ' + metric:>12}{'std':>8}{'seeds':>7}")
    for name, row in outcome["test"].items():
        print(f"{name:<14}{row['mean']:>12.2f}{row['std']:>8.2f}{row['n']:>7}")
    print(f"MLflow runs: tags.\"pgbench.comparison\" = '{outcome['comparison']}'")
    return 0


def suite(overrides: dict[str, str]) -> int:
    """Tasks x estimators x seeds at fixed budgets (a protocol), resumable, in parallel."""
    from pgbench.runs.suite import plan_suite, run_suite

    plan = plan_suite(overrides)
    if plan.launcher == "slurm":
        from pgbench.runs.launch import launch_suite

        outcome = launch_suite(plan)
        if outcome is None:  # submitted, not waited for
            return 0
    else:
        outcome = run_suite(plan)
    print(f"\nsuite {outcome['id']}: {outcome['runs']} runs finished in {outcome['out']}")
    if outcome["missing"]:
        print(f"missing (rerun to retry): {', '.join(outcome['missing'])}")
    if outcome["failed"]:
        print(f"given up (failed suite.max_attempts times): {', '.join(outcome['failed'])}")
    if outcome["leaderboard"] is not None:
        board = outcome["leaderboard"][["task", "estimator", "n", "mean", "iqm", "rank"]]
        print(board.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"report: {outcome['out']}/suite.md (and .html, leaderboard/pairs/findings .csv)")
    print(f"MLflow runs: tags.\"pgbench.suite\" = '{outcome['id']}'")
    return 0 if not (outcome["missing"] or outcome["failed"]) else 1


def report(overrides: dict[str, str]) -> int:
    """Tables and figures of a comparison (or an experiment) from MLflow."""
    from pgbench.reports.build import build_report

    config = resolve(overrides, ReportArgs)  # checks: exactly one of comparison, experiment
    name = config.comparison or config.experiment
    out = Path(config.report.out or f"reports_out/{name}")
    result = build_report(config.tracking.uri, config.comparison, config.experiment, out)
    print(f"report of {result['runs']} runs: {out}/report.md, report.html")
    print(f"tables: {out}/runs.csv, leaderboard.csv, pairs.csv")
    if not result["intervals"]:
        print("one seed per estimator: confidence intervals are unavailable")
    return 0


def sync_run(overrides: dict[str, str]) -> int:
    """Upload what a run buffered while its MLflow server was unreachable."""
    from pgbench.train.tracking import sync

    if "run_dir" not in overrides or set(overrides) - {"run_dir", "tracking.uri"}:
        raise ConfigError(
            "usage: pgbench sync <run dir> [tracking.uri=URL] (a directory written by pgbench "
            "run; tracking.uri again if its saved one had a password)"
        )
    run_dir = Path(overrides["run_dir"])
    count = sync(run_dir, overrides.get("tracking.uri"))
    print(f"uploaded {count} buffered records of {run_dir}" if count else "nothing to sync")
    return 0
