"""What a training run is built from: its device and processes, the policy, the reference,
PPO's value head and the vLLM sampler (`build_parts`), and the optimiser with its schedule
(`build_optimizer`). The Trainer receives the parts, so a test (or another verb) can hand it
its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup

from pgbench import parallel
from pgbench.config.verbs import Config
from pgbench.errors import ConfigError
from pgbench.hardware import pick_device
from pgbench.models.policy import (
    Policy,
    Reference,
    enable_gradient_checkpointing,
    load_policy,
    reset_peak_memory,
)
from pgbench.models.resolve import resolve_model


@dataclass
class Parts:
    device: torch.device
    processes: parallel.Processes
    policy: Policy
    reference: Reference | None  # None with kl.coef=0
    value_head: torch.nn.Linear | None  # estimators with `uses_value_head` (PPO)
    vllm: Any = None  # a VLLMSampler with engine.backend=vllm


def new_value_head(model: PreTrainedModel) -> torch.nn.Linear:
    """A linear value head on the policy's last hidden state, zero-initialised: V = 0 until
    it learns (as at PPO's first step)."""
    head = torch.nn.Linear(model.config.hidden_size, 1).to(model.device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


def build_parts(config: Config) -> Parts:
    """The run's device (this process's own GPU under data parallelism), its processes and
    the models, loaded as configured; the policy's initial weights follow `seed`."""
    processes = parallel.current(config.device)
    if config.trainer.prompts_per_step % processes.world:
        raise ConfigError(
            f"trainer.prompts_per_step={config.trainer.prompts_per_step} must be divisible "
            f"by the {processes.world} launched processes (each samples an equal share)"
        )
    device = pick_device(config.device)
    if processes.world > 1 and device.type == "cuda":
        device = processes.device
    reset_peak_memory(device)
    torch.manual_seed(config.seed)
    policy = load_policy(
        resolve_model(config.model, config.task, config.cache_dir), config.lora, device
    )
    reference = Reference(policy) if config.kl.coef > 0 else None
    if config.trainer.gradient_checkpointing:
        enable_gradient_checkpointing(policy.model)
    head = new_value_head(policy.model) if config.estimator.uses_value_head else None
    vllm = None
    if config.engine.backend == "vllm":
        from pgbench.engine.vllm_backend import VLLMSampler

        engine = config.engine
        vllm = VLLMSampler.create(
            policy.source,
            policy.tokenizer,
            engine.sync_every,
            engine.gpu_memory_utilization,
            processes.seed(config.seed),
            processes.world,
        )
    return Parts(device, processes, policy, reference, head, vllm)


def build_optimizer(
    config: Config, params: list[torch.nn.Parameter], device: torch.device
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `params` (fused: one kernel for all tensors, same maths) and its cosine
    schedule with linear warm-up over `trainer.steps`."""
    trainer = config.trainer
    optimizer = torch.optim.AdamW(
        params,
        lr=trainer.lr,
        weight_decay=trainer.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )
    warmup = round(trainer.warmup_ratio * trainer.steps)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup, trainer.steps)
