"""Tool results are the environment's tokens: no loss, KL, advantage, entropy or count."""

import math

import pytest
import torch

from pgbench.config.sections import LoraConfig
from pgbench.config.verbs import resolve
from pgbench.engine.sampling import Rollout, encode_prompts
from pgbench.models.policy import Reference, load_policy
from pgbench.train.optimise import accumulate_gradients
from pgbench.train.update import prepare


def multi_turn_rollout(policy, task) -> Rollout:
    """2 prompts x 2 samples with 8 completion tokens; rows 0 and 1 carry a 3-token tool
    result at positions 2-4 (policy_mask 0 there), row 3 is padded at its last position."""
    prompts = [task.prompt(e, policy.tokenizer) for e in task.splits().train[:2]]
    prompt_ids, prompt_mask = encode_prompts(policy.tokenizer, prompts, torch.device("cpu"))
    prompt_ids, prompt_mask = (
        prompt_ids.repeat_interleave(2, 0),
        prompt_mask.repeat_interleave(2, 0),
    )
    completion_ids = torch.randint(10, len(policy.tokenizer), (4, 8), generator=torch.Generator())
    completion_mask = torch.ones(4, 8, dtype=torch.long)
    completion_mask[3, 7] = 0
    policy_mask = completion_mask.clone()
    policy_mask[:2, 2:5] = 0
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, policy_mask, [""] * 4)


def gradient(config, model, prepared, head) -> tuple[torch.Tensor, dict[str, float]]:
    """The flattened gradient of the loss over all rows, and the update statistics."""
    model.zero_grad(set_to_none=True)
    stats = accumulate_gradients(config, config.estimator, model, head, prepared, torch.arange(4))
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return grad, stats


@pytest.mark.parametrize("estimator", ["rloo", "grpo", "reinforce_pp", "ppo"])
def test_tool_results_get_no_advantage_and_do_not_move_the_loss(
    micro_policy, micro_task, run_overrides, estimator
):
    torch.manual_seed(0)
    config = resolve(
        run_overrides
        | {
            "estimator": estimator,
            "kl.placement": "loss",
            "kl.coef": "0.5",
            "trainer.micro_batch_size": "3",
        }
    )
    policy = load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))
    rollout = multi_turn_rollout(policy, micro_task)
    head = None
    if config.estimator.uses_value_head:
        head = torch.nn.Linear(policy.model.config.hidden_size, 1)
    rewards = torch.tensor([[1.0, 0.0], [0.5, 0.25]])
    prepared = prepare(
        config,
        config.estimator,
        model=policy.model,
        rollout=rollout,
        rewards=rewards,
        reference=Reference(policy),
        value_head=head,
    )
    result = torch.zeros(4, 8, dtype=torch.bool)
    result[:2, 2:5] = True
    assert torch.equal(prepared.mask, rollout.policy_mask.float())
    assert (prepared.advantages[result] == 0).all()
    assert rollout.tokens == 32 - 1 - 6  # 4 x 8, minus one pad and two 3-token results
    before, stats = gradient(config, policy.model, prepared, head)
    # Arbitrary advantages, old and reference log-probs on the result tokens change nothing.
    prepared.advantages[result] = 7.0
    prepared.old_logprobs[result] = -9.0
    prepared.ref_logprobs[result] = 3.0
    if head is not None:
        prepared.old_values[result] = 5.0
        prepared.returns[result] = -5.0
    after, stats_after = gradient(config, policy.model, prepared, head)
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    assert stats_after == stats
    # ... while the same change on a policy token does move it
    prepared.advantages[0, 0] += 1.0
    moved, _ = gradient(config, policy.model, prepared, head)
    assert not torch.equal(moved, before)


@pytest.mark.parametrize("placement", ["reward", "loss"])
@pytest.mark.parametrize("estimator", ["rloo", "grpo", "reinforce", "reinforce_pp", "ppo"])
def test_single_pass_backpropagates_the_scoring_forward_with_the_same_result(
    micro_policy, micro_task, run_overrides, estimator, placement
):
    """One update pass over rows that fit one micro-batch keeps the scoring forward's graph
    (`Prepared.live`) instead of a second forward; advantages, KL, loss and gradients match
    the two-forward path (micro-batches of 3 rows) up to float rounding."""
    policy = load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))
    rollout = multi_turn_rollout(policy, micro_task)
    rewards = torch.tensor([[1.0, 0.0], [0.5, 0.25]])
    single_pass = {"trainer.epochs": "1", "trainer.minibatches": "1"}
    results = []
    for micro in ("4", "3"):  # 4 rows: one micro-batch, the graph is reused; 3: two forwards
        config = resolve(
            run_overrides
            | {"estimator": estimator, "kl.coef": "0.5", "kl.placement": placement}
            | (single_pass if estimator == "ppo" else {})
            | {"trainer.micro_batch_size": micro}
        )
        head = None
        if config.estimator.uses_value_head:
            torch.manual_seed(0)
            head = torch.nn.Linear(policy.model.config.hidden_size, 1)
        prepared = prepare(
            config,
            config.estimator,
            model=policy.model,
            rollout=rollout,
            rewards=rewards,
            reference=Reference(policy),
            value_head=head,
        )
        assert (prepared.live is not None) == (micro == "4")
        grad, stats = gradient(config, policy.model, prepared, head)
        if head is not None:
            grad = torch.cat([grad, head.weight.grad.flatten(), head.bias.grad])
        results.append((prepared, grad, stats))
    (fast, fast_grad, fast_stats), (slow, slow_grad, slow_stats) = results
    close = dict(atol=1e-5, rtol=1e-5)
    for name in ("old_logprobs", "ref_logprobs", "advantages", "seq_kl"):
        torch.testing.assert_close(getattr(fast, name), getattr(slow, name), **close)
    if estimator == "ppo":
        torch.testing.assert_close(fast.old_values, slow.old_values, **close)
        torch.testing.assert_close(fast.returns, slow.returns, **close)
    torch.testing.assert_close(fast_grad, slow_grad, **close)
    assert fast_stats == pytest.approx(slow_stats, abs=1e-5)


def test_uniform_groups_are_counted_and_dropped_when_asked(micro_policy, micro_task, run_overrides):
    policy = load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))
    rollout = multi_turn_rollout(policy, micro_task)
    rewards = torch.tensor([[0.5, 0.5], [1.0, 0.0]])  # prompt 0's two rewards are equal
    for drop, rows in (("false", 4), ("true", 2)):
        config = resolve(run_overrides | {"rollout.drop_uniform_groups": drop, "kl.coef": "0"})
        prepared = prepare(
            config, config.estimator, model=policy.model, rollout=rollout, rewards=rewards
        )
        assert prepared.uniform_groups == 1
        assert len(prepared.mask) == rows
    # the kept rows are prompt 1's (rows 2 and 3): RLOO gives them +1 and -1
    assert prepared.advantages[:, 0].tolist() == [1.0, -1.0]
    assert torch.equal(prepared.rollout.completion_ids, rollout.completion_ids[2:])


def test_an_all_uniform_batch_is_kept(micro_policy, micro_task, run_overrides):
    policy = load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))
    config = resolve(run_overrides | {"rollout.drop_uniform_groups": "true", "kl.coef": "0"})
    rewards = torch.tensor([[0.5, 0.5], [1.0, 1.0]])
    rollout = multi_turn_rollout(policy, micro_task)
    prepared = prepare(
        config, config.estimator, model=policy.model, rollout=rollout, rewards=rewards
    )
    assert (prepared.uniform_groups, len(prepared.mask)) == (2, 4)


def test_overlong_shaping_lowers_the_reward_of_long_completions(
    micro_policy, micro_task, run_overrides
):
    # policy tokens per row: 5, 5, 8, 7 (tool results excluded); max 8, buffer 4: free up to
    # 4 tokens, then -(len - 4) / 4: [-0.25, -0.25, -1, -0.75]; with reinforce (no baseline,
    # no KL) the advantage is the shaped reward itself
    policy = load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))
    overrides = {"estimator": "reinforce", "kl.coef": "0", "rollout.max_new_tokens": "8"}
    config = resolve(run_overrides | overrides | {"rollout.overlong_buffer": "4"})
    rollout = multi_turn_rollout(policy, micro_task)
    rewards = torch.tensor([[1.0, 0.0], [0.5, 0.25]])
    prepared = prepare(
        config, config.estimator, model=policy.model, rollout=rollout, rewards=rewards
    )
    expected = torch.tensor([1.0 - 0.25, 0.0 - 0.25, 0.5 - 1.0, 0.25 - 0.75])
    torch.testing.assert_close(prepared.advantages[:, 0], expected)


@pytest.mark.parametrize(
    "knobs",
    [
        {"loss.policy": "cispo", "loss.clip_high": "0.28"},
        {"loss.policy": "gmpo", "loss.aggregation": "seq_mean_token_mean"},
        {"loss.policy": "sapo", "loss.sapo_tau_neg": "2"},
        {"loss.policy": "kl_cov", "loss.cov_ratio": "0.5"},
        {"loss.policy": "clip_cov", "loss.cov_ratio": "0.5", "loss.clip_cov_lb": "-100"},
        {"loss.ratio": "sequence", "loss.dual_clip": "3", "kl.estimator": "k2"},
    ],
)
def test_policy_loss_knobs_apply_to_a_multi_pass_update(
    micro_policy, micro_task, run_overrides, knobs
):
    # two passes: the second sees rho != 1, where the forms differ from PPO-clip
    policy = load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))
    base = run_overrides | {"estimator": "grpo", "trainer.epochs": "2", "kl.placement": "loss"}
    rollout = multi_turn_rollout(policy, micro_task)
    rewards = torch.tensor([[1.0, 0.0], [0.5, 0.25]])
    grads = []
    for extra in ({}, knobs):
        config = resolve(base | extra)
        prepared = prepare(
            config,
            config.estimator,
            model=policy.model,
            rollout=rollout,
            rewards=rewards,
            reference=Reference(policy),
        )
        prepared.old_logprobs = prepared.old_logprobs + 0.3 * torch.randn(
            prepared.old_logprobs.shape, generator=torch.Generator().manual_seed(1)
        )
        grad, stats = gradient(config, policy.model, prepared, None)
        assert torch.isfinite(grad).all() and 0 <= stats["clip_fraction"] <= 1
        grads.append(grad)
    assert not torch.equal(grads[0], grads[1])


def test_uniform_groups_are_judged_after_the_overlong_penalty(
    micro_policy, micro_task, run_overrides
):
    # task rewards all 1; overlong penalties (see above) [-0.25, -0.25, -1, -0.75]: prompt 0's
    # shaped rewards [0.75, 0.75] are uniform, prompt 1's [0, 0.25] are not
    policy = load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))
    base = run_overrides | {"kl.coef": "0", "rollout.max_new_tokens": "8"}
    base |= {"rollout.overlong_buffer": "4", "estimator": "gpg"}
    rollout = multi_turn_rollout(policy, micro_task)
    rewards = torch.ones(2, 2)
    config = resolve(base | {"rollout.drop_uniform_groups": "true"})
    prepared = prepare(
        config, config.estimator, model=policy.model, rollout=rollout, rewards=rewards
    )
    assert (prepared.uniform_groups, len(prepared.mask)) == (1, 2)  # prompt 0 dropped
    # kept: GPG sees M = 0 of P = 1, alpha = 1: [0, 0.25] - 0.125
    torch.testing.assert_close(prepared.advantages[:, 0], torch.tensor([-0.125, 0.125]))
    config = resolve(base)
    prepared = prepare(
        config, config.estimator, model=policy.model, rollout=rollout, rewards=rewards
    )
    # not dropped: M = 1 of P = 2, alpha = 2; prompt 0 gets 0, prompt 1 2 * [-0.125, 0.125]
    torch.testing.assert_close(prepared.advantages[:, 0], torch.tensor([0.0, 0.0, -0.25, 0.25]))


def test_the_entropy_bonus_is_minus_coef_times_the_mean_entropy(
    micro_policy, micro_task, run_overrides
):
    # equal rewards: RLOO's advantages are 0 and the policy term vanishes; with token_mean the
    # loss is then -coef * sum_t H_t / tokens = -coef * the logged mean entropy
    policy = load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))
    rollout = multi_turn_rollout(policy, micro_task)
    rewards = torch.full((2, 2), 0.5)
    grads = []
    for coef in ("0", "0.1"):
        config = resolve(run_overrides | {"kl.coef": "0", "loss.entropy_coef": coef})
        prepared = prepare(
            config, config.estimator, model=policy.model, rollout=rollout, rewards=rewards
        )
        grad, stats = gradient(config, policy.model, prepared, None)
        assert stats["entropy"] > 0
        assert stats["loss"] == pytest.approx(-float(coef) * stats["entropy"], rel=1e-5)
        grads.append(grad)
    assert grads[0].abs().max() == 0 and grads[1].abs().max() > 0


def test_clip_fraction_and_approx_kl_by_hand(micro_policy, micro_task, run_overrides):
    # pi_old = pi - 0.5 on row 0 (rho = e^0.5 > 1.2, clipped where A > 0), - 0.1 elsewhere
    # (rho = e^0.1 inside the clip); rewards give row 0 A > 0 on all its 5 policy tokens
    policy = load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))
    config = resolve(run_overrides | {"estimator": "grpo", "kl.coef": "0"})
    rollout = multi_turn_rollout(policy, micro_task)
    rewards = torch.tensor([[1.0, 0.0], [0.5, 0.25]])
    prepared = prepare(
        config, config.estimator, model=policy.model, rollout=rollout, rewards=rewards
    )
    shift = torch.full_like(prepared.old_logprobs, 0.1)
    shift[0] = 0.5
    prepared.old_logprobs = prepared.old_logprobs - shift
    _, stats = gradient(config, policy.model, prepared, None)
    tokens = 5 + 5 + 8 + 7  # policy tokens per row (tool results, padding excluded)
    assert stats["clip_fraction"] == pytest.approx(5 / tokens)
    k3 = {s: math.exp(s) - 1 - s for s in (0.5, 0.1)}
    assert stats["approx_kl"] == pytest.approx((5 * k3[0.5] + 20 * k3[0.1]) / tokens, rel=1e-4)
