"""Stale rollouts (rollout.staleness): which weights sample each step, the behaviour log-probs,
the checkpointed queue, and the ratio and correction the loss takes against them."""

import io

import torch

from pgbench.config.sections import LoraConfig
from pgbench.config.verbs import resolve
from pgbench.engine.scoring import token_logprobs, token_logprobs_chunked
from pgbench.models.policy import load_policy
from pgbench.parallel import current
from pgbench.train.optimise import accumulate_gradients
from pgbench.train.pipeline import RolloutQueue
from pgbench.train.update import prepare
from tests.pgbench.train.test_update import multi_turn_rollout

CPU = torch.device("cpu")


def queue(run_overrides, staleness: int, policy) -> RolloutQueue:
    config = resolve(run_overrides | {"rollout.staleness": str(staleness)})
    train = config.task.splits().train
    return RolloutQueue(config, policy, train, current("cpu"), CPU)


def test_step_t_trains_on_the_rollout_sampled_k_steps_before(micro_policy, run_overrides):
    policy = load_policy(str(micro_policy), LoraConfig(), CPU)
    stale, fresh = queue(run_overrides, 2, policy), queue(run_overrides, 0, policy)
    lags = []
    for step in range(4):
        collected, _, lag = stale.take(step)
        lags.append(lag)
        assert sorted(stale.pending) == [step + 1, step + 2]
        # the weights never changed here, so each step's rollout is the on-policy one
        on_policy, _, _ = fresh.take(step)
        assert collected.rollout.texts == on_policy.rollout.texts
        assert torch.equal(collected.rewards, on_policy.rewards)
        assert on_policy.rollout.behaviour is None  # staleness 0: the trainer's scores
        scored = token_logprobs_chunked(policy.model, collected.rollout, 32, 0.5).logprobs
        torch.testing.assert_close(collected.rollout.behaviour, scored)
    assert lags == [0, 1, 2, 2]
    assert collected.seconds["generate"] > 0 and collected.seconds["behaviour"] > 0


def test_the_pending_rollouts_survive_a_checkpoint(micro_policy, run_overrides):
    policy = load_policy(str(micro_policy), LoraConfig(), CPU)
    before = queue(run_overrides, 2, policy)
    before.take(0)
    buffer = io.BytesIO()
    torch.save({"pending": before.state_dict()}, buffer)
    buffer.seek(0)
    after = queue(run_overrides, 2, policy)
    after.load_state_dict(torch.load(buffer, weights_only=True)["pending"])
    for step in (1, 2):
        (a_at, a), (b_at, b) = before.pending[step], after.pending[step]
        assert a_at == b_at == 0 and a.rollout.texts == b.rollout.texts
        assert torch.equal(a.rollout.behaviour, b.rollout.behaviour)
        assert torch.equal(a.rewards, b.rewards)


def stale_batch(micro_policy, micro_task, run_overrides, extra):
    """A scored 2 x 2 rollout whose behaviour log-probs are the policy's plus noise."""
    policy = load_policy(str(micro_policy), LoraConfig(), CPU)
    base = {"estimator": "reinforce", "kl.coef": "0", "rollout.staleness": "1"}
    config = resolve(run_overrides | base | extra)
    rollout = multi_turn_rollout(policy, micro_task)
    with torch.no_grad():
        now = token_logprobs(policy.model, rollout, config.rollout.temperature).logprobs
    noise = 0.5 * torch.randn(now.shape, generator=torch.Generator().manual_seed(0))
    rollout.behaviour = now + noise
    rewards = torch.tensor([[1.0, 0.0], [0.5, 0.25]])
    prepared = prepare(
        config, config.estimator, model=policy.model, rollout=rollout, rewards=rewards
    )
    return config, policy, prepared


def gradients(config, policy, prepared, loss_of):
    """pgbench's gradient of the step, and the gradient of `loss_of(logprobs)` by hand."""
    model = policy.model
    model.zero_grad(set_to_none=True)
    accumulate_gradients(config, config.estimator, model, None, prepared, torch.arange(4))
    ours = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    logprobs = token_logprobs(model, prepared.rollout, config.rollout.temperature).logprobs
    loss_of(logprobs).backward()
    hand = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return ours, hand


def test_without_correction_rho_is_taken_against_the_behaviour(
    micro_policy, micro_task, run_overrides
):
    # unclipped (loss.clip_* = 0): loss = -rho A per token, rho = pi / mu, token_mean
    unclipped = {"loss.clip_low": "0", "loss.clip_high": "0"}
    config, policy, prepared = stale_batch(micro_policy, micro_task, run_overrides, unclipped)
    mu, mask, advantages = prepared.rollout.behaviour, prepared.mask, prepared.advantages
    assert torch.equal(prepared.old_logprobs, mu) and prepared.drift > 0.1

    def by_hand(logprobs):
        return (-advantages * torch.exp(logprobs - mu) * mask).sum() / mask.sum()

    ours, hand = gradients(config, policy, prepared, by_hand)
    torch.testing.assert_close(ours, hand)


def test_tis_weights_each_tokens_gradient_by_the_truncated_ratio(
    micro_policy, micro_task, run_overrides
):
    extra = {"loss.rollout_correction": "tis", "loss.rollout_correction_high": "1.5"}
    config, policy, prepared = stale_batch(micro_policy, micro_task, run_overrides, extra)
    mu, mask, advantages = prepared.rollout.behaviour, prepared.mask, prepared.advantages
    old = prepared.old_logprobs
    weight = torch.exp(old - mu).clamp(max=1.5)
    assert (weight[mask > 0] < 1.5).any() and (weight[mask > 0] == 1.5).any()

    def by_hand(logprobs):  # rho = pi / pi_old = 1 in value: -w A grad log pi
        return (-weight * advantages * torch.exp(logprobs - old) * mask).sum() / mask.sum()

    ours, hand = gradients(config, policy, prepared, by_hand)
    torch.testing.assert_close(ours, hand)


def test_mis_drops_the_tokens_outside_its_bounds_from_the_loss(
    micro_policy, micro_task, run_overrides
):
    extra = {"loss.rollout_correction": "mis"}
    config, policy, prepared = stale_batch(micro_policy, micro_task, run_overrides, extra)
    mu, advantages, old = prepared.rollout.behaviour, prepared.advantages, prepared.old_logprobs
    policy_mask = prepared.rollout.policy_mask.float()
    log_w = old - mu
    kept = policy_mask * (log_w.abs() <= torch.log(torch.tensor(2.0)))
    assert torch.equal(prepared.mask, kept) and 0 < kept.sum() < policy_mask.sum()

    def by_hand(logprobs):
        return (-advantages * torch.exp(logprobs - old) * kept).sum() / kept.sum()

    ours, hand = gradients(config, policy, prepared, by_hand)
    torch.testing.assert_close(ours, hand)
