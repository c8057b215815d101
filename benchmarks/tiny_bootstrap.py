"""Build the default tiny fr_en policy in a fresh cache and score it on the test split.

    python benchmarks/tiny_bootstrap.py [--cache DIR]

Prints build seconds, parameter count and greedy test chrF/BLEU (the targets: at most
8 minutes on 2 CPU cores, chrF >= 40).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from pgbench import tasks
from pgbench.config.sections import LoraConfig
from pgbench.engine.evaluate import evaluate
from pgbench.models.policy import load_policy
from pgbench.models.tiny import tiny_policy_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="", help="cache folder (default: a fresh temp dir)")
    args = parser.parse_args()
    cache = Path(args.cache or tempfile.mkdtemp(prefix="pgbench-tiny-"))
    task = tasks.get("fr_en")
    started = time.perf_counter()
    folder = tiny_policy_dir(task, cache)
    build_s = time.perf_counter() - started
    policy = load_policy(str(folder), LoraConfig(), torch.device("cpu"))
    started = time.perf_counter()
    metrics, _ = evaluate(
        policy.model, policy.tokenizer, task, task.splits().test, max_new_tokens=48, batch_size=64
    )
    info = json.loads((folder / "tiny.json").read_text())
    result = {
        "folder": str(folder),
        "build_seconds": round(build_s, 1),
        "parameters": info["parameters"],
        "test_chrf": round(metrics["chrf"], 2),
        "test_bleu": round(metrics["bleu"], 2),
        "eval_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
