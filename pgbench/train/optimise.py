"""The update phase: the shared loss of a prepared rollout (pgbench.train.update), its backward
pass micro-batch by micro-batch (`accumulate_gradients`), and `optimise`: the estimator's
passes of minibatches, each one clipped AdamW step on gradients combined across processes; a
NaN/inf loss or gradient raises NonFinite.

    per token: policy loss of rho, A      loss.policy / loss.ratio / loss.clip_* (policy_losses)
               x w                          stale rollouts, loss.rollout_correction=tis
               - entropy_coef * entropy     if loss.entropy_coef > 0
               + beta * KL                  if kl.placement=loss
               + vf_coef * value loss       if the estimator has a value head
    reduced by loss.aggregation over the rows.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor

from pgbench import hardware
from pgbench.config.verbs import Config
from pgbench.engine.scoring import TokenScores, token_logprobs
from pgbench.estimators import Estimator
from pgbench.parallel import Processes
from pgbench.rl.correction import off_policy_mask
from pgbench.rl.losses import (
    aggregate,
    high_entropy_mask,
    importance_corrected_kl,
    kl_per_token,
    prompt_groups,
)
from pgbench.rl.policy_losses import Clip, FormKnobs, policy_loss
from pgbench.train.parts import Parts
from pgbench.train.update import Prepared


def token_loss(
    config: Config,
    estimator: Estimator,
    prepared: Prepared,
    chunk: Tensor,
    scores: TokenScores,
    with_value_loss: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-token loss of the micro-batch `chunk` (rows of `prepared`, scored as `scores`): the
    policy-loss form, the rollout-correction weight, the entropy bonus, the KL when placed in
    the loss and the value loss; with where the clip binds and the value loss alone."""
    lc, old, mask = config.loss, prepared.old_logprobs[chunk], prepared.mask[chunk]
    clip = Clip(lc.clip_low, lc.clip_high, lc.dual_clip)
    knobs = FormKnobs(**{f.name: getattr(lc, f.name) for f in fields(FormKnobs)})
    per_token, binds = policy_loss(
        scores.logprobs,
        old,
        prepared.advantages[chunk],
        mask,
        clip,
        lc.policy,
        lc.ratio,
        knobs,
    )
    if prepared.weight is not None:  # rollout correction: TIS's truncated weight
        per_token = per_token * prepared.weight[chunk]
    if lc.off_policy_mask > 0:  # DeepSeek-V3.2: drop A < 0 sequences far from the sampler
        behaviour = prepared.rollout.behaviour
        sampling = old if behaviour is None else behaviour[chunk]
        per_token = per_token * off_policy_mask(
            scores.logprobs, sampling, prepared.advantages[chunk], mask, lc.off_policy_mask
        )
    if lc.top_entropy_quantile < 1:  # train on the high-entropy tokens only
        per_token = per_token * high_entropy_mask(scores.entropy, mask, lc.top_entropy_quantile)
    if lc.entropy_coef > 0:  # the bonus: higher entropy, lower loss
        per_token = per_token - lc.entropy_coef * scores.entropy
    if prepared.ref_logprobs is not None and config.kl.placement == "loss":
        kl = kl_per_token(scores.logprobs, prepared.ref_logprobs[chunk], config.kl.estimator)
        if config.kl.is_correction:  # DeepSeek-V3.2's unbiased KL: times rho = pi / pi_old
            kl = importance_corrected_kl(kl, scores.logprobs, old)
        per_token = per_token + config.kl.coef * kl
    value_loss = None
    if estimator.uses_value_head and with_value_loss:
        value_loss = estimator.value_loss(
            scores.values, prepared.old_values[chunk], prepared.returns[chunk]
        )
        per_token = per_token + estimator.vf_coef * value_loss
    return per_token, binds, value_loss


def accumulate_gradients(
    config: Config,
    estimator: Estimator,
    model: torch.nn.Module,
    value_head: torch.nn.Module | None,
    prepared: Prepared,
    rows: Tensor,
    with_value_loss: bool = True,
) -> dict[str, float]:
    """Add the gradient of the loss on `rows` (an index tensor) to `.grad`; returns statistics."""
    reduce, chunks, groups = _reduction(config, prepared, rows)
    stats = {"loss": 0.0, "entropy": 0.0, "clipped": 0.0, "value_loss": 0.0, "approx_kl": 0.0}
    live, prepared.live = prepared.live, None  # a graph is back-propagated at most once
    all_rows = torch.arange(len(prepared.mask), device=prepared.mask.device)
    for chunk, chunk_groups in zip(chunks, groups, strict=True):
        chunk_mask = prepared.mask[chunk]
        reduce["group_tokens"] = chunk_groups
        if live is not None and torch.equal(chunk, all_rows):
            scores = live
        else:
            scores = token_logprobs(
                model,
                prepared.rollout.rows(chunk),
                config.rollout.temperature,
                with_entropy=True,
                value_head=value_head,
                entropy_grad=config.loss.entropy_coef > 0,
            )
        per_token, binds, value_loss = token_loss(
            config, estimator, prepared, chunk, scores, with_value_loss
        )
        if value_loss is not None:
            stats["value_loss"] += aggregate(value_loss.detach(), chunk_mask, **reduce).item()
        loss = aggregate(per_token, chunk_mask, **reduce)
        loss.backward()
        stats["loss"] += loss.item()
        stats["entropy"] += (scores.entropy.detach() * chunk_mask).sum().item()
        stats["clipped"] += (binds.float() * chunk_mask).sum().item()
        # CleanRL's approx_kl: k3 of pi_old -> pi
        log_rho = (scores.logprobs - prepared.old_logprobs[chunk]).detach()
        stats["approx_kl"] += ((log_rho.exp() - 1 - log_rho) * chunk_mask).sum().item()
    tokens = max(reduce["batch_tokens"], 1)
    return {
        "loss": stats["loss"],
        "value_loss": stats["value_loss"],
        "entropy": stats["entropy"] / tokens,
        "clip_fraction": stats["clipped"] / tokens,
        "approx_kl": stats["approx_kl"] / tokens,
    }


def _reduction(
    config: Config, prepared: Prepared, rows: Tensor
) -> tuple[dict[str, Any], tuple[Tensor, ...], list[Tensor | None]]:
    """How `loss.aggregation` reduces the loss over `rows` (the batch's sequence and token
    counts), the micro-batches of `rows`, and prompt_mean's per-row group token counts."""
    reduce: dict[str, Any] = dict(
        how=config.loss.aggregation,
        batch_sequences=len(rows),
        batch_tokens=int(prepared.mask[rows].sum()),
        max_new_tokens=config.rollout.max_new_tokens,
    )
    chunks = rows.split(config.trainer.micro_batch_size)
    groups: list[Tensor | None] = [None] * len(chunks)
    if config.loss.aggregation == "prompt_mean":
        samples = config.rollout.samples_per_prompt
        group_tokens, reduce["batch_prompts"] = prompt_groups(prepared.mask, rows, samples)
        groups = list(group_tokens.split(config.trainer.micro_batch_size))
    return reduce, chunks, groups


class NonFinite(Exception):
    """A step's loss or gradient is NaN/inf (the message names which); the step is skipped."""


def optimise(
    config: Config,
    prepared: Prepared,
    seed: int,
    *,
    parts: Parts,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
) -> list[dict[str, float]]:
    """`epochs` passes of `minibatches` clipped AdamW steps (1 x 1 for most estimators) of
    `config.estimator` over `prepared`; the statistics of each. `seed` orders the rows of a
    several-pass estimator. Raises NonFinite on a NaN/inf loss or gradient."""
    estimator, device = config.estimator, parts.device
    rows = len(prepared.mask)
    shuffle = torch.Generator().manual_seed(seed)
    clip = config.trainer.grad_clip if config.trainer.grad_clip > 0 else math.inf
    precision = config.trainer.precision
    updates, seconds = [], prepared.seconds
    epochs, minibatches = config.trainer.epochs, config.trainer.minibatches
    for _ in range(epochs):
        if epochs > 1:  # a CPU generator, the same order on every device
            order = torch.randperm(rows, generator=shuffle, device="cpu").to(device)
        else:
            order = torch.arange(rows, device=device)
        for minibatch in order.chunk(minibatches):
            with hardware.timed(seconds, "update", device), hardware.autocast(device, precision):
                stats = accumulate_gradients(
                    config, estimator, parts.policy.model, parts.value_head, prepared, minibatch
                )
                _combine_gradients(config, parts.processes, params, prepared, minibatch, stats)
            with hardware.timed(seconds, "optimizer", device):
                stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, clip).item()
                for key, cause in (("loss", "loss"), ("grad_norm", "gradient")):
                    if not math.isfinite(stats[key]):
                        optimizer.zero_grad(set_to_none=True)
                        raise NonFinite(cause)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            updates.append(stats)
    return updates


def _combine_gradients(
    config: Config,
    processes: Processes,
    params: list[torch.nn.Parameter],
    prepared: Prepared,
    rows: Tensor,
    stats: dict[str, float],
) -> None:
    """Several processes: every `.grad` and the loss become those of the whole batch."""
    if processes.world == 1:
        return
    mask, how = prepared.mask[rows], config.loss.aggregation
    weight = processes.combine_gradients_(params, mask, how)
    for key in ("loss", "value_loss"):
        stats[key] = processes.sum(stats[key] * weight)
