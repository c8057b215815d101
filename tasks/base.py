"""The base classes and registry of pgbench.tasks (imported by every task module;
the package imports the modules, so that each registers itself)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pgbench.registry import Registry


@dataclass(frozen=True)
class Example:
    """One prompt source and its reference answers."""

    source: str
    references: tuple[str, ...]


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    valid: list[Example]
    test: list[Example]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}


@dataclass(frozen=True)
class ToolEnv:
    """The environment of a multi-turn task: what ends a tool call and how it is answered."""

    stop: str  # text that ends a tool call in the policy's output, e.g. "</tool>"
    call: Callable[[str], str]  # completion text so far (ending in a call) -> text appended
    max_turns: int  # policy turns per episode; a call in the last turn ends the episode


class Task:
    """Base class of tasks; subclasses are dataclasses registered with `@register(name)`."""

    name: ClassVar[str]
    metric: ClassVar[str]  # held-out metric that sweeps maximise
    # Shared-knob defaults this task changes (e.g. {"trainer.prompts_per_step": 32}): applied by
    # config.resolve unless the command line sets the key, and shown by --help.
    run_defaults: ClassVar[dict[str, Any]] = {}
    # Defaults for one model, over run_defaults (e.g. {"smollm2": {"lora.r": 8}}): applied when
    # `model=` (given, or this task's run_defaults' "model") names that model.
    model_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    def splits(self) -> Splits:
        raise NotImplementedError

    def sft_examples(self) -> list[Example]:
        """What a tiny policy's SFT learns from: the train split."""
        return self.splits().train

    def messages(self, example: Example) -> list[dict[str, str]]:
        """Chat messages that ask for the answer to `example`."""
        raise NotImplementedError

    def target(self, example: Example) -> str:
        """The answer used to supervise the bootstrap policy."""
        return example.references[0]

    def reward(self, completions: list[str], examples: list[Example]) -> list[float]:
        raise NotImplementedError

    def reward_metrics(self) -> dict[str, float]:
        """What the last `reward` call adds to the step's metrics (a dataset task: each reward
        function's mean and the share of None rewards); none by default."""
        return {}

    def reward_components(self) -> tuple[list[list[float]], list[float]] | None:
        """The last `reward` call's terms, for estimators that weigh them apart (gdpo): each
        term's scores [C][N] (as summed) and weights [C], the reward being their weighted
        sum; None where the reward has one term (the default)."""
        return None

    def configure_reward(self, model: str, device: str, batch_size: int) -> None:
        """Take the run's `reward.*` settings (called by config.resolve; device `auto` = cuda
        when available). Tasks without model-based rewards ignore them."""

    def check_reward(self) -> None:
        """Load whatever the reward needs now, raising ConfigError if it cannot work."""

    def metrics(self, completions: list[str], examples: list[Example]) -> dict[str, float]:
        """Held-out corpus metrics of greedy completions."""
        raise NotImplementedError

    def tools(self) -> ToolEnv | None:
        """Tools the policy may call mid-episode (multi-turn rollouts); None = single-turn."""
        return None

    def system_message(self, tokenizer: Any) -> str | None:
        """A system turn put before `messages` in prompts (None: none of pgbench's; the chat
        template may still add its own). The tiny bootstrap trains on `messages` alone."""
        return None

    def prompt(self, example: Example, tokenizer: Any) -> str:
        """The prompt text: the system turn, if any, and the messages in the chat template."""
        messages = self.messages(example)
        system = self.system_message(tokenizer)
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


REGISTRY: Registry[Task] = Registry("task")
register = REGISTRY.register


def get(name: str, **fields: Any) -> Task:
    """Build the task registered as `name` with the given fields."""
    return REGISTRY.get(name, **fields)
