"""Measure the headline command's held-out gain over seeds: `pgbench run task=fr_en
estimator=rloo seed=S [key=value ...]`, each final policy and the starting one scored on the
test split (the run's own before/after) and on the unseen slice (`pgbench eval
task.test_split=unseen`), with the mean change and its Student-t 95% interval.

    python benchmarks/headline_gain.py --out runs/headline --seeds 0,1,2 --parallel 2 [key=value]

Resumable: a seed whose run finished is not run again. Writes gains.csv and gains.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from pgbench.reports.tables import mean_ci

METRICS = ("chrf", "bleu", "embed")


def pgbench(args: list[str], threads: int, log: Path) -> None:
    """`python -m pgbench <args>` with `threads` torch/OpenMP threads, output to `log`."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with log.open("w") as handle:
        done = subprocess.run(
            [sys.executable, "-m", "pgbench", *args],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode:
        raise SystemExit(f"pgbench {' '.join(args)} failed ({done.returncode}); see {log}")


def unseen(model: str, out: Path, overrides: list[str], threads: int) -> dict[str, float]:
    """`model`'s metrics on the unseen slice (cached in out/eval.json); an empty `model`
    is fr_en's default model."""
    if not (out / "eval.json").is_file():
        shared = [o for o in overrides if o.startswith("task.")]  # what eval shares with run
        chosen = [f"model={model}"] if model else []
        args = ["eval", "task=fr_en", *chosen, "task.test_split=unseen", *shared]
        out.mkdir(parents=True, exist_ok=True)
        pgbench([*args, f"output_dir={out}", f"threads={threads}"], threads, out / "eval.log")
    return json.loads((out / "eval.json").read_text())


def one_seed(
    seed: int, out: Path, overrides: list[str], threads: int, start: dict[str, float]
) -> dict[str, float]:
    """Train seed `seed` (unless finished) and return its before/after metrics; `start` is
    the starting policy's on the unseen slice."""
    run = out / f"s{seed}"
    if not (run / "final").is_dir():
        args = [
            "run",
            "task=fr_en",
            "estimator=rloo",
            f"seed={seed}",
            f"output_dir={run}",
            f"tracking.uri=sqlite:///{out.resolve()}/mlflow.db",
            f"threads={threads}",
        ]
        out.mkdir(parents=True, exist_ok=True)
        pgbench([*args, *overrides], threads, out / f"s{seed}.log")
    summary = json.loads((run / "summary.json").read_text())
    after = unseen(str(run), run / "unseen", overrides, threads)
    row = {"seed": seed, "wall_s": summary["train"]["train/wall_clock_s"]}
    for name in METRICS:
        row[f"test_{name}_before"] = summary["eval_before"][name]
        row[f"test_{name}_after"] = summary["eval_after"][name]
        row[f"unseen_{name}_before"] = start[name]
        row[f"unseen_{name}_after"] = after[name]
    return row


def interval(changes: pd.Series) -> str:
    """Mean change and its Student-t 95% interval."""
    mean, half = mean_ci(changes)
    return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of runs and tables")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (cores shared)")
    parser.add_argument("overrides", nargs="*", help="key=value passed to pgbench run")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    model = next((o[6:] for o in args.overrides if o.startswith("model=")), "")
    start = unseen(model, args.out / "unseen-before", args.overrides, threads)
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(
            pool.map(lambda s: one_seed(s, args.out, args.overrides, threads, start), seeds)
        )
    table = pd.DataFrame(rows)
    lines = [
        "| metric | before | after (mean) | change, mean [95% t interval] |",
        "| --- | --- | --- | --- |",
    ]
    for split in ("test", "unseen"):
        for name in METRICS:
            change = table[f"{split}_{name}_after"] - table[f"{split}_{name}_before"]
            table[f"{split}_{name}_change"] = change
            lines.append(
                f"| {split} {name} | {table[f'{split}_{name}_before'].mean():.2f} | "
                f"{table[f'{split}_{name}_after'].mean():.2f} | {interval(change)} |"
            )
    table.to_csv(args.out / "gains.csv", index=False)
    text = f"seeds {args.seeds}, overrides {args.overrides or 'none'}\n\n" + "\n".join(lines)
    (args.out / "gains.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
