"""What the machine does fast: bfloat16 autocast and CPU threads.

bf16 autocast is native on CUDA GPUs that report bf16 support and on x86 CPUs with
AVX512-BF16 or AMX (with PyTorch's AVX512 kernels in use); elsewhere PyTorch emulates it.
Measured on the tiny policy's SFT step (hidden 256, 4 layers, batch 64 x 60 tokens, forward +
backward + AdamW, one thread):

| CPU (torch capability)        | fp32 s/step | bf16 autocast s/step |
| ----------------------------- | ----------- | -------------------- |
| AVX2 only (issue 14's machine)| 1.52-1.71   | 33.4-33.7            |
| AVX512 with AVX512-BF16, no AMX | 1.06-1.19 | 1.85-1.94            |

So bf16 is refused where it would be emulated, and chosen automatically (the tiny bootstrap)
only where it should be faster than fp32: CUDA with bf16, or a CPU with AMX tiles.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

from pgbench.errors import ConfigError

Precision = Literal["fp32", "bf16"]


def cpu_capability() -> str:
    """PyTorch's CPU kernel level, e.g. `AVX2`, `AVX512` (ATEN_CPU_CAPABILITY can lower it)."""
    return torch.backends.cpu.get_cpu_capability()


def _cpu_flag(name: str) -> bool:
    check = getattr(torch.cpu, f"_is_{name}_supported", None)  # private, x86 builds only
    return bool(check and check())


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run in hardware on `device` rather than being emulated."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    avx512 = cpu_capability().startswith("AVX512")
    return avx512 and (_cpu_flag("avx512_bf16") or _cpu_flag("amx_tile"))


def check_bf16(device_name: str) -> None:
    """Refuse bf16 autocast where the device (a `device=` value) would emulate it: ~20x slower
    than fp32."""
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if native_bf16(torch.device("cuda" if cuda else "cpu")):
        return
    if cuda:
        raise ConfigError("trainer.precision=bf16 but this GPU has no bfloat16; use fp32")
    raise ConfigError(
        f"trainer.precision=bf16 but this CPU (torch capability {cpu_capability()}) "
        "has no native bfloat16, so autocast would be emulated, about 20x slower; "
        "use trainer.precision=fp32"
    )


def faster_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast should beat fp32: native bf16 on CUDA, AMX tiles on a CPU."""
    if device.type == "cpu":
        return native_bf16(device) and _cpu_flag("amx_tile")
    return native_bf16(device)


def auto_precision(device: torch.device) -> Precision:
    """bf16 where it is native and faster than fp32, else fp32."""
    return "bf16" if faster_bf16(device) else "fp32"


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bfloat16 autocast of forward passes with precision=bf16 (weights stay fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@contextmanager
def timed(seconds: dict[str, float], phase: str, device: torch.device) -> Iterator[None]:
    """Add the block's wall time to `seconds[phase]`, waiting for the GPU's queued work."""
    started = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - started


def use_threads(threads: int, processes: int = 1) -> int:
    """Set torch's CPU threads for this process and return the count.

    `threads` > 0 is taken as it is. 0 means: OMP_NUM_THREADS if the user set it (torch has
    already applied it), else the CPUs this process may run on, shared among `processes`
    workers of this machine, so that parallel workers do not oversubscribe the cores.
    """
    if threads == 0 and "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    if threads == 0:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        threads = max(1, (cpus or 1) // processes)
    torch.set_num_threads(threads)
    return threads


def describe(device: torch.device) -> dict[str, str | int | bool]:
    """Facts a run logs next to its timings."""
    return {
        "hardware.cpu_capability": cpu_capability(),
        "hardware.threads": torch.get_num_threads(),
        "hardware.native_bf16": native_bf16(device),
    }


def pick_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=cpu or auto")
    return torch.device(name)
