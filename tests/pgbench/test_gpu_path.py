"""The GPU-path switches, tested on CPU: the engine.backend and trainer.precision keys and
their checks (vLLM faked, never imported), a bf16-autocast step and gradient checkpointing in
the trainer. The pieces have their own files: engine/test_vllm_backend.py (the sampler),
models/test_policy.py (checkpointing's gradients), test_parallel.py (two processes)."""

import importlib.util

import pytest
import torch

from pgbench import hardware
from pgbench.config import verbs as config_module
from pgbench.config.verbs import help_rows, resolve
from pgbench.errors import ConfigError
from pgbench.train.tracking import NullTracker
from pgbench.train.trainer import Trainer


# -- configuration --------------------------------------------------------------------------
def test_new_keys_have_defaults_and_help(monkeypatch):
    config = resolve({})
    assert config.engine.backend == "hf" and config.engine.sync_every == 1
    assert config.engine.gpu_memory_utilization == 0.3
    assert config.trainer.precision == "fp32" and config.trainer.gradient_checkpointing is False
    keys = {row[0]: row for row in help_rows()}
    assert keys["engine.backend"][1] == "{hf|vllm}" and "pgbench[vllm]" in keys["engine.backend"][3]
    assert keys["trainer.precision"][1] == "{fp32|bf16}"
    # where bf16 is native (an AVX2-only CPU refuses it: tests/pgbench/test_hardware.py)
    monkeypatch.setattr(hardware, "native_bf16", lambda device: True)
    resolved = resolve({"trainer.precision": "bf16", "trainer.gradient_checkpointing": "true"})
    assert resolved.trainer.precision == "bf16" and resolved.trainer.gradient_checkpointing


def test_vllm_backend_needs_the_package_then_a_gpu(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        config_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "vllm" else real_find_spec(name, *a),
    )
    with pytest.raises(ConfigError, match=r"pip install 'pgbench\[vllm\]'"):
        resolve({"engine.backend": "vllm"})
    monkeypatch.setattr(
        config_module.importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "vllm" else real_find_spec(name, *a),
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        resolve({"engine.backend": "vllm"})
    with pytest.raises(ConfigError, match="multi-turn"):
        resolve({"engine.backend": "vllm", "task": "poet"})


# -- precision and memory switches ----------------------------------------------------------
def test_bf16_autocast_step_is_finite_and_keeps_fp32_weights(run_overrides, monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda device: True)  # correctness, not speed
    overrides = run_overrides | {"trainer.precision": "bf16", "estimator": "ppo"}
    trainer = Trainer(resolve(overrides), NullTracker())
    metrics = trainer.train_step()
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("train/loss", "train/grad_norm"))
    assert metrics["train/grad_norm"] > 0
    assert all(p.dtype == torch.float32 for p in trainer.params)
    assert all(s["exp_avg"].dtype == torch.float32 for s in trainer.optimizer.state.values())


def test_trainer_switches_checkpointing_on(run_overrides):
    overrides = run_overrides | {"trainer.gradient_checkpointing": "true"}
    trainer = Trainer(resolve(overrides), NullTracker())
    assert trainer.policy.model.is_activation_checkpointing
    assert torch.isfinite(torch.tensor(trainer.train_step()["train/loss"]))
