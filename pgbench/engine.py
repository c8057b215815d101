"""The one engine: sampling completions and scoring their token log-probabilities.

Used by training, evaluation and every estimator. Prompts are left-padded (so generation
appends on the right); completions are right-padded after their first EOS.

Multi-turn episodes (tasks with tools, `pgbench.tasks.ToolEnv`): the policy writes until EOS
or a tool call (text ending in `ToolEnv.stop`), the environment's answer is appended to the
completion as tokens, and the policy goes on. The completion then mixes policy and
environment tokens: `policy_mask` marks the policy's own, the only ones any loss, KL or
count looks at.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor
from transformers import (
    DynamicCache,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

if TYPE_CHECKING:
    from pgbench.tasks import ToolEnv


@dataclass
class Rollout:
    """Prompts and sampled completions; rows of one prompt are adjacent (row = p * K + k)."""

    prompt_ids: Tensor  # [N, Tp] left-padded
    prompt_mask: Tensor  # [N, Tp]
    completion_ids: Tensor  # [N, Tc] right-padded after EOS
    completion_mask: Tensor  # [N, Tc] 1 on real tokens (policy and tool results) through EOS
    policy_mask: Tensor  # [N, Tc] 1 on tokens the policy sampled; 0 on tool results, padding
    texts: list[str]  # N decoded completions (tool results included), special tokens removed

    def rows(self, index: slice | Tensor) -> Rollout:
        """The rollout restricted to rows `index`, a slice or index tensor (for micro-batches)."""
        texts = self.texts[index] if isinstance(index, slice) else [self.texts[i] for i in index]
        return Rollout(
            self.prompt_ids[index],
            self.prompt_mask[index],
            self.completion_ids[index],
            self.completion_mask[index],
            self.policy_mask[index],
            texts,
        )

    @property
    def tokens(self) -> int:
        """Number of tokens the policy generated (tool results and padding excluded)."""
        return int(self.policy_mask.sum())


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
    tools: ToolEnv | None = None,
) -> Rollout:
    """Sample `samples_per_prompt` completions of each prompt (KV-cached), or one greedy each.

    With `tools`, episodes are multi-turn (see `sample_with_tools`); `max_new_tokens` then
    caps the policy's own tokens of an episode.
    """
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, model.device)
    prompt_ids = prompt_ids.repeat_interleave(samples_per_prompt, dim=0)
    prompt_mask = prompt_mask.repeat_interleave(samples_per_prompt, dim=0)
    if tools is not None:
        return sample_with_tools(
            model, tokenizer, prompt_ids, prompt_mask, max_new_tokens, temperature, greedy, tools
        )
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
    return Rollout(prompt_ids, prompt_mask, completion_ids, mask, mask, texts)


def cache_keyword(model: PreTrainedModel) -> str:
    """Name of the KV-cache argument of the model's forward: `cache` in recent transformers,
    `past_key_values` in older ones (a PEFT wrapper passes it on to its base model)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@torch.no_grad()
def sample_with_tools(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    max_new_tokens: int,
    temperature: float,
    greedy: bool,
    tools: ToolEnv,
) -> Rollout:
    """Multi-turn episodes of the left-padded prompts [N, Tp], one token per row per step.

    Each step feeds every row one token through the KV cache: the next token of a pending
    tool result (forced, policy_mask 0) or one sampled from softmax(logits / temperature)
    (argmax if `greedy`; policy_mask 1). A row ends at EOS, after `max_new_tokens` policy
    tokens, or at a tool call in its last turn (`tools.max_turns`); otherwise a call (the
    text of the current turn contains `tools.stop`) queues the tokens of `tools.call(text)`.
    Sampled tokens are kept as ids, never re-tokenised, so their log-probs stay exact.
    """
    rows = prompt_ids.shape[0]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids: list[list[int]] = [[] for _ in range(rows)]  # completion tokens of each row
    from_policy: list[list[int]] = [[] for _ in range(rows)]  # 1 = sampled, 0 = tool result
    pending: list[list[int]] = [[] for _ in range(rows)]  # tool-result tokens still to feed
    turn_start = [0] * rows  # index in ids[row] where the current policy turn starts
    turns, spent, done = [1] * rows, [0] * rows, [False] * rows

    cache = {cache_keyword(model): DynamicCache()}  # filled in place by every forward
    attention = prompt_mask.clone()
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)  # as token_logprobs numbers them
    output = model(
        input_ids=prompt_ids,
        attention_mask=attention,
        position_ids=positions,
        use_cache=True,
        **cache,
    )
    next_position = positions[:, -1:] + 1  # [N, 1]
    while True:
        logits = output.logits[:, -1].float()  # [N, V]
        if greedy:
            sampled = logits.argmax(dim=-1)
        else:
            sampled = torch.multinomial((logits / temperature).softmax(dim=-1), 1).squeeze(-1)
        step = sampled.tolist()
        for row in range(rows):
            if done[row]:
                step[row] = pad
                continue
            forced = bool(pending[row])
            token = pending[row].pop(0) if forced else step[row]
            step[row] = token
            ids[row].append(token)
            from_policy[row].append(0 if forced else 1)
            if forced:
                continue
            spent[row] += 1
            if token == eos or spent[row] >= max_new_tokens:
                done[row] = True
                continue
            turn = tokenizer.decode(ids[row][turn_start[row] :], skip_special_tokens=True)
            if tools.stop not in turn:
                continue
            if turns[row] >= tools.max_turns:
                done[row] = True
                continue
            result = tools.call(tokenizer.decode(ids[row], skip_special_tokens=True))
            pending[row] = tokenizer(result, add_special_tokens=False)["input_ids"]
            turn_start[row] = len(ids[row]) + len(pending[row])
            turns[row] += 1
        if all(done):
            break
        attention = torch.cat([attention, attention.new_ones(rows, 1)], dim=1)
        output = model(
            input_ids=torch.tensor(step, device=prompt_ids.device)[:, None],
            attention_mask=attention,
            position_ids=next_position,
            use_cache=True,
            **cache,
        )
        next_position = next_position + 1

    width = max(len(row_ids) for row_ids in ids)
    completion_ids = torch.full((rows, width), pad, dtype=torch.long)
    real = torch.zeros((rows, width), dtype=torch.long)
    policy = torch.zeros((rows, width), dtype=torch.long)
    for row, row_ids in enumerate(ids):
        completion_ids[row, : len(row_ids)] = torch.tensor(row_ids)
        real[row, : len(row_ids)] = 1
        policy[row, : len(row_ids)] = torch.tensor(from_policy[row])
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    device = prompt_ids.device
    completion_ids, real, policy = completion_ids.to(device), real.to(device), policy.to(device)
    return Rollout(prompt_ids, prompt_mask, completion_ids, real, policy, texts)


def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    tools: ToolEnv | None = None,
) -> list[str]:
    """Greedy completions of `prompts`, in batches (for evaluation), using `tools` if given."""
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        texts += sample(model, tokenizer, chunk, 1, max_new_tokens, greedy=True, tools=tools).texts
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
