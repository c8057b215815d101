"""Write fr_en's never-used slice: Tatoeba pairs no run trains on and nothing selects with.

The shipped fr_en policy was SFT-ed on every pair outside valid and test, drawing 64 rows at
random per step for 1000 steps (pgbench.models.tiny.supervised_fine_tune, generator seed 0):
about 40% of the pool was never drawn. This replays those draws and samples `--size` of the
never-drawn pairs with `--seed`; `pgbench.tasks.fr_en` then keeps them out of every split
(`task.test_split=unseen` scores them). tests/tasks/test_fr_en.py checks the shipped file
against the replay.

    python benchmarks/unseen_slice.py            # rewrites tasks/data/tatoeba_fr_en_unseen.tsv.gz
"""

from __future__ import annotations

import argparse
import gzip
import random
from pathlib import Path

import torch

from pgbench.models.tiny import task_spec
from pgbench.tasks.base import Example
from pgbench.tasks.fr_en import DATA_FILE, UNSEEN_FILE, FrEn, shipped_pairs
from pgbench.tasks.tsv import REFERENCE_SEPARATOR, split


def never_drawn(pool_size: int, seed: int, steps: int, batch_size: int) -> list[int]:
    """Indices of the pool that the SFT's seeded `torch.randint` draws never picked."""
    generator = torch.Generator().manual_seed(seed)
    drawn: set[int] = set()
    for _ in range(steps):
        drawn.update(torch.randint(pool_size, (batch_size,), generator=generator).tolist())
    return [i for i in range(pool_size) if i not in drawn]


def unseen_slice(size: int, seed: int) -> list[Example]:
    """`size` pairs of the shipped policy's SFT pool that its SFT never drew."""
    task = FrEn()
    # the pool as FrEn.sft_examples() holds it, split here: FrEn reads the file this writes
    pool = split(shipped_pairs(DATA_FILE), task.valid_size, task.test_size, task.split_seed).train
    spec = task_spec(task)
    candidates = never_drawn(len(pool), spec.seed, spec.sft_steps, spec.sft_batch_size)
    return [pool[i] for i in sorted(random.Random(seed).sample(candidates, size))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=500, help="pairs in the slice")
    parser.add_argument("--seed", type=int, default=45, help="seed of the sample")
    default = Path(__file__).parents[1] / "tasks" / "data" / UNSEEN_FILE
    parser.add_argument("--out", type=Path, default=default, help="gzip TSV to write")
    args = parser.parse_args()
    rows = [
        f"{ex.source}\t{REFERENCE_SEPARATOR.join(ex.references)}"
        for ex in unseen_slice(args.size, args.seed)
    ]
    with gzip.GzipFile(args.out, "wb", mtime=0) as handle:  # mtime 0: the same bytes each time
        handle.write(("fr\ten\n" + "\n".join(rows) + "\n").encode())
    print(f"wrote {len(rows)} pairs to {args.out}")


if __name__ == "__main__":
    main()
