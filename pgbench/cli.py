"""Command line: `pgbench <verb> key=value ...`; `pgbench <verb> --help` lists every key."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pgbench import __version__
from pgbench.config.compose import output_path
from pgbench.config.urls import URL_KEYS, redact, restore
from pgbench.config.verbs import (
    BuildTinyArgs,
    CompareArgs,
    Config,
    EvalArgs,
    ReportArgs,
    SuiteArgs,
    SweepArgs,
    VarianceArgs,
    help_rows,
    parse_overrides,
    resolve,
)
from pgbench.errors import ConfigError, DataError, PgbenchError

T = TypeVar("T")


@dataclass(frozen=True)
class Verb:
    summary: str
    handler: Callable[[dict[str, str]], int]
    args: type | None  # the dataclass whose fields are the keys it accepts (None: a run dir)


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

    config = _configure(overrides, VarianceArgs)  # output_dir: runs/variance-<time> if empty
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
    if outcome["leaderboard"] is not None:
        board = outcome["leaderboard"][["task", "estimator", "n", "mean", "iqm", "rank"]]
        print(board.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"report: {outcome['out']}/suite.md (and .html, leaderboard/pairs/findings .csv)")
    print(f"MLflow runs: tags.\"pgbench.suite\" = '{outcome['id']}'")
    return 0 if not outcome["missing"] else 1


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


VERBS: dict[str, Verb] = {
    "run": Verb("train one policy with one estimator", run, Config),
    "sweep": Verb("tune one estimator with Optuna (resumable, parallel)", sweep, SweepArgs),
    "compare": Verb("every estimator x every seed at one budget", compare, CompareArgs),
    "suite": Verb(
        "tasks x estimators x seeds of a protocol, tuned first if its [tune] table says so "
        "(suite=cpu|cpu_offpolicy|gpu|file.toml)",
        suite,
        SuiteArgs,
    ),
    "report": Verb("tables and figures of a comparison from MLflow", report, ReportArgs),
    "variance": Verb(
        "gradient variance of each estimator on the same rollouts", variance, VarianceArgs
    ),
    "eval": Verb("score a policy on a test split (chrF, BLEU, embed)", evaluate_policy, EvalArgs),
    "build-tiny": Verb(
        "build a task's tiny policy and write it with its manifest", build_tiny, BuildTinyArgs
    ),
    "sync": Verb("upload a run's metrics buffered during an MLflow outage", sync_run, None),
}


def usage() -> str:
    width = max(len(name) for name in VERBS) + 2
    verbs = "\n".join(f"  {name:<{width}}{verb.summary}" for name, verb in VERBS.items())
    return (
        f"pgbench {__version__}: compare policy-gradient estimators for language models\n\n"
        f"usage: pgbench <verb> [key=value ...]\n\nverbs:\n{verbs}\n\n"
        "`pgbench <verb> --help` lists every key with its type and default."
    )


def verb_help(name: str, overrides: dict[str, str]) -> str:
    """Help of one verb: every key it accepts, for the selected task and estimator."""
    verb = VERBS[name]
    if verb.args is None:
        return f"usage: pgbench {name} <run dir> [tracking.uri=URL]\n\n{verb.summary}."
    task, estimator = overrides.get("task", "fr_en"), overrides.get("estimator", "rloo")
    rows = help_rows(verb.args, task, estimator)
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"usage: pgbench {name} [key=value ...]\n\n{verb.summary}.\n\nkeys (type, default):"]
    for key, type_name, default, text in rows:
        lines.append(f"  {key:<{width}}{text}  [{type_name}, default {default}]")
    if name == "suite":
        lines.append(
            "\nShort forms: suite=NAME is suite.protocol=NAME, tasks=... is suite.tasks=..."
            "\nA protocol file may add [variant.NAME] columns: an estimator with its own keys."
            "\ntask.* keys (listed for task fr_en) apply to the runs of every task."
        )
    lines.append(
        "\nTask and estimator keys depend on the selection: "
        "`pgbench run estimator=reinforce --help` shows estimator.baseline."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pgbench` console script; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] == "--version":
        print(__version__)
        return 0
    name, rest = args[0], args[1:]
    if name == "sync" and rest and "=" not in rest[0] and not rest[0].startswith("-"):
        rest = [f"run_dir={rest[0]}", *rest[1:]]  # `pgbench sync <run dir>`
    # a new local MLflow store announces its tables at INFO level: not news to a user
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    # MLflow retries an unreachable server for minutes by default; a run buffers instead.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    if name not in VERBS:
        print(f"pgbench: unknown verb {name!r}; valid: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    try:
        wants_help = any(a in ("-h", "--help") for a in rest)
        overrides = parse_overrides([a for a in rest if a not in ("-h", "--help")])
        if wants_help:
            print(verb_help(name, overrides))
            return 0
        return VERBS[name].handler(overrides)
    except PgbenchError as err:
        print(f"pgbench {name}: error: {redact(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pgbench {name}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a library's message may quote a URL: its traceback without passwords
        print(redact(traceback.format_exc()), end="", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
