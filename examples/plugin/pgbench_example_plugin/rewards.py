"""Reward functions in TRL's convention: `f(prompts, completions, **columns) -> list[float |
None]`, one reward per completion (None: no reward for that sample)."""

from __future__ import annotations

from typing import Any


def exact_match(
    prompts: list[Any], completions: list[str], answer: list[str], **_: Any
) -> list[float]:
    """1.0 where the completion, stripped, is the row's `answer` column, else 0.0."""
    return [float(c.strip() == a.strip()) for c, a in zip(completions, answer, strict=True)]
