"""Each verb's configuration: one line of VERBS names the keys it takes and what it checks.

`resolve(parse_overrides(["estimator=rloo", "trainer.lr=1e-5"]))` returns a checked `Config`,
what `pgbench run` trains with; `resolve(values, SweepArgs)` the configuration of
`pgbench sweep`, and so on for every verb. Each class is a frozen dataclass made from its line
(pgbench.config.compose), of the knobs and sections declared once in pgbench.config.sections,
so `--help`, validation and the accepted keys all come from the table.

Resolution is final: nothing is assigned afterwards (the task's reward models are configured
from `reward.*` while resolving; a new run's default output_dir is a `dataclasses.replace` copy).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any, TypeVar

import torch

from pgbench import estimators, hardware
from pgbench.config.compose import Resolved, Row, Verb, accepts, arguments, rows, verb_class
from pgbench.config.urls import check_shared
from pgbench.errors import ConfigError

T = TypeVar("T")


def _check_training(config: Any) -> None:
    """Rules of a training run that involve more than one key."""
    loss = config.loss
    _check_samples(config, [config.estimator.name], " for estimator={}")
    if 0 < loss.dual_clip <= 1:
        raise ConfigError(
            f"loss.dual_clip must be 0 (off) or a constant c > 1 (got {loss.dual_clip})"
        )
    if loss.dual_clip and loss.policy not in ("ppo_clip", "clip_cov"):
        raise ConfigError(
            f"loss.dual_clip applies to loss.policy=ppo_clip or clip_cov only (got loss.policy="
            f"{loss.policy}); set loss.dual_clip=0"
        )
    if loss.rollout_correction != "none" and config.rollout.staleness == 0:
        raise ConfigError(
            f"loss.rollout_correction={loss.rollout_correction} corrects stale rollouts, and "
            "rollout.staleness=0 samples with the trained policy itself; set "
            "rollout.staleness >= 1 or loss.rollout_correction=none"
        )
    if config.engine.backend == "vllm":
        _check_vllm(config)
    if config.trainer.precision == "bf16":
        hardware.check_bf16(config.device)


def _check_vllm(config: Any) -> None:
    """engine.backend=vllm needs a single-turn task, the vllm package and a CUDA device."""
    if config.task.tools() is not None:
        raise ConfigError(
            f"engine.backend=vllm does not run multi-turn tool episodes (task={config.task.name}); "
            "use engine.backend=hf"
        )
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "engine.backend=vllm needs vLLM: pip install 'pgbench[vllm]' (on a CUDA machine)"
        )
    if config.device == "cpu" or not torch.cuda.is_available():
        raise ConfigError("engine.backend=vllm needs a CUDA GPU; use engine.backend=hf on CPU")


def _check_slurm(config: Any) -> None:
    """With `sweep.launcher=slurm` (or suite's): servers every node reaches, and sbatch flags
    that parse (a malformed flag fails now, not at submission)."""
    verb = "suite" if hasattr(config, "suite") else "sweep"
    settings = getattr(config, verb)
    if settings.launcher == "slurm":
        check_shared(verb, settings.storage, config.tracking.uri)
        config.slurm.sbatch_flags()


def _check_samples(config: Any, names: list[str], reason: str) -> None:
    """rollout.samples_per_prompt is enough for each estimator of `names` (registered names;
    `reason` says why, `{}` standing for the name)."""
    for name in names:
        needed = estimators.REGISTRY.get_class(name).min_samples_per_prompt
        if config.rollout.samples_per_prompt < needed:
            raise ConfigError(
                f"rollout.samples_per_prompt must be >= {needed}{reason.format(name)} "
                f"(got {config.rollout.samples_per_prompt})"
            )


def _check_estimators(config: Any) -> None:
    _check_samples(config, config.estimator_names(), " for estimators={}")


def _check_variance(config: Any) -> None:
    if config.rollout.staleness:
        raise ConfigError(
            "rollout.staleness does not apply to pgbench variance: it measures batches of "
            "the starting policy, which every earlier policy equals; set rollout.staleness=0"
        )
    _check_samples(config, ["rloo"], ": the reference gradient is RLOO's")


def _check_eval(config: Any) -> None:
    if not config.eval.test:
        raise ConfigError(
            "eval.test=false does not apply to pgbench eval: it scores the test split"
        )


def _check_report(config: Any) -> None:
    if bool(config.comparison) == bool(config.experiment):
        raise ConfigError("give exactly one of comparison=<id> or experiment=<name>")


MACHINE = "cache_dir device threads"
TRAINING = "trainer rollout engine kl loss lora eval reward checkpoint tracking"
VERBS: dict[str, Verb] = {
    "run": Verb(
        "Config",
        "train one policy with one estimator",
        f"task estimator model seed output_dir resume {MACHINE} {TRAINING}",
        "runs/<task>-<estimator>-s<seed>-<time>",
        (_check_training,),
    ),
    "sweep": Verb(
        "SweepArgs",
        "tune one estimator with Optuna (resumable, parallel)",
        f"task estimator model seed output_dir {MACHINE} {TRAINING} sweep slurm",
        "runs/sweep-<study>",
        (_check_training, _check_slurm),
    ),
    "compare": Verb(
        "CompareArgs",
        "every estimator x every seed at one budget",
        f"task model output_dir {MACHINE} estimators seeds {TRAINING} compare sweep",
        "runs/<id>",
        (_check_estimators,),
    ),
    "suite": Verb(
        "SuiteArgs",
        "tasks x estimators x seeds of a protocol, tuned first if its [tune] table says so "
        "(suite=cpu|cpu_offpolicy|gpu|file.toml)",
        f"task.* model output_dir {MACHINE} estimators seeds {TRAINING} suite slurm variance",
        "runs/suite-<id>",
        (_check_estimators, _check_slurm),
    ),
    "report": Verb(
        "ReportArgs",
        "tables and figures of a comparison from MLflow",
        "comparison experiment report tracking",
        checks=(_check_report,),
    ),
    "variance": Verb(
        "VarianceArgs",
        "gradient variance of each estimator on the same rollouts",
        f"task model seed output_dir {MACHINE} estimators trainer rollout loss lora reward "
        "tracking variance",
        "runs/variance-<time>",
        (_check_estimators, _check_variance),
    ),
    "eval": Verb(
        "EvalArgs",
        "score a policy on a test split (chrF, BLEU, embed)",
        f"task model seed output_dir {MACHINE} eval reward",
        "runs/eval-<time>",
        (_check_eval,),
    ),
    "build-tiny": Verb(
        "BuildTinyArgs",
        "build a task's tiny policy and write it with its manifest",
        f"task output_dir {MACHINE} eval reward",
        "tiny-<task>",
    ),
}
VERB_ARGS: dict[str, type] = {name: verb_class(spec) for name, spec in VERBS.items()}
# each class under the name its Verb gives it, in the table's order
Config, SweepArgs, CompareArgs, SuiteArgs, ReportArgs, VarianceArgs, EvalArgs, BuildTinyArgs = (
    VERB_ARGS.values()
)


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`["a=1", "b.c=x"]` -> `{"a": "1", "b.c": "x"}`, rejecting malformed or repeated keys."""
    overrides: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {arg!r} (see --help for the keys)")
        if key in overrides:
            raise ConfigError(f"key {key} is given twice")
        overrides[key] = value
    return overrides


def help_rows(verb: type = Config, task: str = "fr_en", estimator: str = "rloo") -> list[Row]:
    """(key, type, default, help) for every key of `verb`, with this task's and estimator's."""
    return rows(verb, {"task": task, "estimator": estimator})


def all_keys(verb: type = Config, task: str = "fr_en", estimator: str = "rloo") -> list[str]:
    """Every key `verb` accepts with this task and estimator."""
    return [row[0] for row in help_rows(verb, task, estimator)]


def resolve(values: Mapping[str, Any], verb: type[T] = Config) -> T:
    """Build and check the configuration of `verb` from key -> value (text from the command
    line, or typed values); `Config` (`pgbench run`) unless another of VERB_ARGS is given.

    The task's reward models are set up here, from the `reward.*` keys, before the dataclass
    is built (Task.configure_reward: the task object takes them after construction).
    """
    kwargs = arguments(verb, values, VERB_ARGS.values())
    task, reward = kwargs.get("task"), kwargs.get("reward")
    if task is not None and reward is not None:
        device = kwargs.get("device", "auto") if reward.device == "auto" else reward.device
        task.configure_reward(reward.model, device, reward.batch_size)
    return verb(**kwargs)


def run_values(config: Resolved) -> dict[str, Any]:
    """The keys of any verb's configuration that a training run (Config) takes, with their
    values, output_dir and resume excluded."""
    flat = config.to_flat()
    return {
        k: v for k, v in flat.items() if accepts(Config, k) and k not in ("output_dir", "resume")
    }
