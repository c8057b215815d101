"""A task's reward components (several weighted rewards) reach the estimator (gdpo)."""

import logging

import pytest
import torch

from pgbench import tasks
from pgbench.config.verbs import resolve
from pgbench.estimators.gdpo import GDPO
from pgbench.train.trainer import train
from tests.conftest import MICRO_TASK


def test_fr_en_reports_each_term_of_a_weighted_reward():
    task = tasks.get("fr_en", **MICRO_TASK, reward="chrf+0.5*bleu")
    examples = task.splits().train[:2]
    totals = task.reward(["the cat", examples[1].references[0]], examples)
    (chrf, bleu), weights = task.reward_components()
    assert weights == [1.0, 0.5]
    assert bleu[1] == pytest.approx(1.0) and chrf[1] == pytest.approx(1.0)  # the reference
    assert totals == pytest.approx([c + 0.5 * b for c, b in zip(chrf, bleu, strict=True)])
    single = tasks.get("fr_en", **MICRO_TASK)
    single.reward(["the cat"], examples[:1])
    assert single.reward_components() is None


def test_a_gdpo_run_gets_the_components_of_each_step(run_overrides, monkeypatch):
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    seen = []
    original = GDPO.token_advantages
    monkeypatch.setattr(
        GDPO, "token_advantages", lambda s, b, st: seen.append(b) or original(s, b, st)
    )
    overrides = {
        "estimator": "gdpo",
        "task.reward": "chrf+0.5*bleu",
        "trainer.steps": "2",
        "eval.every": "0",
        "kl.coef": "0",
        "rollout.staleness": "1",  # a pending rollout keeps its components
    }
    assert train(resolve(run_overrides | overrides))["steps"] == 2
    assert len(seen) == 2
    for batch in seen:
        assert batch.components.shape == (2, 4, 3)  # [C, P, K]
        assert batch.component_weights.tolist() == [1.0, 0.5]
        summed = batch.components[0] + 0.5 * batch.components[1]
        torch.testing.assert_close(batch.rewards, summed)  # no KL, no overlong penalty
