"""Where one run's wall time goes: the phase table of a suite cell.

    python benchmarks/cell_phases.py [--runs 2] [--threads 2] -- model=smollm2 lora.r=8 ...

Runs `pgbench run <overrides>` in this process `--runs` times (a fresh output folder each,
the same cache_dir, so the second run shows what a cached start evaluation saves) and times
its phases by wrapping the functions that do them: loading the policy and task
(`build_parts`), the starting policy's evaluation (`evaluate_start`, test and valid), the
training steps, the final evaluation (`evaluate`), checkpoints (`_save`) and the model
hashes of the run's params (`policy_params`); `other` is the rest (MLflow, final save, the
process's own start is not included). Prints a Markdown table with the CPU next to it.
"""

from __future__ import annotations

import argparse
import functools
import platform
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from pgbench import cli
from pgbench.train import trainer

PHASES = {
    "build_parts": "load policy + task",
    "evaluate_start": "start evaluation",
    "train_step": "training steps",
    "evaluate": "final evaluation",
    "_save": "checkpoints",
    "policy_params": "model hashes",
}


def timed(seconds: dict[str, float], name: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - start

    return wrapper


def one_run(overrides: list[str], out: Path) -> dict[str, float]:
    """Seconds per phase of one `pgbench run` writing into `out`."""
    seconds: dict[str, float] = defaultdict(float)
    saved = {}
    for name in PHASES:
        owner = trainer.Trainer if hasattr(trainer.Trainer, name) else trainer
        saved[name] = (owner, getattr(owner, name))
        setattr(owner, name, timed(seconds, name, getattr(owner, name)))
    start = time.perf_counter()
    try:
        code = cli.main(
            ["run", *overrides, f"output_dir={out}", f"tracking.uri=sqlite:///{out}.db"]
        )
    finally:
        for name, (owner, function) in saved.items():
            setattr(owner, name, function)
    if code != 0:
        raise SystemExit(f"pgbench run failed ({code})")
    seconds["total"] = time.perf_counter() - start
    seconds["other"] = seconds["total"] - sum(seconds[n] for n in PHASES)
    return seconds


def cpu() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    names = [line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line]
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{names[0] if names else platform.processor()}, torch {torch.__version__} {capability}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="runs in a row (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("overrides", nargs="*", help="pgbench run overrides (after --)")
    args = parser.parse_args()
    overrides = [*args.overrides, f"threads={args.threads}"]
    with tempfile.TemporaryDirectory(prefix="pgbench-phases-") as tmp:
        runs = [one_run(overrides, Path(tmp) / f"run{i}") for i in range(args.runs)]
    print(f"`pgbench run {' '.join(overrides)}`; {cpu()}\n")
    print("| phase | " + " | ".join(f"run {i + 1} (s)" for i in range(len(runs))) + " |")
    print("|---|" + "---:|" * len(runs))
    for name, label in [*PHASES.items(), ("other", "other"), ("total", "total")]:
        print(f"| {label} | " + " | ".join(f"{r[name]:.1f}" for r in runs) + " |")


if __name__ == "__main__":
    main()
