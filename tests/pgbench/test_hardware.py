"""Precision follows the hardware: bf16 autocast never where it is emulated (issue 14)."""

import json
from pathlib import Path

import pytest
import torch

from pgbench import hardware
from pgbench.cli import main
from pgbench.models.tiny import TinySpec, cache_key, tiny_policy_dir

CPU = torch.device("cpu")
SPEC = TinySpec(
    vocab_size=300, hidden_size=16, layers=1, heads=1, intermediate_size=32, sft_steps=3
)


def fake_cpu(monkeypatch, capability: str, flags: set[str]) -> None:
    """Pretend to be a CPU with this torch capability and these x86 feature flags."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(hardware, "_cpu_flag", lambda name: name in flags)


@pytest.mark.parametrize(
    ("capability", "flags", "native", "precision"),
    [
        ("AVX2", set(), False, "fp32"),  # bf16 emulated: ~20x slower
        ("AVX2", {"avx512_bf16"}, False, "fp32"),  # AVX512 kernels off (ATEN_CPU_CAPABILITY)
        ("AVX512", set(), False, "fp32"),
        ("AVX512", {"avx512_bf16"}, True, "fp32"),  # native but measured slower than fp32
        ("AVX512", {"avx512_bf16", "amx_tile"}, True, "bf16"),
    ],
)
def test_cpu_precision_follows_capability(monkeypatch, capability, flags, native, precision):
    fake_cpu(monkeypatch, capability, flags)
    assert hardware.native_bf16(CPU) is native
    assert hardware.auto_precision(CPU) == precision


@pytest.fixture
def autocast_seen(monkeypatch) -> list[bool]:
    """Whether CPU autocast was on at each forward pass of the Llama decoder stack."""
    from transformers import LlamaModel

    seen: list[bool] = []
    forward = LlamaModel.forward

    def spy(self, *args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(LlamaModel, "forward", spy)
    return seen


@pytest.mark.parametrize(
    ("capability", "flags", "precision"),
    [("AVX2", set(), "fp32"), ("AVX512", {"avx512_bf16", "amx_tile"}, "bf16")],
)
def test_tiny_bootstrap_autocasts_only_where_bf16_is_faster(
    monkeypatch, tmp_path, micro_task, autocast_seen, capability, flags, precision
):
    fake_cpu(monkeypatch, capability, flags)
    folder = tiny_policy_dir(micro_task, tmp_path, SPEC, progress=False)
    assert autocast_seen == [precision == "bf16"] * SPEC.sft_steps
    info = json.loads((folder / "tiny.json").read_text())
    assert info["spec"]["precision"] == precision
    assert info["cpu_capability"] == capability and info["threads"] == torch.get_num_threads()


def test_build_precision_is_part_of_the_cache_key(micro_task):
    pairs = [([{"role": "user", "content": "Bonjour."}], "Hello.")]
    keys = {cache_key(micro_task, pairs, TinySpec(precision=p)) for p in ("fp32", "bf16")}
    assert len(keys) == 2


def test_bf16_training_is_refused_where_emulated(monkeypatch, capsys, run_overrides):
    fake_cpu(monkeypatch, "AVX2", set())
    args = [f"{k}={v}" for k, v in run_overrides.items()]
    assert main(["run", *args, "device=cpu", "trainer.precision=bf16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "capability AVX2" in err and "use trainer.precision=fp32" in err
    assert len(err.splitlines()) == 1


def test_fp32_run_never_autocasts(monkeypatch, run_overrides, autocast_seen):
    fake_cpu(monkeypatch, "AVX2", set())
    overrides = run_overrides | {"trainer.steps": "1", "eval.every": "0", "device": "cpu"}
    assert main(["run", *[f"{k}={v}" for k, v in overrides.items()]]) == 0
    assert autocast_seen and not any(autocast_seen)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_threads_explicit_env_or_shared_among_workers(monkeypatch, restore_threads):
    assert hardware.use_threads(1) == 1 == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert hardware.use_threads(0) == torch.get_num_threads() == 1  # the user's choice stands
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: set(range(8)))
    assert hardware.use_threads(0) == 8
    assert hardware.use_threads(0, processes=3) == 2 == torch.get_num_threads()
    assert hardware.use_threads(0, processes=16) == 1


def test_threads_key_sets_the_run_threads_and_is_logged(run_overrides, restore_threads):
    from mlflow import MlflowClient

    overrides = run_overrides | {"trainer.steps": "1", "eval.every": "0", "threads": "1"}
    assert main(["run", *[f"{k}={v}" for k, v in overrides.items()]]) == 0
    assert torch.get_num_threads() == 1
    run_dir = Path(run_overrides["output_dir"])
    assert json.loads((run_dir / "config.json").read_text())["threads"] == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    params = MlflowClient(summary["tracking_uri"]).get_run(summary["run_id"]).data.params
    assert params["hardware.threads"] == "1"
    assert params["hardware.cpu_capability"] == torch.backends.cpu.get_cpu_capability()
