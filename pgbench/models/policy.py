"""Loading the policy (tiny, hub id or local path), LoRA wrapping, the reference model, and
the device facts a run logs (peak memory) or switches (gradient checkpointing)."""

from __future__ import annotations

import copy
import resource
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from pgbench.config.sections import LoraConfig
from pgbench.engine.sampling import Rollout
from pgbench.engine.scoring import token_logprobs_chunked
from pgbench.errors import DataError


@dataclass
class Policy:
    model: PreTrainedModel  # a peft model when LoRA is on
    tokenizer: object
    source: str  # directory or hub id of the starting weights
    lora: bool


def load_policy(source: str, lora: LoraConfig, device: torch.device) -> Policy:
    """Load weights and tokenizer from `source`; wrap with LoRA when `lora.r > 0`."""
    # transformers' "Loading weights" and "Writing model shards" bars would sit beside the
    # run's own bar; its switch turns them off for the process (the final save included)
    hf_logging.disable_progress_bar()
    try:
        if (Path(source) / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise DataError(
            f"cannot load model {source!r} ({err}); offline, use model=tiny or a local folder"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise DataError(f"model {source!r} has no chat template; pgbench prompts through it")
    if lora.r > 0:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        targets = lora.target_modules
        peft_config = PeftLoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=targets if targets == "all-linear" else targets.split(","),
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():  # peft reads transformers' deprecated property
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
            model = get_peft_model(model, peft_config)
    model.to(device).eval()  # eval mode: no dropout noise in sampling or gradients
    return Policy(model, tokenizer, source, lora.r > 0)


class Reference:
    """The frozen starting policy for the KL term: the base weights with the LoRA adapter
    disabled (no second copy), or a frozen copy of the full model."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.copy = None
        if not policy.lora:
            self.copy = copy.deepcopy(policy.model).requires_grad_(False)

    def logprobs(self, rollout: Rollout, chunk_rows: int, temperature: float) -> torch.Tensor:
        """Token log-probabilities [N, Tc] of the rollout under the reference."""
        if self.copy is not None:
            return token_logprobs_chunked(self.copy, rollout, chunk_rows, temperature).logprobs
        with self.policy.model.disable_adapter():
            scores = token_logprobs_chunked(self.policy.model, rollout, chunk_rows, temperature)
        return scores.logprobs


def reset_peak_memory(device: torch.device) -> None:
    """Start the peak-memory count afresh, so runs sharing a process (compare) each get theirs."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
    except OSError:
        pass  # elsewhere the peak is the process's


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory, or peak resident memory since `reset_peak_memory` (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of storing them.

    transformers checkpoints a layer only in training mode, and the engine scores with one
    full forward (no shared prompt cache, which checkpointing would drop) only when the model
    is checkpointing and in training mode. The policy stays in eval mode otherwise (no dropout
    noise), so just the model object and its layers are flagged as training, not recursively:
    their dropout submodules keep eval mode. Sampling runs without gradients, where
    checkpointing is off and the KV cache works as usual.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.training = True
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.training = True
