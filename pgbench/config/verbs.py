"""Each verb's configuration: a typed dataclass whose fields are the keys the verb accepts.

`resolve(parse_overrides(["estimator=rloo", "trainer.lr=1e-5"]))` returns a checked `Config`,
what `pgbench run` trains with; `resolve(values, SweepArgs)` the configuration of
`pgbench sweep`, and so on for every verb of VERB_ARGS. A verb's dataclass is composed
(pgbench.config.compose) of top-level knobs defined once, the `task` and `estimator` components
(their `task.*` / `estimator.*` keys are the selected class's own fields) and the shared
sections of pgbench.config.sections, so `--help`, validation and the accepted keys all come from it.

Resolution is final: a value derived from others is set while the dataclass is built, and
nothing is assigned afterwards: every verb's dataclass and every section is frozen (a new run's
default output_dir is a `dataclasses.replace` copy, made by the trainer).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from pgbench import estimators, hardware
from pgbench.config.compose import (
    Device,
    Resolved,
    Row,
    accepts,
    arguments,
    component,
    output_dir,
    output_path,
    rows,
    section,
    top,
)
from pgbench.config.sections import (
    CheckpointConfig,
    CompareConfig,
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
from pgbench.config.urls import redact
from pgbench.errors import ConfigError
from pgbench.estimators import Estimator
from pgbench.tasks import Task

T = TypeVar("T")


class _Tracked:
    @property
    def mlflow_experiment(self) -> str:
        """Experiment that training runs log to: tracking.experiment, else the task name."""
        return self.tracking.experiment or self.task.name


class _Many:
    def estimator_names(self) -> list[str]:
        """The names listed in `estimators=`."""
        return [name.strip() for name in self.estimators.split(",") if name.strip()]


@dataclass(frozen=True, kw_only=True)
class _Training(Resolved):
    """The sections of every verb that trains runs (run, sweep, compare, suite)."""

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
class Config(_Training, _Tracked):
    """`pgbench run`: one policy trained with one estimator (and each run of the other verbs)."""

    task: Task = component("task")
    estimator: Estimator = component("estimator")
    model: str = top("model")
    seed: int = top("seed")
    output_dir: str = output_dir("runs/<task>-<estimator>-s<seed>-<time>")
    resume: str = top("resume")
    cache_dir: str = top("cache_dir")
    device: Device = top("device")
    threads: int = top("threads")

    def check(self) -> None:
        _check_training(self)


@dataclass(frozen=True, kw_only=True)
class SweepArgs(_Training, _Tracked):
    """`pgbench sweep`: the run keys of one estimator (no resume) and the study's settings."""

    task: Task = component("task")
    estimator: Estimator = component("estimator")
    model: str = top("model")
    seed: int = top("seed")
    output_dir: str = output_dir("runs/sweep-<study>")
    cache_dir: str = top("cache_dir")
    device: Device = top("device")
    threads: int = top("threads")
    sweep: SweepConfig = section(SweepConfig)
    slurm: SlurmConfig = section(SlurmConfig)

    def check(self) -> None:
        _check_training(self)
        if self.sweep.launcher == "slurm":
            _check_slurm("sweep", self.sweep.storage, self.tracking.uri)
            self.slurm.sbatch_flags()  # a malformed flag fails now, not at submission


@dataclass(frozen=True, kw_only=True)
class CompareArgs(_Training, _Many):
    """`pgbench compare`: the run keys, for `estimators` x `seeds`, and the sweeps' storage."""

    task: Task = component("task")
    model: str = top("model")
    output_dir: str = output_dir("runs/<id>")
    cache_dir: str = top("cache_dir")
    device: Device = top("device")
    threads: int = top("threads")
    estimators: str = top("estimators")
    seeds: int = top("seeds")
    compare: CompareConfig = section(CompareConfig)
    sweep: SweepConfig = section(SweepConfig)

    def check(self) -> None:
        _check_estimators(self.estimator_names(), self.rollout.samples_per_prompt)


@dataclass(frozen=True, kw_only=True)
class SuiteArgs(_Training, _Many):
    """`pgbench suite`: keys of every run (tasks in suite.tasks), the protocol and scheduler."""

    task: Task = component("task", choose=False)
    model: str = top("model")
    output_dir: str = output_dir("runs/suite-<id>")
    cache_dir: str = top("cache_dir")
    device: Device = top("device")
    threads: int = top("threads")
    estimators: str = top("estimators")
    seeds: int = top("seeds")
    suite: SuiteConfig = section(SuiteConfig)
    slurm: SlurmConfig = section(SlurmConfig)
    variance: VarianceConfig = section(VarianceConfig)

    def check(self) -> None:
        _check_estimators(self.estimator_names(), self.rollout.samples_per_prompt)
        if self.suite.launcher == "slurm":
            _check_slurm("suite", self.suite.storage, self.tracking.uri)
            self.slurm.sbatch_flags()  # a malformed flag fails now, not at submission


@dataclass(frozen=True, kw_only=True)
class VarianceArgs(Resolved, _Many):
    """`pgbench variance`: the rollouts' keys, the estimators to measure and how many batches."""

    task: Task = component("task")
    model: str = top("model")
    seed: int = top("seed")
    output_dir: str = output_dir("runs/variance-<time>")
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

    def __post_init__(self) -> None:
        if not self.output_dir:  # fixed while resolving (frozen: the dataclass idiom)
            object.__setattr__(self, "output_dir", str(output_path(self)))
        super().__post_init__()

    def check(self) -> None:
        samples = self.rollout.samples_per_prompt
        _check_estimators(self.estimator_names(), samples)
        if self.rollout.staleness:
            raise ConfigError(
                "rollout.staleness does not apply to pgbench variance: it measures batches of "
                "the starting policy, which every earlier policy equals; set rollout.staleness=0"
            )
        needed = estimators.REGISTRY.get_class("rloo").min_samples_per_prompt
        if samples < needed:
            raise ConfigError(
                f"rollout.samples_per_prompt must be >= {needed}: the reference gradient is "
                f"RLOO's (got {samples})"
            )


@dataclass(frozen=True, kw_only=True)
class EvalArgs(Resolved):
    """`pgbench eval`: a policy scored on the task's test split."""

    task: Task = component("task")
    model: str = top("model")
    seed: int = top("seed")
    output_dir: str = output_dir("runs/eval-<time>")
    cache_dir: str = top("cache_dir")
    device: Device = top("device")
    threads: int = top("threads")
    eval: EvalConfig = section(EvalConfig)
    reward: RewardConfig = section(RewardConfig)

    def check(self) -> None:
        if not self.eval.test:
            raise ConfigError(
                "eval.test=false does not apply to pgbench eval: it scores the test split"
            )


@dataclass(frozen=True, kw_only=True)
class BuildTinyArgs(Resolved):
    """`pgbench build-tiny`: a task's tiny policy built, measured and written with its manifest."""

    task: Task = component("task")
    output_dir: str = output_dir("tiny-<task>")
    cache_dir: str = top("cache_dir")
    device: Device = top("device")
    threads: int = top("threads")
    eval: EvalConfig = section(EvalConfig)
    reward: RewardConfig = section(RewardConfig)


@dataclass(frozen=True, kw_only=True)
class ReportArgs(Resolved):
    """`pgbench report`: tables and figures of one comparison or experiment, from MLflow."""

    comparison: str = top("comparison")
    experiment: str = top("experiment")
    report: ReportConfig = section(ReportConfig)
    tracking: TrackingConfig = section(TrackingConfig)

    def check(self) -> None:
        if bool(self.comparison) == bool(self.experiment):
            raise ConfigError("give exactly one of comparison=<id> or experiment=<name>")


VERB_ARGS: dict[str, type] = {
    "run": Config,
    "sweep": SweepArgs,
    "compare": CompareArgs,
    "suite": SuiteArgs,
    "variance": VarianceArgs,
    "eval": EvalArgs,
    "build-tiny": BuildTinyArgs,
    "report": ReportArgs,
}


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


def _check_estimators(names: list[str], samples: int) -> None:
    """Every name in `estimators=` is registered and gets enough samples per prompt."""
    for name in names:
        needed = estimators.REGISTRY.get_class(name).min_samples_per_prompt
        if samples < needed:
            raise ConfigError(
                f"rollout.samples_per_prompt must be >= {needed} for estimators={name} "
                f"(got {samples})"
            )


def _check_training(config: Config | SweepArgs) -> None:
    """Rules of a training run that involve more than one key."""
    needed = config.estimator.min_samples_per_prompt
    if config.rollout.samples_per_prompt < needed:
        raise ConfigError(
            f"rollout.samples_per_prompt must be >= {needed} for estimator={config.estimator.name} "
            f"(got {config.rollout.samples_per_prompt})"
        )
    if 0 < config.loss.dual_clip <= 1:
        raise ConfigError(
            f"loss.dual_clip must be 0 (off) or a constant c > 1 (got {config.loss.dual_clip})"
        )
    if config.loss.dual_clip and config.loss.policy not in ("ppo_clip", "clip_cov"):
        raise ConfigError(
            f"loss.dual_clip applies to loss.policy=ppo_clip or clip_cov only (got loss.policy="
            f"{config.loss.policy}); set loss.dual_clip=0"
        )
    if config.loss.rollout_correction != "none" and config.rollout.staleness == 0:
        raise ConfigError(
            f"loss.rollout_correction={config.loss.rollout_correction} corrects stale rollouts, "
            "and rollout.staleness=0 samples with the trained policy itself; set "
            "rollout.staleness >= 1 or loss.rollout_correction=none"
        )
    if config.engine.backend == "vllm":
        _check_vllm(config)
    if config.trainer.precision == "bf16":
        _check_bf16(config.device)


def _check_bf16(device_name: str) -> None:
    """bf16 autocast where the device would emulate it is refused (~20x slower than fp32)."""
    cuda = device_name != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if hardware.native_bf16(device):
        return
    if cuda:
        raise ConfigError("trainer.precision=bf16 but this GPU has no bfloat16; use fp32")
    raise ConfigError(
        f"trainer.precision=bf16 but this CPU (torch capability {hardware.cpu_capability()}) "
        "has no native bfloat16, so autocast would be emulated, about 20x slower; "
        "use trainer.precision=fp32"
    )


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
    if config.device == "cpu" or not torch.cuda.is_available():
        raise ConfigError("engine.backend=vllm needs a CUDA GPU; use engine.backend=hf on CPU")


def _check_slurm(verb: str, storage: str, tracking_uri: str) -> None:
    """SLURM workers run on other nodes: the queue and the tracking store must be servers
    (`verb`: suite or sweep, whose `<verb>.launcher` and `<verb>.storage` keys are named)."""
    servers = ("postgresql", "postgres", "mysql", "mariadb")
    local = {"suite": "the local journal file", "sweep": "the local optuna.db or .journal file"}
    if _scheme(storage) not in servers:
        raise ConfigError(
            f"{verb}.launcher=slurm needs {verb}.storage=postgresql://... (or mysql://) that "
            f"every node reaches; got {redact(storage) or local[verb]}"
        )
    if _scheme(tracking_uri) not in (*servers, "http", "https"):
        raise ConfigError(
            f"{verb}.launcher=slurm needs a tracking.uri every node reaches: http(s)://<mlflow "
            f"server> or postgresql://...; got {redact(tracking_uri)}"
        )


def _scheme(url: str) -> str:
    """`postgresql+psycopg://...` -> `postgresql`; a path -> ``."""
    return url.partition("://")[0].partition("+")[0] if "://" in url else ""
