import torch

from pgbench.config.verbs import resolve
from pgbench.train.parts import build_parts
from pgbench.train.tracking import NullTracker
from pgbench.train.trainer import Trainer


def test_parts_follow_the_config_and_the_trainer_takes_them(run_overrides):
    config = resolve(run_overrides | {"estimator": "ppo", "kl.coef": "0"})
    parts = build_parts(config)
    assert parts.reference is None and parts.vllm is None and parts.device.type == "cpu"
    head = parts.value_head
    assert head.weight.device == parts.device and not head.weight.any() and not head.bias.any()
    trainer = Trainer(config, NullTracker(), parts)
    assert trainer.policy is parts.policy and trainer.value_head is head
    assert any(p is head.weight for p in trainer.params)  # trained with the policy
    rloo = build_parts(resolve(run_overrides))
    assert rloo.reference is not None and rloo.value_head is None
    copy = rloo.reference.copy  # full fine-tuning: a frozen copy, equal to the policy
    assert copy is not rloo.policy.model and not any(p.requires_grad for p in copy.parameters())
    for frozen, trained in zip(copy.parameters(), rloo.policy.model.parameters(), strict=True):
        assert torch.equal(frozen, trained)
