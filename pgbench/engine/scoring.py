"""The one engine, scoring half: token log-probabilities (and entropy, values) of a rollout's
completions under a model, for the loss, the rollout-time log-probs and the reference.
`pgbench.engine.sampling` samples the rollouts.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel

from pgbench.engine.kv_cache import cache_keyword
from pgbench.engine.sampling import Rollout


class TokenScores(NamedTuple):
    logprobs: Tensor  # [N, Tc] log-probabilities of the completion tokens
    entropy: Tensor | None  # [N, Tc] policy entropy at each position (detached unless asked)
    values: Tensor | None  # [N, Tc] value-head estimate of the state before each token
    sq_probs: Tensor | None = None  # [N, Tc] sum_v pi(v)^2 at each position (detached; if asked)


def token_logprobs(
    model: PreTrainedModel,
    rollout: Rollout,
    temperature: float = 1.0,
    with_entropy: bool = False,
    value_head: torch.nn.Module | None = None,
    entropy_grad: bool = False,
    with_sq_probs: bool = False,
) -> TokenScores:
    """Log-probabilities [N, Tc] of the completion tokens given the prompts.

    Logits are divided by the sampling temperature, so these are the log-probabilities of
    the distribution that was sampled. Only the logits of completion positions are computed.
    Position ids follow the attention mask, as in generation, so left padding does not shift
    them. With `value_head`, it is applied to the last hidden state. The entropy is detached
    unless `entropy_grad` (an entropy bonus back-propagates through it). `with_sq_probs` adds
    sum_v pi(v)^2 at each position, detached (the optimal token baseline's gradient-norm proxy).
    """
    logits, hidden = completion_logits(model, rollout, value_head is not None)
    logits = logits.float()  # [N, Tc, V]: predicts token t
    if temperature != 1.0:  # skipped at 1: a full-vocabulary pass and its backward
        logits = logits / temperature
    log_norm = logits.logsumexp(dim=-1)  # [N, Tc]
    chosen = logits.gather(-1, rollout.completion_ids.unsqueeze(-1)).squeeze(-1)
    entropy = values = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            probs = logits.softmax(dim=-1)
            entropy = log_norm - (probs * logits).sum(dim=-1)  # H = logZ - E_p[logit]
    if value_head is not None:
        values = value_head(hidden.float()).squeeze(-1)
    sq_probs = None
    if with_sq_probs:
        with torch.no_grad():  # sum_v p_v^2 = exp(logsumexp(2 logits) - 2 logZ), in log space
            sq_probs = ((2 * logits).logsumexp(dim=-1) - 2 * log_norm).exp()
    return TokenScores(chosen - log_norm, entropy, values, sq_probs)


def completion_logits(
    model: PreTrainedModel, rollout: Rollout, with_hidden: bool
) -> tuple[Tensor, Tensor | None]:
    """Logits [N, Tc, V] predicting each completion token, and the last hidden states
    [N, Tc, H] they come from (if `with_hidden`).

    Rows with the same prompt (the K samples of one) share one forward of it: the distinct
    prompts run first, their KV cache is repeated for the rows, and the completions run on
    top of it; gradients flow back through the shared cache. Gradient checkpointing drops
    the cache of a forward with gradients in training mode, so such a forward runs every row
    whole, prompt and completion at once.
    """
    attention = torch.cat([rollout.prompt_mask, rollout.completion_mask], dim=1)  # [N, Tp + Tc]
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    prompt_len, completion_len = rollout.prompt_ids.shape[1], rollout.completion_ids.shape[1]
    checkpointing = getattr(model, "is_activation_checkpointing", False) and model.training
    if checkpointing and torch.is_grad_enabled():
        output = model(
            input_ids=torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1),
            attention_mask=attention,
            position_ids=positions,
            logits_to_keep=completion_len + 1,
            output_hidden_states=with_hidden,
            use_cache=False,
        )
        hidden = output.hidden_states[-1][:, -(completion_len + 1) : -1] if with_hidden else None
        return output.logits[:, :-1], hidden
    prompts = torch.cat([rollout.prompt_ids, rollout.prompt_mask], dim=1)
    distinct, row_prompt = torch.unique(prompts, dim=0, return_inverse=True)  # [P, 2 Tp], [N]
    prompt_ids, prompt_mask = distinct[:, :prompt_len], distinct[:, prompt_len:]
    cache = DynamicCache()
    keyword = {cache_keyword(model): cache}
    head = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=(prompt_mask.cumsum(dim=1) - 1).clamp(min=0),
        logits_to_keep=1,
        output_hidden_states=with_hidden,
        use_cache=True,
        **keyword,
    )
    cache.batch_select_indices(row_prompt)
    body = model(
        input_ids=rollout.completion_ids,
        attention_mask=attention,
        position_ids=positions[:, prompt_len:],
        output_hidden_states=with_hidden,
        use_cache=True,
        **keyword,
    )
    logits = torch.cat([head.logits[row_prompt], body.logits[:, :-1]], dim=1)  # [N, Tc, V]
    hidden = None
    if with_hidden:
        last = head.hidden_states[-1][row_prompt, -1:]  # [N, 1, H] state before token 0
        hidden = torch.cat([last, body.hidden_states[-1][:, :-1]], dim=1)
    return logits, hidden


@torch.no_grad()
def token_logprobs_chunked(
    model: PreTrainedModel,
    rollout: Rollout,
    chunk_rows: int,
    temperature: float = 1.0,
    value_head: torch.nn.Module | None = None,
    with_sq_probs: bool = False,
) -> TokenScores:
    """`token_logprobs` without gradients, `chunk_rows` rows at a time so the full-vocabulary
    logits of the whole batch are never held at once."""
    parts = [
        token_logprobs(
            model,
            rollout.rows(slice(start, start + chunk_rows)),
            temperature,
            value_head=value_head,
            with_sq_probs=with_sq_probs,
        )
        for start in range(0, len(rollout.texts), chunk_rows)
    ]
    values = torch.cat([p.values for p in parts]) if value_head is not None else None
    sq_probs = torch.cat([p.sq_probs for p in parts]) if with_sq_probs else None
    return TokenScores(torch.cat([p.logprobs for p in parts]), None, values, sq_probs)
