"""Long-run soak: resident memory of a 2,000-step run on a micro policy must stay flat.

    python benchmarks/soak.py [--steps 2000] [--out soak_out]

Trains RLOO on a micro fr_en policy (built in a temporary cache) and records the process's
resident memory (VmRSS) after every step. Prints RSS at step 200 and at the end and their
ratio (the target: the end within 10% of step 200), and writes soak_out/rss.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

from pgbench import tasks
from pgbench.config.verbs import resolve
from pgbench.models.tiny import MICRO, tiny_policy_dir
from pgbench.train.trainer import train

TASK = {"limit": "2000", "valid_size": "40", "test_size": "40"}


def rss_mb() -> float:
    """Current resident memory of this process (Linux /proc), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", default="soak_out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="pgbench-soak-"))
    policy = tiny_policy_dir(tasks.get("fr_en", **TASK), cache, MICRO, progress=False)
    config = resolve(
        {
            "model": str(policy),
            **{f"task.{k}": v for k, v in TASK.items()},
            "trainer.steps": str(args.steps),
            "trainer.prompts_per_step": "4",
            "rollout.samples_per_prompt": "4",
            "rollout.max_new_tokens": "16",
            "eval.every": "250",
            "eval.size": "40",
            "checkpoint.every": "250",
            "output_dir": str(cache / "run"),
            "tracking.uri": f"sqlite:///{cache / 'mlflow.db'}",
        }
    )
    samples: list[tuple[int, float]] = []
    started = time.perf_counter()
    train(config, on_step_end=lambda step, _: samples.append((step, rss_mb())))
    with (out / "rss.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("step", "rss_mb"), *samples])
    at_200 = dict(samples)[min(200, args.steps)]
    end = samples[-1][1]
    result = {
        "steps": args.steps,
        "seconds": round(time.perf_counter() - started, 1),
        "rss_mb_step_200": round(at_200, 1),
        "rss_mb_end": round(end, 1),
        "end_over_step_200": round(end / at_200, 3),
        "within_10_percent": abs(end / at_200 - 1) <= 0.10,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
