"""benchmarks/unseen_slice.py: its replay names exactly the rows the SFT never drew, and the
shipped slice is that replay of the shipped policy's SFT."""

import importlib.util
import json
from pathlib import Path

import torch

from pgbench import tasks
from pgbench.models import tiny
from pgbench.models.shipped import SHIPPED

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "unseen_slice.py"
spec = importlib.util.spec_from_file_location("unseen_slice", SCRIPT)
unseen_slice = importlib.util.module_from_spec(spec)
spec.loader.exec_module(unseen_slice)


def test_the_shipped_slice_is_the_replay_of_the_shipped_sft():
    task = tasks.get("fr_en")
    manifest = json.loads((SHIPPED / "fr_en" / "tiny.json").read_text())
    # the SFT drew from every train pair (none dropped for length), so indices line up
    assert manifest["train_pairs"] == len(task.sft_examples())
    assert manifest["spec"]["seed"] == 0 and manifest["sft_steps_run"] == 1000
    assert unseen_slice.unseen_slice(500, 45) == task.unseen()


def test_the_replay_names_exactly_the_rows_the_sft_never_drew(monkeypatch):
    drawn = set()
    real_batch = tiny.sft_batch

    def recording_batch(encoded, rows, pad_id):
        drawn.update(rows)
        return real_batch(encoded, rows, pad_id)

    def loss(model, ids, mask, labels):
        return (model.weight * ids.float().mean()).sum()

    monkeypatch.setattr(tiny, "sft_batch", recording_batch)
    monkeypatch.setattr(tiny, "answer_loss", loss)
    spec = tiny.TinySpec(seed=3, sft_steps=5, sft_batch_size=4, precision="fp32")
    encoded = [([1, 2, 3], 1)] * 30
    tiny.supervised_fine_tune(torch.nn.Linear(1, 1), encoded, spec, 0, progress=False)
    never = unseen_slice.never_drawn(30, 3, 5, 4)
    assert never and set(never) == set(range(30)) - drawn
