"""From a sampled rollout to the batch the loss is computed on, the same way for every
estimator.

`score` adds the overlong penalty to the task rewards, drops prompts whose K rewards are
then all equal (rollout.drop_uniform_groups) and scores the rollout once (rollout-time
log-probs, reference log-probs, values); `advantages` folds in the KL penalty and asks the
estimator for advantages (`prepare` does both). A stale rollout (`rollout.staleness`) then
takes its ratio against the recorded behaviour log-probs, or is corrected (rl.correction).
The update phase (the shared loss, its backward and the optimiser steps) is
pgbench.train.optimise.

With a single update pass (epochs = minibatches = 1) over rows that fit one micro-batch, the
policy being updated is exactly the rollout-time policy, so the scoring forward keeps its graph
(`Prepared.live`) and is the one back-propagated: one policy forward per step instead of two.
That forward is then timed as part of the update (`Prepared.seconds`, logged as `timing/*_s`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from pgbench import hardware
from pgbench.config.verbs import Config
from pgbench.engine.sampling import Rollout
from pgbench.engine.scoring import TokenScores, token_logprobs, token_logprobs_chunked
from pgbench.estimators import Batch, Estimator
from pgbench.models.policy import Reference
from pgbench.rl.correction import correct
from pgbench.rl.losses import (
    kl_per_token,
    overlong_penalty,
    uniform_groups,
)


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
    components: Tensor | None  # [C, P, K] the task's reward components (several rewards)
    component_weights: Tensor | None  # [C] their weights: `rewards` = weighted sum + penalties
    mask: Tensor  # [N, T] the policy's own tokens
    scores: TokenScores  # rollout-time log-probs (and values), without graph
    ref_logprobs: Tensor | None
    kl: Tensor  # [N, T] per-token KL to the reference (0 without one)
    uniform_groups: int
    live: TokenScores | None  # the same scores with their graph, for the one backward
    seconds: dict[str, float]


def _shaped(
    config: Config,
    rollout: Rollout,
    rewards: Tensor,
    baseline: Tensor | None,
    components: Tensor | None,
) -> tuple[Rollout, Tensor, Tensor | None, Tensor | None, Tensor]:
    """Rewards with DAPO's overlong penalty, and the batch without its uniform groups when
    rollout.drop_uniform_groups is set (baseline [P] and components [C, P, K] with it); with
    the [P] mask of uniform groups."""
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
        kept = _keep_groups(~uniform, rollout, rewards, baseline, components)
        rollout, rewards, baseline, components = kept
    return rollout, rewards, baseline, components, uniform


def score(
    config: Config,
    *,
    model: torch.nn.Module,
    reference: Reference | None,
    value_head: torch.nn.Module | None,
    rollout: Rollout,
    rewards: Tensor,
    baseline: Tensor | None = None,
    components: Tensor | None = None,
    component_weights: Tensor | None = None,
    sq_probs: bool | None = None,
) -> Scored:
    """Overlong penalty, uniform groups dropped (if configured), and the rollout scored:
    rollout-time log-probs and values, reference log-probs and the per-token KL. A single
    update pass (trainer.epochs = minibatches = 1) keeps the scoring forward's graph when the
    rows fit a micro-batch. `sq_probs` (default: the estimator's `needs_sq_probs`) adds
    sum_v pi(v)^2 per token, from the same forward. `components` [C, P, K] and
    `component_weights` [C] are the task's reward components (gdpo), if it has several."""
    micro, temperature = config.trainer.micro_batch_size, config.rollout.temperature
    shaped = _shaped(config, rollout, rewards, baseline, components)
    rollout, rewards, baseline, components, uniform = shaped
    mask = rollout.policy_mask.float()  # tool results are the environment's: no loss, no KL
    live, device = None, mask.device
    phases = ("old_logprobs", "reference", "advantages", "update", "optimizer")
    seconds = dict.fromkeys(phases, 0.0)
    one_pass = config.trainer.epochs == config.trainer.minibatches == 1
    sq_probs = config.estimator.needs_sq_probs if sq_probs is None else sq_probs
    if one_pass and len(rollout.texts) <= micro:
        with hardware.timed(seconds, "update", device):  # the update's own forward
            live = token_logprobs(
                model,
                rollout,
                temperature,
                with_entropy=True,
                value_head=value_head,
                entropy_grad=config.loss.entropy_coef > 0,
                with_sq_probs=sq_probs,
            )
        values = live.values.detach() if live.values is not None else None
        scores = TokenScores(live.logprobs.detach(), None, values, live.sq_probs)
    else:
        with hardware.timed(seconds, "old_logprobs", device):
            scores = token_logprobs_chunked(
                model, rollout, micro, temperature, value_head, with_sq_probs=sq_probs
            )
    kl, ref_logprobs = torch.zeros_like(mask), None
    if reference is not None:
        with hardware.timed(seconds, "reference", device):
            ref_logprobs = reference.logprobs(rollout, micro, temperature)
        kl = kl_per_token(scores.logprobs, ref_logprobs, config.kl.estimator) * mask
    return Scored(
        rollout=rollout,
        rewards=rewards,
        baseline=baseline,
        components=components,
        component_weights=component_weights,
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
    batch = Batch.shaped(
        scored.rewards,
        mask,
        penalty,
        scored.scores.values,
        scored.baseline,
        components=scored.components,
        component_weights=scored.component_weights,
        logprobs=scored.scores.logprobs,
        sq_probs=scored.scores.sq_probs,
    )
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
    components: Tensor | None = None,
    component_weights: Tensor | None = None,
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
        components=components,
        component_weights=component_weights,
        sq_probs=estimator.needs_sq_probs,
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
        kl_max=lc.rollout_correction_kl_max,
    )
    return dataclasses.replace(prepared, mask=kept, weight=weight, drift=drift)


def _keep_groups(
    keep: Tensor,
    rollout: Rollout,
    rewards: Tensor,
    baseline: Tensor | None,
    components: Tensor | None,
) -> tuple[Rollout, Tensor, Tensor | None, Tensor | None]:
    """The prompts where `keep` [P] is true, with their K rows each."""
    groups = keep.nonzero().flatten()
    samples = rewards.shape[1]
    rows = (groups[:, None] * samples + torch.arange(samples, device=groups.device)).flatten()
    baseline = None if baseline is None else baseline[groups]
    components = None if components is None else components[:, groups]
    return rollout.rows(rows), rewards[groups], baseline, components
