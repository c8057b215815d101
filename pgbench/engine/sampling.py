"""The one engine, sampling half: completions of prompts (`engine.scoring` is the other half,
their token log-probabilities).

Used by training, evaluation and `pgbench variance`. Prompts are left-padded (so generation
appends on the right); completions are right-padded after their first EOS.

Multi-turn episodes (tasks with tools, `pgbench.tasks.ToolEnv`): the policy writes until EOS
or a tool call (text ending in `ToolEnv.stop`), the environment's answer is appended to the
completion as tokens, and the policy goes on. The completion then mixes policy and
environment tokens: `policy_mask` marks the policy's own, the only ones any loss, KL or
count looks at.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from pgbench.engine.kv_cache import SamplingCache, cache_keyword

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
    behaviour: Tensor | None = None  # [N, Tc] log-probs of the sampling policy, if recorded

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
            None if self.behaviour is None else self.behaviour[index],
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


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that pads completions: the tokenizer's pad token, else its EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def right_pad(rows: list[list[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Token-id lists as a right-padded tensor [N, W] (W = the longest, at least 1) and the
    mask [N, W] of their real entries."""
    width = max([1, *(len(row) for row in rows)])
    ids = torch.full((len(rows), width), pad, dtype=torch.long, device="cpu")  # host staging,
    real = torch.zeros((len(rows), width), dtype=torch.long, device="cpu")  # one copy below
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(row, dtype=torch.long, device="cpu")
        real[index, : len(row)] = 1
    return ids.to(device), real.to(device)


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

    Each token is drawn from softmax(logits / temperature) (argmax if `greedy`), with no
    top-k, top-p or other logits processing. With `tools`, episodes are multi-turn (see
    `sample_episodes`, the one loop for both); `max_new_tokens` then caps the policy's own
    tokens of an episode.
    """
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, model.device)  # [P, Tp]
    rows = len(prompts) * samples_per_prompt
    episodes = ToolCalls(tools, tokenizer, rows) if tools is not None else None
    completion_ids, policy_mask, lengths = sample_episodes(
        model,
        prompt_ids,
        prompt_mask,
        samples_per_prompt,
        max_new_tokens,
        temperature,
        greedy,
        tokenizer.eos_token_id,
        pad_token_id(tokenizer),
        episodes,
    )
    width = torch.arange(completion_ids.shape[1], device=completion_ids.device)
    real = (width < lengths[:, None]).long()  # [N, Tc] through EOS
    texts = tokenizer.batch_decode(
        [row[:n] for row, n in zip(completion_ids.tolist(), lengths.tolist(), strict=True)],
        skip_special_tokens=True,
    )
    prompt_ids = prompt_ids.repeat_interleave(samples_per_prompt, dim=0)  # [N, Tp]
    prompt_mask = prompt_mask.repeat_interleave(samples_per_prompt, dim=0)
    return Rollout(prompt_ids, prompt_mask, completion_ids, real, policy_mask, texts)


class Prefill(NamedTuple):
    cache: dict[str, DynamicCache]  # the KV-cache keyword argument, filled for N rows
    logits: Tensor  # [N, V] logits of each row's first completion token
    attention: Tensor  # [N, Tc] attention mask of the cached prompt tokens (and pads)
    next_position: Tensor  # [N, 1] position id of the first completion token


def shared_prefix(prompt_ids: Tensor, prompt_mask: Tensor) -> int:
    """How many first tokens every left-padded prompt [P, Tp] shares (a chat template's
    system turn), leaving each row at least one token of its own; 0 for a single prompt."""
    lengths = prompt_mask.sum(dim=1)
    shortest = int(lengths.min())
    if len(prompt_ids) < 2 or shortest < 2:
        return 0
    columns = (prompt_ids.shape[1] - lengths)[:, None] + torch.arange(
        shortest - 1, device=prompt_ids.device
    )
    heads = prompt_ids.gather(1, columns)  # [P, shortest - 1]: each row's first tokens
    return int((heads == heads[:1]).all(dim=0).long().cumprod(dim=0).sum())


def prefill(
    model: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor, samples_per_prompt: int
) -> Prefill:
    """Run the P distinct left-padded prompts [P, Tp] once and repeat their KV cache for the
    K samples of each: N = P * K rows, row = p * K + k. The prefix all prompts share is run
    once: the cache holds [prefix | left-padded rest], pads masked, positions as without it."""
    cache = SamplingCache()
    keyword = {cache_keyword(model): cache}
    lengths = prompt_mask.sum(dim=1, keepdim=True)  # [P, 1] real tokens
    shared, width = shared_prefix(prompt_ids, prompt_mask), prompt_ids.shape[1]
    if shared:
        first = width - int(lengths[0])  # row 0's first real column
        head = prompt_ids[:1, first : first + shared]
        positions = torch.arange(shared, device=head.device)[None]
        model(input_ids=head, position_ids=positions, logits_to_keep=1, use_cache=True, **keyword)
        cache.batch_repeat_interleave(len(prompt_ids))
    rest = width - (int(lengths.max()) - shared)  # the columns after the shared prefix
    columns = torch.arange(rest, width, device=prompt_ids.device)
    mask = (columns >= width - lengths + shared).long()  # [P, Ts]: each row's own tokens
    attention = torch.cat([mask.new_ones(len(mask), shared), mask], dim=1)
    positions = (shared + mask.cumsum(dim=1) - 1).clamp(min=0)  # as token_logprobs numbers them
    output = model(
        input_ids=prompt_ids[:, rest:],
        attention_mask=attention,
        position_ids=positions,
        logits_to_keep=1,
        use_cache=True,
        **keyword,
    )
    cache.batch_repeat_interleave(samples_per_prompt)
    return Prefill(
        keyword,
        output.logits[:, -1].repeat_interleave(samples_per_prompt, dim=0),
        attention.repeat_interleave(samples_per_prompt, dim=0),
        lengths.repeat_interleave(samples_per_prompt, dim=0),
    )


def pick(logits: Tensor, temperature: float, greedy: bool) -> Tensor:
    """One token per row [n] from logits [n, V]: argmax, or a draw from softmax(logits / T)."""
    logits = logits.float()
    if greedy:
        return logits.argmax(dim=-1)
    # Inverse-CDF draw: one uniform number per row (torch.multinomial draws one per vocabulary
    # entry, ~15x slower on CPU). right=True never picks a token of probability 0.
    cdf = (logits / temperature).softmax(dim=-1).cumsum(dim=-1)  # [n, V]
    uniform = torch.rand(len(cdf), 1, device=cdf.device) * cdf[:, -1:]  # [n, 1]
    return torch.searchsorted(cdf, uniform, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)


def feed(
    model: PreTrainedModel,
    cache: dict[str, DynamicCache],
    token: Tensor,
    attention: Tensor,
    position: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the running rows' new tokens [n] through the KV cache (`Prefill.cache`): the logits
    [n, V] of the token after each, and the attention mask [n, t + 1] and position ids [n, 1]
    moved on by that token."""
    attention = torch.cat([attention, attention.new_ones(len(token), 1)], dim=1)
    logits = model(
        input_ids=token[:, None],
        attention_mask=attention,
        position_ids=position,
        use_cache=True,
        **cache,
    ).logits[:, -1]
    return logits, attention, position + 1


class ToolCalls:
    """Tool-call bookkeeping of multi-turn episodes (only with a ToolEnv): the tool-result
    tokens each row must still be fed, and the text of its current policy turn, extended by
    the one new token's text at each step (never re-decoded whole)."""

    def __init__(self, tools: ToolEnv, tokenizer: PreTrainedTokenizerBase, rows: int) -> None:
        self.tools, self.tokenizer = tools, tokenizer
        self.pending: list[list[int]] = [[] for _ in range(rows)]
        self.turn_text = [""] * rows
        self.turns = [1] * rows

    def force(self, active: Tensor, token: Tensor) -> tuple[Tensor, Tensor]:
        """Sampled tokens [n] of the `active` rows, with pending tool-result tokens forced in
        their place; and the mask [n] of the forced ones."""
        rows = active.tolist()
        forced = [bool(self.pending[row]) for row in rows]
        if any(forced):
            values = token.tolist()
            for i, row in enumerate(rows):
                if forced[i]:
                    values[i] = self.pending[row].pop(0)
            token = torch.tensor(values, dtype=token.dtype, device=token.device)
        return token, torch.tensor(forced, device=token.device)

    def after(self, active: Tensor, token: Tensor, live: Tensor, ids: Tensor) -> Tensor:
        """Look for a call in each live sampled token's turn: queue the tool's answer, or,
        in a row's last turn, end it. `ids` [N, t] holds every row's tokens so far (a running
        row has written all t). Returns the mask [n] of rows that end here."""
        ending = [False] * len(token)
        for i, (row, value) in enumerate(zip(active.tolist(), token.tolist(), strict=True)):
            if not live[i]:
                continue
            self.turn_text[row] += self.tokenizer.decode([value], skip_special_tokens=True)
            if self.tools.stop not in self.turn_text[row]:
                continue
            if self.turns[row] >= self.tools.max_turns:
                ending[i] = True
                continue
            episode = self.tokenizer.decode(ids[row].tolist(), skip_special_tokens=True)
            answer = self.tools.call(episode)
            self.pending[row] = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            self.turn_text[row], self.turns[row] = "", self.turns[row] + 1
        return torch.tensor(ending, device=token.device)


@torch.no_grad()
def sample_episodes(
    model: PreTrainedModel,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    greedy: bool,
    eos: int,
    pad: int,
    tool_calls: ToolCalls | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """K episodes of each distinct left-padded prompt [P, Tp] (N = P * K rows, row = p * K +
    k): completion ids [N, Tc] (`pad` after each row's end), the policy mask [N, Tc] (1 =
    sampled, 0 = tool result or padding) and the lengths [N].

    One token per running row per step through the KV cache (`feed`): drawn by `pick`, or, with
    `tool_calls`, the next token of a pending tool result (forced). A row ends at a sampled
    EOS, after `max_new_tokens` sampled tokens, or at a tool call in its last turn
    (`tools.max_turns`); an ended row leaves the batch and the cache, so a step costs only
    the rows still running. Tokens stay ids, never re-tokenised, so log-probs are exact.
    """
    cache, logits, attention, position = prefill(model, prompt_ids, prompt_mask, samples_per_prompt)
    rows = logits.shape[0]
    ids = prompt_ids.new_full((rows, max_new_tokens), pad)
    policy = prompt_ids.new_zeros((rows, max_new_tokens))
    lengths = prompt_ids.new_zeros(rows)
    spent = prompt_ids.new_zeros(rows)  # sampled tokens per row
    active = torch.arange(rows, device=prompt_ids.device)  # [n] rows still running
    for step in itertools.count():  # every running row writes its token `step` now
        token = pick(logits, temperature, greedy)  # [n]
        forced = torch.zeros_like(token, dtype=torch.bool)
        if tool_calls is not None:
            token, forced = tool_calls.force(active, token)
        if step == ids.shape[1]:  # tool results outgrew the buffer
            ids = torch.cat([ids, ids.new_full((rows, max_new_tokens), pad)], dim=1)
            policy = torch.cat([policy, policy.new_zeros((rows, max_new_tokens))], dim=1)
        ids[active, step] = token
        policy[active, step] = (~forced).long()
        lengths[active] = step + 1
        spent[active] += (~forced).long()
        ended = ~forced & ((token == eos) | (spent[active] >= max_new_tokens))
        if tool_calls is not None:
            ended |= tool_calls.after(active, token, ~forced & ~ended, ids[:, : step + 1])
        if ended.all():
            break
        if ended.any():
            keep = (~ended).nonzero().squeeze(1)
            active, token, attention, position = (
                t[keep] for t in (active, token, attention, position)
            )
            next(iter(cache.values())).batch_select_indices(keep)
        logits, attention, position = feed(model, cache, token, attention, position)
    width = int(lengths.max())
    return ids[:, :width], policy[:, :width], lengths


def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    tools: ToolEnv | None = None,
) -> list[str]:
    """Greedy completions of `prompts`, in batches (for evaluation), using `tools` if given.
    Batches are cut from the prompts sorted by length, so that little of a batch is padding."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts = [""] * len(prompts)
    for start in range(0, len(prompts), batch_size):
        chunk = order[start : start + batch_size]
        batch = [prompts[i] for i in chunk]
        done = sample(model, tokenizer, batch, 1, max_new_tokens, greedy=True, tools=tools).texts
        for i, text in zip(chunk, done, strict=True):
            texts[i] = text
    return texts
