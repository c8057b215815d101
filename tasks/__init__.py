"""Tasks: data, prompts and rewards. A task declares; it never trains.

`pgbench.tasks.get(name, **fields)` returns a task instance; `REGISTRY.names()` lists them.
"""

from __future__ import annotations

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


class Task:
    """Base class of tasks; subclasses are dataclasses registered with `@register(name)`."""

    name: ClassVar[str]
    metric: ClassVar[str]  # held-out metric that sweeps maximise

    def splits(self) -> Splits:
        raise NotImplementedError

    def messages(self, example: Example) -> list[dict[str, str]]:
        """Chat messages that ask for the answer to `example`."""
        raise NotImplementedError

    def target(self, example: Example) -> str:
        """The answer used to supervise the bootstrap policy."""
        return example.references[0]

    def reward(self, completions: list[str], examples: list[Example]) -> list[float]:
        raise NotImplementedError

    def check_reward(self) -> None:
        """Load whatever the reward needs now, raising ConfigError if it cannot work."""

    def metrics(self, completions: list[str], examples: list[Example]) -> dict[str, float]:
        """Held-out corpus metrics of greedy completions."""
        raise NotImplementedError

    def prompt(self, example: Example, tokenizer: Any) -> str:
        """The prompt text, rendered with the tokenizer's chat template."""
        return tokenizer.apply_chat_template(
            self.messages(example), add_generation_prompt=True, tokenize=False
        )


REGISTRY: Registry[Task] = Registry("task")
register = REGISTRY.register


def get(name: str, **fields: Any) -> Task:
    """Build the task registered as `name` with the given fields."""
    return REGISTRY.get(name, **fields)


from pgbench.tasks import fr_en  # noqa: E402,F401  (registers the built-in tasks)
