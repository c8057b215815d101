"""Building a tiny policy (`pgbench build-tiny`, or `model=tiny` where none ships for the
task's spec and data: pgbench.models.shipped), offline, and cached.

A byte-level BPE tokenizer trained on the task's train split, a small Llama-architecture
causal LM built from a config, and supervised fine-tuning on (prompt, answer) pairs of the
train split. The result is saved in Hugging Face format under
`<cache_dir>/tiny-<task>-<key>/`, where the key hashes everything that shapes it, so later
runs reuse it. Building runs under a file lock and writes to a temporary folder of its own
renamed into place at the end (`pgbench.models.cache`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    get_cosine_with_min_lr_schedule_with_warmup,
)

from pgbench.engine.evaluate import evaluate
from pgbench.hardware import auto_precision, cpu_capability
from pgbench.models.cache import build_once
from pgbench.tasks import Task
from pgbench.tasks.chat import CHAT_TEMPLATE, SPECIAL_TOKENS

FORMAT = "pgbench-tiny-v4"  # bump when the build procedure changes
ESTIMATE_AFTER = 4  # SFT steps timed before the build's duration is printed


@dataclass(frozen=True)
class TinySpec:
    """Everything that shapes the tiny policy (part of the cache key)."""

    vocab_size: int = 4096
    hidden_size: int = 256
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 704
    max_length: int = 96  # tokens of prompt + answer kept for SFT
    sft_steps: int = 1000
    sft_batch_size: int = 64
    sft_lr: float = 2e-3
    seed: int = 0
    split_digits: bool = False  # one token per digit (arithmetic), instead of BPE merges
    sft_final_lr_ratio: float = 0.0  # the cosine schedule ends at this fraction of sft_lr
    precision: str = "auto"  # SFT autocast: fp32, bf16, or auto (bf16 only where it is faster)
    # stop SFT once the greedy metric on the first `stop_examples` valid examples reaches
    # `stop_at` (checked every `stop_every` steps; 0 = run all sft_steps)
    stop_at: float = 0.0
    stop_every: int = 100
    stop_examples: int = 200


# A micro policy for tests and soak runs: a few seconds to build on 2 CPU cores.
MICRO = TinySpec(
    vocab_size=400,
    hidden_size=32,
    layers=1,
    heads=2,
    intermediate_size=64,
    sft_steps=30,
    sft_batch_size=16,
)


def task_spec(task: Task) -> TinySpec:
    """The default spec with the task's own `tiny_overrides` (a ClassVar dict, if declared)."""
    return dataclasses.replace(TinySpec(), **getattr(task, "tiny_overrides", {}))


def train_pairs(task: Task) -> list[tuple[list[dict[str, str]], str]]:
    """(chat messages, answer) of every SFT example (`Task.sft_examples`, the train split)."""
    return [(task.messages(example), task.target(example)) for example in task.sft_examples()]


def cache_key(task: Task, pairs: list[tuple[list[dict[str, str]], str]], spec: TinySpec) -> str:
    """Hash of the format, the task, every spec field (precision resolved) and the data."""
    fields = dataclasses.asdict(spec)
    digest = hashlib.sha256(f"{FORMAT}|{task.name}|{fields}".encode())
    for messages, target in pairs:
        digest.update(json.dumps([messages, target], ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def train_tokenizer(
    texts: list[str], vocab_size: int, split_digits: bool = False
) -> PreTrainedTokenizerFast:
    """Byte-level BPE with chat special tokens; left padding; EOS is the end-of-turn token.

    With `split_digits`, every digit is its own token, so numbers are never merged.
    """
    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if split_digits
        else byte_level
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|end|>", pad_token="<|pad|>", padding_side="left"
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_model(tokenizer: PreTrainedTokenizerFast, spec: TinySpec) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def encode_pairs(
    tokenizer: PreTrainedTokenizerFast, prompts: list[str], targets: list[str], max_length: int
) -> list[tuple[list[int], int]]:
    """Token ids of prompt + answer + EOS, and the index where the answer starts."""
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [
        ((p + t + [eos])[:max_length], len(p))
        for p, t in zip(prompt_ids, target_ids, strict=True)
        if len(p) < max_length - 1
    ]


def sft_batch(
    encoded: list[tuple[list[int], int]], rows: list[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (-100 outside the answer)."""
    width = max(len(encoded[i][0]) for i in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, i in enumerate(rows):
        tokens, start = encoded[i]
        ids[row, : len(tokens)] = torch.tensor(tokens)
        labels[row, start : len(tokens)] = torch.tensor(tokens[start:])
        mask[row, : len(tokens)] = 1
    return ids, mask, labels


def answer_loss(
    model: LlamaForCausalLM, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens, the LM head applied only there.

    Equal to `model(..., labels=labels).loss`; the answer is about a third of each row, so
    skipping the head's vocabulary-wide logits elsewhere saves ~20% of an SFT step.
    """
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
    targets = labels[:, 1:]  # position t predicts token t + 1
    keep = targets != -100
    logits = model.lm_head(hidden[:, :-1][keep])  # (answer tokens, vocab)
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def supervised_fine_tune(
    model: LlamaForCausalLM,
    encoded: list[tuple[list[int], int]],
    spec: TinySpec,
    pad_id: int,
    progress: bool,
    reached: Callable[[], float] | None = None,
) -> list[float]:
    """AdamW + warm-up/cosine (down to `sft_final_lr_ratio * sft_lr`) on answer tokens only;
    returns the loss of every step.

    With `reached` (the current policy's held-out metric), training stops at the first check
    where it is >= `spec.stop_at`.
    """
    generator = torch.Generator().manual_seed(spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.sft_lr, weight_decay=0.01)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer,
        math.ceil(0.05 * spec.sft_steps),
        spec.sft_steps,
        min_lr_rate=spec.sft_final_lr_ratio,
    )
    losses = []
    model.train()
    desc = f"tiny SFT ({spec.precision}, {torch.get_num_threads()} threads)"
    bar = tqdm(range(spec.sft_steps), desc=desc, disable=not progress)
    started = time.perf_counter()
    for step in bar:
        rows = torch.randint(len(encoded), (spec.sft_batch_size,), generator=generator).tolist()
        ids, mask, labels = sft_batch(encoded, rows, pad_id)
        # weights stay fp32; bf16 only where pgbench.hardware finds it faster (never emulated)
        with torch.autocast(ids.device.type, torch.bfloat16, enabled=spec.precision == "bf16"):
            loss = answer_loss(model, ids, mask, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if progress and step == ESTIMATE_AFTER:
            per_step = (time.perf_counter() - started) / (step + 1)
            tqdm.write(
                f"building the tiny policy: about {per_step * spec.sft_steps / 60:.0f} min on "
                f"this machine ({per_step:.2f} s x {spec.sft_steps} SFT steps)"
            )
        if reached is not None and (step + 1) % spec.stop_every == 0:
            model.eval()
            metric = reached()
            model.train()
            bar.set_postfix(loss=f"{loss.item():.3f}", metric=f"{metric:.1f}")
            if metric >= spec.stop_at:
                break
    bar.close()
    model.eval()
    return losses


def stop_metric(
    task: Task, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, examples: int
) -> Callable[[], float]:
    """The task's greedy metric on its first `examples` valid examples (the stop rule of SFT;
    the test split stays unseen)."""
    valid = task.splits().valid[:examples]

    def metric() -> float:
        with torch.no_grad():
            scores, _ = evaluate(model, tokenizer, task, valid, 48, 64)
        return scores[task.metric]

    return metric


def tiny_policy_dir(
    task: Task, cache_dir: Path, spec: TinySpec | None = None, progress: bool = True
) -> Path:
    """Directory of the cached tiny policy (model + tokenizer) for `task`, built if missing.

    `spec` defaults to `task_spec(task)`: TinySpec() with the task's own overrides. Built once
    under a file lock (`pgbench.models.cache.build_once`): concurrent workers wait for the
    first one's build instead of repeating it.
    """
    spec = spec or task_spec(task)
    if spec.precision == "auto":  # resolved before hashing: the key records the precision
        spec = dataclasses.replace(spec, precision=auto_precision(torch.device("cpu")))
    pairs = train_pairs(task)
    key = cache_key(task, pairs, spec)
    target_dir = Path(cache_dir) / f"tiny-{task.name}-{key}"
    note = f"pgbench: waiting for another process building the tiny policy {target_dir}"
    return build_once(
        target_dir,
        "tiny.json",
        lambda folder: build_policy(task, pairs, spec, key, folder, progress),
        note if progress else "",
    )


def build_policy(
    task: Task,
    pairs: list[tuple[list[dict[str, str]], str]],
    spec: TinySpec,
    key: str,
    folder: Path,
    progress: bool,
) -> dict[str, Any]:
    """Train the tokenizer and the policy, save them into `folder`; returns the build record."""
    started = time.perf_counter()
    torch.manual_seed(spec.seed)
    contents = [m["content"] for messages, _ in pairs for m in messages]
    tokenizer = train_tokenizer(
        contents + [target for _, target in pairs], spec.vocab_size, spec.split_digits
    )
    prompts = [
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        for messages, _ in pairs
    ]
    encoded = encode_pairs(tokenizer, prompts, [t for _, t in pairs], spec.max_length)
    model = build_model(tokenizer, spec)
    reached = None
    if spec.stop_at > 0:
        reached = stop_metric(task, model, tokenizer, spec.stop_examples)
    losses = supervised_fine_tune(model, encoded, spec, tokenizer.pad_token_id, progress, reached)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {
        "task": task.name,
        "format": FORMAT,
        "cache_key": key,
        "spec": dataclasses.asdict(spec),
        "train_pairs": len(encoded),
        "parameters": sum(p.numel() for p in model.parameters()),
        "first_loss": losses[0],
        "last_loss": sum(losses[-10:]) / len(losses[-10:]),
        "sft_steps_run": len(losses),
        "build_seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
        "cpu_capability": cpu_capability(),
        "torch": torch.__version__,
    }
