"""Rollouts sampled by vLLM on a GPU (`engine.backend=vllm`), with the policy's weights synced in.

vLLM is an optional extra (`pip install 'pgbench[vllm]'`), imported only when `VLLMSampler.create`
runs, never when this module is imported. Sampling matches `pgbench.engine.sampling.sample`: pure
temperature sampling (no top-k, top-p 1), at most `max_new_tokens`, stop at the tokenizer's EOS.
The `Rollout` is laid out as the engine's: prompts tokenised and left-padded by `encode_prompts`,
completions right-padded after their first EOS, rows of one prompt adjacent (row = p * K + k).

Weights: vLLM loads the policy's starting weights itself; `sync(model)` copies the trained
policy's current weights into it (a LoRA adapter is merged into the copy, as TRL does), every
`engine.sync_every` optimiser steps.

Deviations from the hf backend: vLLM samples with its own kernels from its own copy of the
weights (bf16 by default, and up to `sync_every - 1` steps old), so the sampling policy differs
slightly from the trained one. The log-probabilities every estimator uses are recomputed by the
trained policy (`update.prepare`), so this gap is a small off-policy bias, not a wrong formula.
Multi-turn tool episodes are not supported (config refuses them).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from pgbench.engine.sampling import (
    Rollout,
    completion_mask,
    encode_prompts,
    pad_token_id,
    right_pad,
)


def policy_weights(model: torch.nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) of the policy's full weights, named as in its Hugging Face checkpoint.

    A peft LoRA model must have its adapter merged first (`merge_adapter`); its base-layer
    names lose the peft prefixes and the adapter's own tensors are left out.
    """
    if not hasattr(model, "peft_config"):
        yield from model.state_dict().items()
        return
    prefix = model.prefix  # "lora_"
    for name, tensor in model.state_dict().items():
        name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        if prefix in name or "original_module" in name:
            continue
        yield name.replace("modules_to_save.default.", ""), tensor


def vllm_model(llm: Any) -> Any:
    """The torch model inside an in-process vLLM engine (V1 with multiprocessing off, or V0)."""
    worker = llm.llm_engine.model_executor.driver_worker
    return getattr(worker, "worker", worker).model_runner.model


def _vllm_sampling_params(**settings: Any) -> Any:
    from vllm import SamplingParams

    return SamplingParams(**settings)


class VLLMSampler:
    """Samples rollouts with a `vllm.LLM` and keeps its weights in step with the policy."""

    def __init__(
        self,
        llm: Any,
        tokenizer: Any,
        sync_every: int,
        sampling_params: Callable[..., Any] = _vllm_sampling_params,
    ) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.sync_every = sync_every
        self.sampling_params = sampling_params  # a test passes a fake; vLLM's otherwise
        self.synced_step: int | None = None  # step of the last sync (None = not yet)
        self.syncs = 0

    @classmethod
    def create(
        cls,
        source: str,
        tokenizer: Any,
        sync_every: int,
        gpu_memory_utilization: float,
        seed: int,
        processes: int = 1,
    ) -> VLLMSampler:
        """Start a vLLM engine on the starting weights `source` (a folder or hub id)."""
        # The engine must live in this process so `sync` can reach its model (TRL does the same).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        extra = {}
        if processes > 1:  # one engine per `accelerate launch` process, each on its own GPU
            extra["distributed_executor_backend"] = "external_launcher"
        llm = LLM(
            model=source,
            tokenizer=source,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            generation_config="vllm",  # pgbench's sampling settings, not the model's defaults
            **extra,
        )
        return cls(llm, tokenizer, sync_every)

    def sync_if_due(self, model: torch.nn.Module, step: int) -> float:
        """Sync at the first step and every `sync_every` steps after it; returns seconds spent."""
        if self.synced_step is not None and step - self.synced_step < self.sync_every:
            return 0.0
        self.synced_step = step
        return self.sync(model)

    @torch.no_grad()
    def sync(self, model: torch.nn.Module) -> float:
        """Load the policy's current weights into the vLLM engine; returns seconds spent."""
        started = time.perf_counter()
        lora = hasattr(model, "peft_config")
        if lora:
            model.merge_adapter()
        try:
            vllm_model(self.llm).load_weights(policy_weights(model))
        finally:
            if lora:
                model.unmerge_adapter()
        self.syncs += 1
        return time.perf_counter() - started

    def sample(
        self,
        prompts: list[str],
        samples_per_prompt: int,
        max_new_tokens: int,
        temperature: float,
        device: torch.device,
        seed: int | None = None,
    ) -> Rollout:
        """`samples_per_prompt` completions of each (templated) prompt, as `engine.sample`.

        `seed` seeds the request, so a resumed run replays the same samples (same weights).
        """
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts, device)  # [P, Tp]
        eos = self.tokenizer.eos_token_id
        params = self.sampling_params(
            n=samples_per_prompt,
            temperature=temperature,
            top_p=1.0,
            max_tokens=max_new_tokens,
            stop_token_ids=[eos],
            seed=seed,
        )
        requests = [
            {"prompt_token_ids": ids[mask.bool()].tolist()}  # the prompt without its left padding
            for ids, mask in zip(prompt_ids, prompt_mask, strict=True)
        ]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        completions = [list(c.token_ids) for out in outputs for c in out.outputs]  # P * K
        return build_rollout(
            prompt_ids.repeat_interleave(samples_per_prompt, dim=0),
            prompt_mask.repeat_interleave(samples_per_prompt, dim=0),
            completions,
            self.tokenizer,
        )


def build_rollout(
    prompt_ids: Tensor, prompt_mask: Tensor, completions: list[list[int]], tokenizer: Any
) -> Rollout:
    """A Rollout of left-padded prompts [N, Tp] and N completions given as token-id lists.

    Completions are right-padded with the pad token; the mask covers each completion up to and
    including its first EOS (vLLM keeps a stop token in `token_ids`), as `engine.sample`'s does.
    """
    completion_ids, real = right_pad(completions, pad_token_id(tokenizer), prompt_ids.device)
    mask = completion_mask(completion_ids, tokenizer.eos_token_id) * real  # [N, Tc]
    texts = tokenizer.batch_decode(
        [ids[: int(m.sum())] for ids, m in zip(completions, mask, strict=True)],
        skip_special_tokens=True,
    )
    return Rollout(prompt_ids, prompt_mask, completion_ids, mask, mask, texts)
