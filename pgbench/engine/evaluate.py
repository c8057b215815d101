"""Held-out evaluation: greedy completions scored with the task's corpus metrics."""

from __future__ import annotations

from typing import Any

from pgbench.engine.sampling import generate_greedy
from pgbench.tasks import Example, Task


def evaluate(
    model: Any,
    tokenizer: Any,
    task: Task,
    examples: list[Example],
    max_new_tokens: int,
    batch_size: int,
) -> tuple[dict[str, float], list[str]]:
    """Corpus metrics (e.g. chrf, bleu on a 0-100 scale) and the greedy completions."""
    prompts = [task.prompt(example, tokenizer) for example in examples]
    texts = generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size, task.tools())
    return task.metrics(texts, examples), texts
