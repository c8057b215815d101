"""Each verb's configuration: a frozen dataclass written here, listed in VERB_ARGS.

`resolve(parse_overrides(["estimator=rloo", "trainer.lr=1e-5"]))` returns a checked `Config`,
what `pgbench run` trains with; `resolve(values, SweepArgs)` the configuration of
`pgbench sweep`, and so on for every verb. A class's fields are the knobs, components and
sections it takes (pgbench.config.compose: `top`, `component`, `section`), each declared once in
pgbench.config.sections, so `--help`, validation and the accepted keys come from the class; its
`spec` gives its summary, where it writes and the rules that involve several keys.

Resolution is final: nothing is assigned afterwards (the task's reward models are configured
from `reward.*` while resolving; a new run's default output_dir is a `dataclasses.replace` copy).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

from pgbench.config.compose import (
    Resolved,
    Row,
    Verb,
    accepts,
    arguments,
    check_early,
    component,
    rows,
    section,
    top,
)
from pgbench.config.compose import (
    parse_overrides as parse_overrides,  # re-exported: read `key=value`s
)
from pgbench.config.sections import (
    CheckpointConfig,
    CompareConfig,
    Device,
    EngineConfig,
    EvalConfig,
    KLConfig,
    LoraConfig,
    LossConfig,
    ReportConfig,
    RewardConfig,
    RolloutConfig,
    SlurmConfig,
    SuiteConfig,
    SweepConfig,
    TrackingConfig,
    TrainerConfig,
    VarianceConfig,
)
from pgbench.config.urls import check_shared
from pgbench.errors import ConfigError
from pgbench.estimators import CATALOG as ESTIMATORS
from pgbench.tasks import Task

if TYPE_CHECKING:
    from pgbench.estimators.base import Estimator
else:  # its module imports torch: the class is imported when a configuration builds one
    Estimator = Any

R = TypeVar("R", bound=Resolved)


def _check_training(config: Config | SweepArgs) -> None:
    """Rules of a training run that involve more than one key."""
    loss = config.loss
    _check_samples(config, [type(config.estimator)], " for estimator={}")
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
        from pgbench import hardware  # torch: only for the runs that ask for bf16

        hardware.check_bf16(config.device)


def _check_vllm(config: Config | SweepArgs) -> None:
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
    import torch

    if config.device == "cpu" or not torch.cuda.is_available():
        raise ConfigError("engine.backend=vllm needs a CUDA GPU; use engine.backend=hf on CPU")


def _check_slurm(config: SweepArgs | SuiteArgs) -> None:
    """With `sweep.launcher=slurm` (or suite's): servers every node reaches, and sbatch flags
    that parse (a malformed flag fails now, not at submission)."""
    verb, settings = (
        ("suite", config.suite) if isinstance(config, SuiteArgs) else ("sweep", config.sweep)
    )
    if settings.launcher == "slurm":
        check_shared(verb, settings.storage, config.tracking.uri)
        config.slurm.sbatch_flags()


def _check_samples(config: Training | VarianceArgs, names: list[Any], reason: str) -> None:
    """rollout.samples_per_prompt is enough for each estimator of `names` (names as
    `estimator=` takes them, or classes; `reason` says why, `{}` standing for the name)."""
    for name in names:
        cls: Any = name if isinstance(name, type) else ESTIMATORS.get_class(name)
        needed = cls.min_samples_per_prompt
        if config.rollout.samples_per_prompt < needed:
            raise ConfigError(
                f"rollout.samples_per_prompt must be >= {needed}{reason.format(cls.name)} "
                f"(got {config.rollout.samples_per_prompt})"
            )


def _check_estimators(config: CompareArgs | SuiteArgs | VarianceArgs) -> None:
    _check_samples(config, config.estimator_names(), " for estimators={}")


def _check_variance(config: VarianceArgs) -> None:
    if config.rollout.staleness:
        raise ConfigError(
            "rollout.staleness does not apply to pgbench variance: it measures batches of "
            "the starting policy, which every earlier policy equals; set rollout.staleness=0"
        )
    _check_samples(config, ["rloo"], ": the reference gradient is RLOO's")


def _check_eval(config: EvalArgs) -> None:
    if not config.eval.test:
        raise ConfigError(
            "eval.test=false does not apply to pgbench eval: it scores the test split"
        )


def _check_report(config: ReportArgs) -> None:
    if bool(config.comparison) == bool(config.experiment):
        raise ConfigError("give exactly one of comparison=<id> or experiment=<name>")


class Listed:
    """What a verb over several estimators (`estimators=rloo,grpo`) adds."""

    estimators: str

    def estimator_names(self) -> list[str]:
        """The names listed in `estimators=`."""
        return [name.strip() for name in self.estimators.split(",") if name.strip()]


@dataclass(frozen=True, kw_only=True)
class Training(Resolved):
    """The sections of a training run: what run, sweep, compare and suite share."""

    trainer: TrainerConfig = section(TrainerConfig)
    rollout: RolloutConfig = section(RolloutConfig)
    engine: EngineConfig = section(EngineConfig)
    kl: KLConfig = section(KLConfig)
    loss: LossConfig = section(LossConfig)
    lora: LoraConfig = section(LoraConfig)
    eval: EvalConfig = section(EvalConfig)
    reward: RewardConfig = section(RewardConfig)
    checkpoint: CheckpointConfig = section(CheckpointConfig)
    tracking: TrackingConfig = section(TrackingConfig)


@dataclass(frozen=True, kw_only=True)
class Config(Training):
    """`pgbench run`: what one training run trains with."""

    spec = Verb(
        "train one policy with one estimator",
        "runs/<task>-<estimator>-s<seed>-<time>",
        (_check_training,),
    )
    task: Task = component()
    estimator: Estimator = component()
    model: str = top("model")
    seed: int = top("seed")
    output_dir: str = top("output_dir")
    resume: str = top("resume")
    cache_dir: str = top("cache_dir")
    device: Device = top("device")
    threads: int = top("threads")

    @property
    def mlflow_experiment(self) -> str:
        """Experiment that training runs log to: tracking.experiment, else the task name."""
        return self.tracking.experiment or self.task.name


@dataclass(frozen=True, kw_only=True)
class SweepArgs(Training):
    """`pgbench sweep`: one estimator tuned with Optuna."""

    spec = Verb(
        "tune one estimator with Optuna (resumable, parallel)",
        "runs/sweep-<study>",
        (_check_training, _check_slurm),
    )
    task: Task = component()
    estimator: Estimator = component()
    model: str = top("model")
    seed: int = top("seed")
    output_dir: str = top("output_dir")
    cache_dir: str = top("cache_dir")
    device: Device = top("device")
    threads: int = top("threads")
    sweep: SweepConfig = section(SweepConfig)
    slurm: SlurmConfig = section(SlurmConfig)

    @property
    def mlflow_experiment(self) -> str:
        """Experiment that training runs log to: tracking.experiment, else the task name."""
        return self.tracking.experiment or self.task.name


@dataclass(frozen=True, kw_only=True)
class CompareArgs(Listed, Training):
    """`pgbench compare`: every estimator x every seed at one budget."""

    spec = Verb("every estimator x every seed at one budget", "runs/<id>", (_check_estimators,))
    task: Task = component()
    model: str = top("model")
    output_dir: str = top("output_dir")
    cache_dir: str = top("cache_dir")
    device: Device = top("device")
    threads: int = top("threads")
    estimators: str = top("estimators")
    seeds: int = top("seeds")
    compare: CompareConfig = section(CompareConfig)
    sweep: SweepConfig = section(SweepConfig)


@dataclass(frozen=True, kw_only=True)
class SuiteArgs(Listed, Training):
    """`pgbench suite`: the tasks x estimators x seeds of a protocol."""

    spec = Verb(
        "tasks x estimators x seeds of a protocol, tuned first if its [tune] table says so "
        "(suite=cpu|cpu_offpolicy|gpu|file.toml)",
        "runs/suite-<id>",
        (_check_estimators, _check_slurm),
    )
    task: Task = component(chosen=False)  # task.* keys apply to every task of the suite
    model: str = top("model")
    output_dir: str = top("output_dir")
    cache_dir: str = top("cache_dir")
    device: Device = top("device")
    threads: int = top("threads")
    estimators: str = top("estimators")
    seeds: int = top("seeds")
    suite: SuiteConfig = section(SuiteConfig)
    slurm: SlurmConfig = section(SlurmConfig)
    variance: VarianceConfig = section(VarianceConfig)


@dataclass(frozen=True, kw_only=True)
class ReportArgs(Resolved):
    """`pgbench report`: the tables and figures of a comparison."""

    spec = Verb("tables and figures of a comparison from MLflow", checks=(_check_report,))
    comparison: str = top("comparison")
    experiment: str = top("experiment")
    report: ReportConfig = section(ReportConfig)
    tracking: TrackingConfig = section(TrackingConfig)


@dataclass(frozen=True, kw_only=True)
class VarianceArgs(Listed, Resolved):
    """`pgbench variance`: the gradient variance of each estimator."""

    spec = Verb(
        "gradient variance of each estimator on the same rollouts",
        "runs/variance-<time>",
        (_check_estimators, _check_variance),
    )
    task: Task = component()
    model: str = top("model")
    seed: int = top("seed")
    output_dir: str = top("output_dir")
    cache_dir: str = top("cache_dir")
    device: Device = top("device")
    threads: int = top("threads")
    estimators: str = top("estimators")
    trainer: TrainerConfig = section(TrainerConfig)
    rollout: RolloutConfig = section(RolloutConfig)
    loss: LossConfig = section(LossConfig)
    lora: LoraConfig = section(LoraConfig)
    reward: RewardConfig = section(RewardConfig)
    tracking: TrackingConfig = section(TrackingConfig)
    variance: VarianceConfig = section(VarianceConfig)


@dataclass(frozen=True, kw_only=True)
class EvalArgs(Resolved):
    """`pgbench eval`: a policy scored on a test split."""

    spec = Verb(
        "score a policy on a test split (chrF, BLEU, embed)", "runs/eval-<time>", (_check_eval,)
    )
    task: Task = component()
    model: str = top("model")
    seed: int = top("seed")
    output_dir: str = top("output_dir")
    cache_dir: str = top("cache_dir")
    device: Device = top("device")
    threads: int = top("threads")
    eval: EvalConfig = section(EvalConfig)
    reward: RewardConfig = section(RewardConfig)


@dataclass(frozen=True, kw_only=True)
class BuildTinyArgs(Resolved):
    """`pgbench build-tiny`: a task's tiny policy, built and written with its manifest."""

    spec = Verb("build a task's tiny policy and write it with its manifest", "tiny-<task>")
    task: Task = component()
    output_dir: str = top("output_dir")
    cache_dir: str = top("cache_dir")
    device: Device = top("device")
    threads: int = top("threads")
    eval: EvalConfig = section(EvalConfig)
    reward: RewardConfig = section(RewardConfig)


VERB_ARGS: dict[str, type[Resolved]] = {  # the verbs, in `pgbench --help`'s order
    "run": Config,
    "sweep": SweepArgs,
    "compare": CompareArgs,
    "suite": SuiteArgs,
    "report": ReportArgs,
    "variance": VarianceArgs,
    "eval": EvalArgs,
    "build-tiny": BuildTinyArgs,
}
VERBS: dict[str, Verb] = {name: cls.spec for name, cls in VERB_ARGS.items()}


def help_rows(
    verb: type[Resolved] = Config, task: str = "fr_en", estimator: str = "rloo", model: str = ""
) -> list[Row]:
    """(key, type, default, help) for every key of `verb`, with this task's and estimator's
    (and the task's defaults for `model`, else for its default model)."""
    return rows(verb, {"task": task, "estimator": estimator, "model": model})


def all_keys(
    verb: type[Resolved] = Config, task: str = "fr_en", estimator: str = "rloo"
) -> list[str]:
    """Every key `verb` accepts with this task and estimator."""
    return [row[0] for row in help_rows(verb, task, estimator)]


def check(values: Mapping[str, Any], verb: type[Resolved] = Config) -> None:
    """The ConfigError of an unknown task or estimator name, of an unknown key outside the
    `task.*` and `estimator.*` keys, or of a bad value of a knob or section, found without
    importing torch (resolve raises the same)."""
    check_early(verb, values, VERB_ARGS.values())


@overload
def resolve(values: Mapping[str, Any]) -> Config: ...
@overload
def resolve(values: Mapping[str, Any], verb: type[R]) -> R: ...
def resolve(values: Mapping[str, Any], verb: type[Resolved] = Config) -> Resolved:
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
