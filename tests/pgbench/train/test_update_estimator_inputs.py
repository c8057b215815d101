"""What `update.score`/`advantages` hand the estimators beyond the rewards: the scoring
pass's log pi and sum pi^2 (otb), and the task's reward components (gdpo)."""

import pytest
import torch

from pgbench.config.sections import LoraConfig
from pgbench.config.verbs import resolve
from pgbench.engine.scoring import token_logprobs
from pgbench.estimators.otb import OTB
from pgbench.models.policy import load_policy
from pgbench.train.update import prepare, score
from tests.pgbench.train.test_update import multi_turn_rollout


@pytest.mark.parametrize("micro_batch", ["8", "3"])  # the live forward; the chunked one
def test_otb_gets_the_scoring_pass_sum_of_squared_probabilities(
    micro_policy, micro_task, run_overrides, monkeypatch, micro_batch
):
    seen = []
    original = OTB.token_advantages
    monkeypatch.setattr(
        OTB, "token_advantages", lambda s, b, st: seen.append(b) or original(s, b, st)
    )
    torch.manual_seed(0)
    overrides = {"estimator": "otb", "trainer.micro_batch_size": micro_batch, "kl.coef": "0"}
    config = resolve(run_overrides | overrides)
    policy = load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))
    rollout = multi_turn_rollout(policy, micro_task)
    rewards = torch.tensor([[1.0, 0.0], [0.5, 0.25]])
    prepared = prepare(
        config, config.estimator, model=policy.model, rollout=rollout, rewards=rewards
    )
    (batch,) = seen
    with torch.no_grad():
        expected = token_logprobs(
            policy.model, rollout, config.rollout.temperature, with_sq_probs=True
        )
    mask = prepared.mask.bool()
    torch.testing.assert_close(batch.sq_probs[mask], expected.sq_probs[mask], atol=1e-5, rtol=0)
    assert torch.equal(batch.logprobs, prepared.old_logprobs)
    assert not batch.sq_probs.requires_grad
    assert (prepared.live is not None) == (micro_batch == "8")  # the path under test
    assert prepared.advantages[~mask].eq(0).all() and prepared.advantages[mask].ne(0).any()


def test_estimators_without_the_need_get_no_sum_of_squared_probabilities(
    micro_policy, micro_task, run_overrides
):
    config = resolve(run_overrides | {"estimator": "grpo", "kl.coef": "0"})
    policy = load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))
    rollout = multi_turn_rollout(policy, micro_task)
    scored = score(
        config,
        model=policy.model,
        reference=None,
        value_head=None,
        rollout=rollout,
        rewards=torch.tensor([[1.0, 0.0], [0.5, 0.25]]),
    )
    assert scored.scores.sq_probs is None and scored.live.sq_probs is None


def test_gdpo_gets_the_components_of_the_kept_groups(micro_policy, micro_task, run_overrides):
    # weights [0.5, 0.5]; c1 = [[1, 0], [1, 0]], c2 = [[0, 1], [0, 0]]: rewards [[.5, .5], [.5, 0]]
    # prompt 0's rewards are equal: kept, c1's z [h, -h] and c2's [-h, h] cancel -> 0;
    # prompt 1: c1's z [h, -h], c2 uniform -> 0.5 [h, -h], h = 0.5 / (sqrt(0.5) + 1e-4)
    components = torch.tensor([[[1.0, 0], [1, 0]], [[0, 1], [0, 0]]])
    weights = torch.tensor([0.5, 0.5])
    rewards = (weights[:, None, None] * components).sum(0)
    policy = load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))
    rollout = multi_turn_rollout(policy, micro_task)
    h = 0.5 / (0.5**0.5 + 1e-4)
    for drop, expected in (("false", [0, 0, 0.5 * h, -0.5 * h]), ("true", [0.5 * h, -0.5 * h])):
        overrides = {
            "estimator": "gdpo",
            "estimator.batch_norm": "false",
            "kl.coef": "0",
            "rollout.drop_uniform_groups": drop,
        }
        config = resolve(run_overrides | overrides)
        prepared = prepare(
            config,
            config.estimator,
            model=policy.model,
            rollout=rollout,
            rewards=rewards,
            components=components,
            component_weights=weights,
        )
        torch.testing.assert_close(prepared.advantages[:, 0], torch.tensor(expected))
