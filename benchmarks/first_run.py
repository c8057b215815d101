"""Time a new user's first `pgbench run` of each task: tiny bootstrap included, empty cache.

    python benchmarks/first_run.py [--tasks fr_en,arith,poet] [--emulate-avx2] [--threads N]

Each task runs `pgbench run task=<task> estimator=<default>` in its own process with a fresh
cache folder, then once more on the cached policy. `--emulate-avx2` makes PyTorch, oneDNN and
MKL use AVX2 kernels only (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS),
as on a CPU without native bfloat16. Prints one JSON line per task with the CPU capability.
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

AVX2_ONLY = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}
ESTIMATOR = {"fr_en": "rloo", "arith": "grpo", "poet": "rloo"}  # the README's commands


def timed_run(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of `python -m pgbench run <args>`."""
    command = [sys.executable, "-m", "pgbench", "run", *args]
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = child.stderr.read().decode()  # the progress bars; read so the pipe never fills
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="fr_en,arith,poet")
    parser.add_argument("--emulate-avx2", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="threads= of the runs (0 = auto)")
    args = parser.parse_args()
    env = os.environ | (AVX2_ONLY if args.emulate_avx2 else {})
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    capability = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True
    ).stdout.strip()
    for task in args.tasks.split(","):
        folder = Path(tempfile.mkdtemp(prefix=f"pgbench-first-{task}-"))
        common = [
            f"task={task}",
            f"estimator={ESTIMATOR[task]}",
            f"cache_dir={folder / 'cache'}",
            f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
            f"threads={args.threads}",
        ]
        first_s, first_mb = timed_run([*common, f"output_dir={folder / 'first'}"], env)
        cached_s, cached_mb = timed_run([*common, f"output_dir={folder / 'cached'}"], env)
        built = json.loads(next((folder / "cache").glob("tiny-*/tiny.json")).read_text())
        summary = json.loads((folder / "cached" / "summary.json").read_text())
        print(
            json.dumps(
                {
                    "task": task,
                    "cpu_capability": capability,
                    "threads": built["threads"],
                    "precision": built["spec"]["precision"],
                    "first_run_s": round(first_s, 1),
                    "bootstrap_s": built["build_seconds"],
                    "cached_run_s": round(cached_s, 1),
                    "first_peak_rss_mb": round(first_mb),
                    "cached_peak_rss_mb": round(cached_mb),
                    "test_before": summary["eval_before"],
                    "test_after": summary["eval_after"],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
