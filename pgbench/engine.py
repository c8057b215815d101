"""The one engine: sampling completions and scoring their token log-probabilities.

Used by training, evaluation and every estimator. Prompts are left-padded (so generation
appends on the right); completions are right-padded after their first EOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Rollout:
    """Prompts and sampled completions; rows of one prompt are adjacent (row = p * K + k)."""

    prompt_ids: Tensor  # [N, Tp] left-padded
    prompt_mask: Tensor  # [N, Tp]
    completion_ids: Tensor  # [N, Tc] right-padded after EOS
    completion_mask: Tensor  # [N, Tc] 1 on generated tokens up to and including EOS
    texts: list[str]  # N decoded completions, special tokens removed

    def rows(self, index: slice | Tensor) -> Rollout:
        """The rollout restricted to rows `index`, a slice or index tensor (for micro-batches)."""
        texts = self.texts[index] if isinstance(index, slice) else [self.texts[i] for i in index]
        return Rollout(
            self.prompt_ids[index],
            self.prompt_mask[index],
            self.completion_ids[index],
            self.completion_mask[index],
            texts,
        )

    @property
    def tokens(self) -> int:
        """Number of generated (unmasked) completion tokens."""
        return int(self.completion_mask.sum())


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], device: torch.device
) -> tuple[Tensor, Tensor]:
    """Left-padded token ids and attention mask [N, Tp] of prompt texts (already templated)."""
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


def completion_mask(completion_ids: Tensor, eos_token_id: int) -> Tensor:
    """1 on tokens up to and including the first EOS of each row, 0 after. [N, Tc] -> [N, Tc]."""
    is_eos = (completion_ids == eos_token_id).long()
    eos_before = is_eos.cumsum(dim=1) - is_eos  # EOS tokens strictly before each position
    return (eos_before == 0).long()


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    greedy: bool = False,
) -> Rollout:
    """Sample `samples_per_prompt` completions of each prompt (KV-cached), or one greedy each."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, model.device)
    prompt_ids = prompt_ids.repeat_interleave(samples_per_prompt, dim=0)
    prompt_mask = prompt_mask.repeat_interleave(samples_per_prompt, dim=0)
    eos = tokenizer.eos_token_id
    config = GenerationConfig(
        do_sample=not greedy,
        temperature=temperature if not greedy else None,
        top_k=0 if not greedy else None,
        top_p=1.0 if not greedy else None,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        use_cache=True,
    )
    output = model.generate(
        input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config
    )
    completion_ids = output[:, prompt_ids.shape[1] :]  # [N, Tc]
    mask = completion_mask(completion_ids, eos)
    texts = tokenizer.batch_decode(
        completion_ids * mask + eos * (1 - mask), skip_special_tokens=True
    )
    return Rollout(prompt_ids, prompt_mask, completion_ids, mask, texts)


def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Greedy completions of `prompts`, in batches (for evaluation)."""
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        texts += sample(model, tokenizer, chunk, 1, max_new_tokens, greedy=True).texts
    return texts


class TokenScores(NamedTuple):
    logprobs: Tensor  # [N, Tc] log-probabilities of the completion tokens
    entropy: Tensor | None  # [N, Tc] policy entropy at each position (detached)
    values: Tensor | None  # [N, Tc] value-head estimate of the state before each token


def token_logprobs(
    model: PreTrainedModel,
    rollout: Rollout,
    temperature: float = 1.0,
    with_entropy: bool = False,
    value_head: torch.nn.Module | None = None,
) -> TokenScores:
    """Log-probabilities [N, Tc] of the completion tokens given the prompts (one forward pass).

    Logits are divided by the sampling temperature, so these are the log-probabilities of
    the distribution that was sampled. Only the logits of completion positions are computed
    (`logits_to_keep`). Position ids follow the attention mask, as in generation, so left
    padding does not shift them. With `value_head`, it is applied to the last hidden state.
    """
    input_ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1)  # [N, Tp + Tc]
    attention = torch.cat([rollout.prompt_mask, rollout.completion_mask], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    completion_len = rollout.completion_ids.shape[1]
    output = model(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=positions,
        logits_to_keep=completion_len + 1,
        output_hidden_states=value_head is not None,
        use_cache=False,
    )
    logits = output.logits[:, :-1].float() / temperature  # [N, Tc, V]: predicts token t
    log_norm = logits.logsumexp(dim=-1)  # [N, Tc]
    chosen = logits.gather(-1, rollout.completion_ids.unsqueeze(-1)).squeeze(-1)
    entropy = values = None
    if with_entropy:
        with torch.no_grad():
            probs = logits.softmax(dim=-1)
            entropy = log_norm - (probs * logits).sum(dim=-1)  # H = logZ - E_p[logit]
    if value_head is not None:
        hidden = output.hidden_states[-1][:, -(completion_len + 1) : -1]  # [N, Tc, H]
        values = value_head(hidden.float()).squeeze(-1)
    return TokenScores(chosen - log_norm, entropy, values)


@torch.no_grad()
def token_logprobs_chunked(
    model: PreTrainedModel,
    rollout: Rollout,
    chunk_rows: int,
    temperature: float = 1.0,
    value_head: torch.nn.Module | None = None,
) -> TokenScores:
    """`token_logprobs` without gradients, `chunk_rows` rows at a time so the full-vocabulary
    logits of the whole batch are never held at once."""
    parts = [
        token_logprobs(
            model,
            rollout.rows(slice(start, start + chunk_rows)),
            temperature,
            value_head=value_head,
        )
        for start in range(0, len(rollout.texts), chunk_rows)
    ]
    values = torch.cat([p.values for p in parts]) if value_head is not None else None
    return TokenScores(torch.cat([p.logprobs for p in parts]), None, values)
