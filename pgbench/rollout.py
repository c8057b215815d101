"""One rollout batch: K completions of each prompt, scored by the task's reward.

Shared by the trainer and `pgbench variance`, so both sample with the same engine and get
rewards [P, K] on the run's device (the task scores Python strings; the floats are moved to
the device here, once).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch

from pgbench.config import Config
from pgbench.engine import Rollout, sample
from pgbench.policy import Policy
from pgbench.tasks import Example


@dataclass
class Collected:
    rollout: Rollout
    rewards: torch.Tensor  # [P, K] on the run's device
    sample_s: float  # seconds spent sampling (rewards excluded)


def collect_rollout(
    config: Config,
    policy: Policy,
    examples: list[Example],
    device: torch.device,
    vllm: Any = None,
    seed: int = 0,
    autocast: contextlib.AbstractContextManager | None = None,
) -> Collected:
    """Sample `rollout.samples_per_prompt` completions of each example and score them.

    `vllm` is a VLLMSampler (engine.backend=vllm, seeded with `seed`), else the HF engine
    samples (seeded by the caller's torch seed); `autocast` wraps sampling only.
    """
    samples, cfg = config.rollout.samples_per_prompt, config.rollout
    prompts = [config.task.prompt(example, policy.tokenizer) for example in examples]
    started = time.perf_counter()
    with autocast or contextlib.nullcontext():
        if vllm is not None:
            rollout = vllm.sample(
                prompts, samples, cfg.max_new_tokens, cfg.temperature, device, seed
            )
        else:
            rollout = sample(
                policy.model,
                policy.tokenizer,
                prompts,
                samples,
                cfg.max_new_tokens,
                cfg.temperature,
                tools=config.task.tools(),
            )
    sample_s = time.perf_counter() - started
    repeated = [example for example in examples for _ in range(samples)]
    scores = config.task.reward(rollout.texts, repeated)
    return Collected(rollout, torch.tensor(scores, device=device).view(-1, samples), sample_s)
