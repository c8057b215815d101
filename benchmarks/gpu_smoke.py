"""GPU smoke test: a few training steps of every estimator on a CUDA machine, then a table.

    python benchmarks/gpu_smoke.py [--model tiny] [--steps 3] [--task arith]

Rows: every estimator with engine.backend=hf and bf16 autocast (fp32 where the GPU has no
bf16); RLOO with LoRA r=8; RLOO with engine.backend=vllm when vLLM is installed; RLOO under
`accelerate launch --num_processes 2` when two GPUs are present. Each row is its own
`python -m pgbench run` (offline: the tiny policy is built on the GPU, nothing is downloaded)
and reports ok/FAILED, wall seconds and the held-out metric before -> after. Exits 1 if any
row failed. Needs CUDA; on a machine without it, it says so and exits 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pgbench import estimators, tasks


def rows(steps: int, bf16: bool) -> list[tuple[str, list[str], list[str]]]:
    """(label, launcher prefix, pgbench keys) of every smoke run."""
    precision = "bf16" if bf16 else "fp32"
    common = [f"trainer.steps={steps}", f"trainer.precision={precision}", "device=cuda"]
    python = [sys.executable, "-m", "pgbench"]
    out = [
        (f"{name} hf {precision}", python, [*common, f"estimator={name}"])
        for name in estimators.REGISTRY.names()
    ]
    out.append((f"rloo hf {precision} lora.r=8", python, [*common, "estimator=rloo", "lora.r=8"]))
    if importlib.util.find_spec("vllm") is not None:
        out.append(("rloo vllm", python, [*common, "estimator=rloo", "engine.backend=vllm"]))
    if torch.cuda.device_count() >= 2:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2"]
        out.append(
            (
                "rloo hf, 2 GPUs (accelerate)",
                [*launch, "-m", "pgbench"],
                [*common, "estimator=rloo"],
            )
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="model= of every run")
    parser.add_argument("--task", default="arith", choices=tasks.REGISTRY.names())
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device here; run it on a GPU machine", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="pgbench-gpu-smoke-"))
    metric = tasks.REGISTRY.get_class(args.task).metric
    print(
        f"{torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU(s), torch "
        f"{torch.__version__}, bf16 {torch.cuda.is_bf16_supported()}"
    )
    print(f"| run | status | seconds | test {metric} before -> after |\n| --- | --- | --- | --- |")
    failed = 0
    for index, (label, launcher, keys) in enumerate(
        rows(args.steps, torch.cuda.is_bf16_supported())
    ):
        run_dir = folder / f"run{index}"
        command = [
            *launcher,
            "run",
            f"task={args.task}",
            f"model={args.model}",
            f"output_dir={run_dir}",
            f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
            "eval.every=0",
            *keys,
        ]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode == 0 and (run_dir / "summary.json").is_file():
            summary = json.loads((run_dir / "summary.json").read_text())
            change = f"{summary['eval_before'][metric]:.2f} -> {summary['eval_after'][metric]:.2f}"
            print(f"| {label} | ok | {seconds:.0f} | {change} |")
        else:
            failed += 1
            reason = (done.stderr.strip().splitlines() or ["?"])[-1][:120]
            print(f"| {label} | FAILED | {seconds:.0f} | {reason} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
