"""One rollout batch: K completions of each prompt, scored by the task's reward.

Shared by the trainer and `pgbench variance`, so both sample with the same engine and get
rewards [P, K] on the run's device (the task scores Python strings; the floats are moved to
the device here, once). Estimators with `needs_greedy` (ReMax) also get one greedy completion
of each prompt, decoded by the same engine (the task's tools included) and scored by the same
reward: `baseline` [P]. Its time is part of `seconds["generate"]`; its policy tokens are
`baseline_tokens`, which the trainer counts with the rollout's.

The `reward.*` probes (flip, noise, permute, scale, offset: pgbench.train.reward_transforms)
change the training rewards and the baseline here, seeded by the rollout's `seed`; evaluation
calls the task's reward directly and never sees them. `train/reward_mean` is the mean reward
the estimator saw; `train/reward_raw_mean` the task's own, before the transforms.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from pgbench import hardware
from pgbench.config.verbs import Config
from pgbench.engine.sampling import Rollout, sample
from pgbench.models.policy import Policy
from pgbench.tasks import Example, Task
from pgbench.train.reward_transforms import transform_rollout


@dataclass
class Collected:
    rollout: Rollout
    rewards: torch.Tensor  # [P, K] on the run's device, after the reward.* transforms
    seconds: dict[str, float]  # "generate" (greedy decode included) and "reward"
    baseline: torch.Tensor | None = None  # [P] greedy completions' rewards, transformed so too
    baseline_tokens: int = 0  # policy tokens of the greedy completions (0 without them)
    # task.reward_metrics() and train/reward_raw_mean (this process's share)
    reward_metrics: dict[str, float] = field(default_factory=dict)
    components: torch.Tensor | None = None  # [C, P, K] the task's reward terms (several), raw
    component_weights: torch.Tensor | None = None  # [C] their weights


def decode(
    config: Config,
    policy: Policy,
    prompts: list[str],
    device: torch.device,
    vllm: Any = None,
    seed: int = 0,
    greedy: bool = False,
) -> Rollout:
    """`rollout.samples_per_prompt` sampled completions of each prompt, or one greedy one,
    by vLLM (temperature 0 is its greedy decoding; no seed needed) or by the HF engine."""
    cfg = config.rollout
    samples = 1 if greedy else cfg.samples_per_prompt
    if vllm is not None:
        temperature = 0.0 if greedy else cfg.temperature
        return vllm.sample(
            prompts, samples, cfg.max_new_tokens, temperature, device, None if greedy else seed
        )
    return sample(
        policy.model,
        policy.tokenizer,
        prompts,
        samples,
        cfg.max_new_tokens,
        cfg.temperature,
        greedy=greedy,
        tools=config.task.tools(),
    )


def collect_rollout(
    config: Config,
    policy: Policy,
    examples: list[Example],
    device: torch.device,
    vllm: Any = None,
    seed: int = 0,
    autocast: contextlib.AbstractContextManager | None = None,
    greedy: bool | None = None,
) -> Collected:
    """Sample `rollout.samples_per_prompt` completions of each example and score them.

    `vllm` is a VLLMSampler (engine.backend=vllm, seeded with `seed`), else the HF engine
    samples (seeded by the caller's torch seed); `seed` also seeds the reward transforms
    (pass the step's, so that a resumed run draws the same); `autocast` wraps sampling only.
    `greedy` (default: the estimator's `needs_greedy`) adds the greedy baseline; the greedy
    decode draws no random numbers, so the sampled completions are the same with or without it.
    """
    samples = config.rollout.samples_per_prompt
    greedy = config.estimator.needs_greedy if greedy is None else greedy
    prompts = [config.task.prompt(example, policy.tokenizer) for example in examples]
    seconds: dict[str, float] = {}
    with hardware.timed(seconds, "generate", device), autocast or contextlib.nullcontext():
        rollout = decode(config, policy, prompts, device, vllm, seed)
        best = decode(config, policy, prompts, device, vllm, seed, greedy=True) if greedy else None
    with hardware.timed(seconds, "reward", device):
        repeated = [example for example in examples for _ in range(samples)]
        scores = config.task.reward(rollout.texts, repeated)
        raw = torch.tensor(scores, device=device).view(-1, samples)  # [P, K]
        extra = config.task.reward_metrics() | {  # before the greedy baseline's reward call
            "train/reward_raw_mean": raw.mean().item()  # before the reward.* transforms
        }
        terms = config.task.reward_components()
        greedy_raw = None
        if best is not None:
            greedy_raw = torch.tensor(config.task.reward(best.texts, examples), device=device)
        rewards, baseline = transform_rollout(  # [P, K], [P] or None
            raw, greedy_raw, config.reward, seed, reward_label(config.task)
        )
    tokens = 0 if best is None else best.tokens
    collected = Collected(rollout, rewards, seconds, baseline, tokens, extra)
    if terms is None:
        return collected
    parts = torch.tensor(terms[0], device=device).view(len(terms[0]), -1, samples)
    weights = torch.tensor(terms[1], device=device)
    return dataclasses.replace(collected, components=parts, component_weights=weights)


def reward_label(task: Task) -> str:
    """The task's reward as an error names it: `task.reward=<spec>` where the task has that
    setting, else the task's own."""
    spec = getattr(task, "reward_name", None)
    return f"task.reward={spec}" if spec else f"task {task.name}'s reward"
