"""From a sampled rollout to gradients, the same way for every estimator.

`score` adds the overlong penalty to the task rewards, drops prompts whose K rewards are
then all equal (rollout.drop_uniform_groups) and scores the rollout once (rollout-time
log-probs, reference log-probs, values); `advantages` folds in the KL penalty and asks the
estimator for advantages (`prepare` does both). A stale rollout (`rollout.staleness`) then
takes its ratio against the recorded behaviour log-probs, or is corrected (rl.correction).
`accumulate_gradients` back-propagates the shared loss over some rows of it, micro-batch by
micro-batch:

    per token: policy loss of rho, A      loss.policy / loss.ratio / loss.clip_* (policy_losses)
               x w                          stale rollouts, loss.rollout_correction=tis
               - entropy_coef * entropy     if loss.entropy_coef > 0
               + beta * KL                  if kl.placement=loss
               + vf_coef * value loss       if the estimator has a value head
    reduced by loss.aggregation over the rows.

`optimise` is the update phase: the estimator's passes of minibatches, each one clipped AdamW
step on gradients combined across processes; a NaN/inf loss or gradient raises NonFinite.

With a single update pass (epochs = minibatches = 1) over rows that fit one micro-batch, the
policy being updated is exactly the rollout-time policy, so the scoring forward keeps its graph
(`Prepared.live`) and is the one back-propagated: one policy forward per step instead of two.
That forward is then timed as part of the update (`Prepared.seconds`, logged as `timing/*_s`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from pgbench import hardware
from pgbench.config.verbs import Config
from pgbench.engine.sampling import Rollout
from pgbench.engine.scoring import TokenScores, token_logprobs, token_logprobs_chunked
from pgbench.estimators import Batch, Estimator
from pgbench.models.policy import Reference
from pgbench.parallel import Processes
from pgbench.rl.correction import correct
from pgbench.rl.losses import (
    aggregate,
    kl_per_token,
    overlong_penalty,
    prompt_groups,
    uniform_groups,
)
from pgbench.rl.policy_losses import Clip, FormKnobs, policy_loss
from pgbench.train.parts import Parts


@dataclass
class Prepared:
    """A scored rollout, ready for one or several update passes. N rows, T tokens."""

    rollout: Rollout
    mask: Tensor  # [N, T] 1.0 on the policy's own tokens (not tool results, not padding)
    old_logprobs: Tensor  # [N, T] log pi_old, the sampling policy
    ref_logprobs: Tensor | None  # [N, T] reference log-probs (None when kl.coef = 0)
    old_values: Tensor | None  # [N, T] value estimates at rollout time
    advantages: Tensor  # [N, T]
    returns: Tensor | None  # [N, T] value targets
    seq_kl: Tensor  # [N] summed per-token KL to the reference (0 without a reference)
    uniform_groups: int  # prompts whose K rewards were all equal (dropped if configured)
    weight: Tensor | None = None  # [N, T] rollout-correction weight on the policy loss (TIS)
    drift: float = 0.0  # mean |log pi_old - log mu| over the policy's tokens (stale rollouts)
    live: TokenScores | None = None  # scores of all rows with their graph, for one backward
    seconds: dict[str, float] = field(default_factory=dict)  # time per phase (hardware.timed)


@dataclass
class Scored:
    """A rollout's kept rows, scored once: log-probs and values, reference KL, rewards."""

    rollout: Rollout
    rewards: Tensor  # [P, K] task reward + overlong penalty
    baseline: Tensor | None  # [P] the greedy completions' reward (estimators with needs_greedy)
    mask: Tensor  # [N, T] the policy's own tokens
    scores: TokenScores  # rollout-time log-probs (and values), without graph
    ref_logprobs: Tensor | None
    kl: Tensor  # [N, T] per-token KL to the reference (0 without one)
    uniform_groups: int
    live: TokenScores | None  # the same scores with their graph, for the one backward
    seconds: dict[str, float]


def _shaped(
    config: Config, rollout: Rollout, rewards: Tensor, baseline: Tensor | None
) -> tuple[Rollout, Tensor, Tensor | None, Tensor]:
    """Rewards with DAPO's overlong penalty, and the batch without its uniform groups when
    rollout.drop_uniform_groups is set; with the [P] mask of uniform groups."""
    cfg = config.rollout
    # uniform groups are judged once, on the rewards the estimator sees before the KL: task
    # reward plus overlong penalty (a group whose lengths differ still carries a signal)
    lengths = rollout.policy_mask.sum(dim=1)
    overlong = overlong_penalty(
        lengths, cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty
    )
    rewards = rewards + overlong.view_as(rewards)
    uniform = uniform_groups(rewards)  # [P]
    if cfg.drop_uniform_groups and not uniform.all():  # an all-uniform batch stays
        rollout, rewards, baseline = _keep_groups(~uniform, rollout, rewards, baseline)
    return rollout, rewards, baseline, uniform


def score(
    config: Config,
    *,
    model: torch.nn.Module,
    reference: Reference | None,
    value_head: torch.nn.Module | None,
    rollout: Rollout,
    rewards: Tensor,
    baseline: Tensor | None = None,
) -> Scored:
    """Overlong penalty, uniform groups dropped (if configured), and the rollout scored:
    rollout-time log-probs and values, reference log-probs and the per-token KL. A single
    update pass (trainer.epochs = minibatches = 1) keeps the scoring forward's graph when the
    rows fit a micro-batch."""
    micro, temperature = config.trainer.micro_batch_size, config.rollout.temperature
    rollout, rewards, baseline, uniform = _shaped(config, rollout, rewards, baseline)
    mask = rollout.policy_mask.float()  # tool results are the environment's: no loss, no KL
    live, device = None, mask.device
    phases = ("old_logprobs", "reference", "advantages", "update", "optimizer")
    seconds = dict.fromkeys(phases, 0.0)
    one_pass = config.trainer.epochs == config.trainer.minibatches == 1
    if one_pass and len(rollout.texts) <= micro:
        with hardware.timed(seconds, "update", device):  # the update's own forward
            live = token_logprobs(
                model,
                rollout,
                temperature,
                with_entropy=True,
                value_head=value_head,
                entropy_grad=config.loss.entropy_coef > 0,
            )
        values = live.values.detach() if live.values is not None else None
        scores = TokenScores(live.logprobs.detach(), None, values)
    else:
        with hardware.timed(seconds, "old_logprobs", device):
            scores = token_logprobs_chunked(model, rollout, micro, temperature, value_head)
    kl, ref_logprobs = torch.zeros_like(mask), None
    if reference is not None:
        with hardware.timed(seconds, "reference", device):
            ref_logprobs = reference.logprobs(rollout, micro, temperature)
        kl = kl_per_token(scores.logprobs, ref_logprobs, config.kl.estimator) * mask
    return Scored(
        rollout=rollout,
        rewards=rewards,
        baseline=baseline,
        mask=mask,
        scores=scores,
        ref_logprobs=ref_logprobs,
        kl=kl,
        uniform_groups=int(uniform.sum()),
        live=live,
        seconds=seconds,
    )


def advantages(
    config: Config, estimator: Estimator, scored: Scored, state: dict[str, Any]
) -> Prepared:
    """The KL penalty folded into the rewards (kl.placement=reward), then the estimator's
    advantages: the only place where estimators differ. A stale rollout then takes its
    behaviour log-probs (or their correction)."""
    mask, kl = scored.mask, scored.kl
    penalty = config.kl.coef * kl if config.kl.placement == "reward" else torch.zeros_like(kl)
    batch = Batch.shaped(scored.rewards, mask, penalty, scored.scores.values, scored.baseline)
    with hardware.timed(scored.seconds, "advantages", mask.device):
        result = estimator.token_advantages(batch, state)
    prepared = Prepared(
        rollout=scored.rollout,
        mask=mask,
        old_logprobs=scored.scores.logprobs,
        ref_logprobs=scored.ref_logprobs,
        old_values=scored.scores.values,
        advantages=result.advantages,
        returns=result.returns,
        seq_kl=kl.sum(dim=1),
        uniform_groups=scored.uniform_groups,
        live=scored.live,
        seconds=scored.seconds,
    )
    return _behaviour(prepared, config) if scored.rollout.behaviour is not None else prepared


def prepare(
    config: Config,
    estimator: Estimator,
    *,
    model: torch.nn.Module,
    rollout: Rollout,
    rewards: Tensor,
    reference: Reference | None = None,
    value_head: torch.nn.Module | None = None,
    state: dict[str, Any] | None = None,
    baseline: Tensor | None = None,
) -> Prepared:
    """`score` then `advantages`, in one call (gradient variance, tests)."""
    scored = score(
        config,
        model=model,
        reference=reference,
        value_head=value_head,
        rollout=rollout,
        rewards=rewards,
        baseline=baseline,
    )
    return advantages(config, estimator, scored, {} if state is None else state)


def _behaviour(prepared: Prepared, config: Config) -> Prepared:
    """A stale rollout (`rollout.staleness`): the ratio against the behaviour log-probs mu, or
    the trainer's with mu's correction (`pgbench.rl.correction`), after the advantages."""
    mu, old, mask = prepared.rollout.behaviour, prepared.old_logprobs, prepared.mask
    drift = float(((old - mu).abs() * mask).sum() / mask.sum().clamp(min=1))
    lc = config.loss
    if lc.rollout_correction == "none":
        return dataclasses.replace(prepared, old_logprobs=mu, drift=drift)
    weight, kept = correct(
        old,
        mu,
        mask,
        lc.rollout_correction,
        level=lc.rollout_correction_level,
        high=lc.rollout_correction_high,
        low=lc.rollout_correction_low,
    )
    return dataclasses.replace(prepared, mask=kept, weight=weight, drift=drift)


def _keep_groups(
    keep: Tensor, rollout: Rollout, rewards: Tensor, baseline: Tensor | None
) -> tuple[Rollout, Tensor, Tensor | None]:
    """The prompts where `keep` [P] is true, with their K rows each."""
    groups = keep.nonzero().flatten()
    samples = rewards.shape[1]
    rows = (groups[:, None] * samples + torch.arange(samples, device=groups.device)).flatten()
    return rollout.rows(rows), rewards[groups], None if baseline is None else baseline[groups]


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
    lc, old = config.loss, prepared.old_logprobs[chunk]
    clip = Clip(lc.clip_low, lc.clip_high, lc.dual_clip)
    knobs = FormKnobs(**{f.name: getattr(lc, f.name) for f in fields(FormKnobs)})
    per_token, binds = policy_loss(
        scores.logprobs,
        old,
        prepared.advantages[chunk],
        prepared.mask[chunk],
        clip,
        lc.policy,
        lc.ratio,
        knobs,
    )
    if prepared.weight is not None:  # rollout correction: TIS's truncated weight
        per_token = per_token * prepared.weight[chunk]
    if lc.entropy_coef > 0:  # the bonus: higher entropy, lower loss
        per_token = per_token - lc.entropy_coef * scores.entropy
    if prepared.ref_logprobs is not None and config.kl.placement == "loss":
        kl = kl_per_token(scores.logprobs, prepared.ref_logprobs[chunk], config.kl.estimator)
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
    mask = prepared.mask[rows]
    reduce = dict(
        how=config.loss.aggregation,
        batch_sequences=len(rows),
        batch_tokens=int(mask.sum()),
        max_new_tokens=config.rollout.max_new_tokens,
    )
    chunks = rows.split(config.trainer.micro_batch_size)
    groups = [None] * len(chunks)  # prompt_mean only: each row's prompt-group token count
    if config.loss.aggregation == "prompt_mean":
        samples = config.rollout.samples_per_prompt
        group_tokens, reduce["batch_prompts"] = prompt_groups(prepared.mask, rows, samples)
        groups = group_tokens.split(config.trainer.micro_batch_size)
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
