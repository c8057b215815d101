"""Seconds per training step: multi-turn tool episodes (task=poet) against single-turn fr_en.

    python benchmarks/multi_turn.py [--steps 10] [--warmup 2] [--threads 2]

Both tasks train their cached `tiny` policy with the same estimator (RLOO), prompts,
samples, completion budget and threads, on the same engine: one `Trainer.train_step` after
another (no evaluation, checkpoint or tracking), tasks alternating step by step so a change
in machine load hits both. Reported per task: the median step time, policy tokens per step
(tool results excluded), seconds per 1,000 policy tokens and the median sampling throughput.
The target (issue 19) is poet within 1.3x of fr_en at equal policy tokens, i.e. the ratio of
seconds per 1,000 policy tokens. Writes `<out>/multi_turn.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from pgbench.config.verbs import resolve
from pgbench.hardware import cpu_capability, use_threads
from pgbench.train.tracking import NullTracker
from pgbench.train.trainer import Trainer

SETTINGS = {"trainer.prompts_per_step": "8", "rollout.samples_per_prompt": "4"}
SETTINGS |= {"rollout.max_new_tokens": "48", "estimator": "rloo", "device": "cpu"}


def trainer(task: str, threads: int, out: Path) -> Trainer:
    """A Trainer of `task` on its cached tiny policy, with the benchmark's settings."""
    values = SETTINGS | {"task": task, "threads": str(threads), "output_dir": str(out / task)}
    values |= {"eval.every": "0", "checkpoint.every": "0", "trainer.steps": "1000"}
    return Trainer(resolve(values), NullTracker())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per task")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per task")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default="bench_out")
    args = parser.parse_args()
    use_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {task: trainer(task, args.threads, Path(tmp)) for task in ("fr_en", "poet")}
        steps: dict[str, list[dict[str, float]]] = {task: [] for task in trainers}
        for index in range(args.warmup + args.steps):
            for task, run in trainers.items():
                before = run.state.tokens
                metrics = run.train_step()
                run.state.step += 1
                if index >= args.warmup:
                    tokens = run.state.tokens - before
                    steps[task].append(metrics | {"policy_tokens": tokens})
    result = {"settings": SETTINGS, "threads": args.threads, "capability": cpu_capability()}
    result["torch"] = torch.__version__
    for task, rows in steps.items():
        step_s = statistics.median(r["train/step_time_s"] for r in rows)
        tokens = statistics.median(r["policy_tokens"] for r in rows)
        per_k = statistics.median(1000 * r["train/step_time_s"] / r["policy_tokens"] for r in rows)
        sampling = statistics.median(r["train/rollout_tokens_per_s"] for r in rows)
        result[task] = {
            "step_s": step_s,
            "policy_tokens": tokens,
            "s_per_1k_tokens": per_k,
            "rollout_tokens_per_s": sampling,
        }
    ratio = result["poet"]["s_per_1k_tokens"] / result["fr_en"]["s_per_1k_tokens"]
    result["poet_over_fr_en_per_token"] = ratio
    result["poet_over_fr_en_per_step"] = result["poet"]["step_s"] / result["fr_en"]["step_s"]
    (out / "multi_turn.json").write_text(json.dumps(result, indent=2))
    print(f"capability {result['capability']}, {args.threads} threads, {args.steps} steps")
    print(f"{'task':<8}{'step s':>8}{'tokens':>8}{'s/1k tok':>10}{'sample tok/s':>14}")
    for task in trainers:
        row = result[task]
        print(
            f"{task:<8}{row['step_s']:>8.2f}{row['policy_tokens']:>8.0f}"
            f"{row['s_per_1k_tokens']:>10.2f}{row['rollout_tokens_per_s']:>14.0f}"
        )
    print(f"poet / fr_en: {ratio:.2f}x per policy token (target <= 1.3)")


if __name__ == "__main__":
    main()
