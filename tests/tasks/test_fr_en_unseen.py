"""fr_en's never-used slice: out of every split, scored by task.test_split=unseen; the
replay that chose it is tested in tests/benchmarks/test_unseen_slice.py."""

import pytest

from pgbench import tasks
from pgbench.errors import ConfigError
from pgbench.models.shipped import SHIPPED, shipped_policy


def sources(examples):
    return {example.source for example in examples}


def test_the_slice_is_in_no_split_and_test_split_unseen_scores_it():
    task = tasks.get("fr_en")
    splits, unseen = task.splits(), task.unseen()
    assert len(unseen) == len(sources(unseen)) == 500
    assert splits.sizes() == {"train": 70592 - 1000 - 500, "valid": 500, "test": 500}
    for part in (splits.train, splits.valid, splits.test):
        assert not sources(part) & sources(unseen)
    # the shipped policy was built from the train split with the slice in it
    assert sources(task.sft_examples()) == sources(splits.train) | sources(unseen)
    scored = tasks.get("fr_en", test_split="unseen").splits()
    assert scored.test == unseen
    assert (scored.train, scored.valid) == (splits.train, splits.valid)
    assert shipped_policy(tasks.get("fr_en", test_split="unseen")) == SHIPPED / "fr_en"


@pytest.mark.parametrize(
    "fields", [{"source": "file", "train_file": "x.tsv"}, {"test_file": "x.tsv"}]
)
def test_unseen_needs_the_tatoeba_source_and_no_test_file(fields):
    with pytest.raises(ConfigError, match="task.test_split=unseen .* needs task.source=tatoeba"):
        tasks.get("fr_en", test_split="unseen", **fields)
