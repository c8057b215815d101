import gzip
import re

import pytest

from pgbench.errors import DataError
from pgbench.tasks.base import Example
from pgbench.tasks.tsv import read_pairs, split


def test_pairs_are_read_with_their_references(tmp_path):
    path = tmp_path / "pairs.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("fr\ten\n Bonjour. \tHello. ||| Hi.\n\nMerci.\tThanks. |||  \n")
    assert read_pairs(path) == [
        Example("Bonjour.", ("Hello.", "Hi.")),  # stripped; a blank line is skipped
        Example("Merci.", ("Thanks.",)),  # an empty reference is dropped
    ]
    other = tmp_path / "de.tsv"
    other.write_text("de\ten\nHallo.\tHello.\n", encoding="utf-8")
    assert read_pairs(other, ("de", "en")) == [Example("Hallo.", ("Hello.",))]
    with pytest.raises(DataError, match=r"line 1: header is 'de\\ten'; expected 'fr\\ten'"):
        read_pairs(other)


@pytest.mark.parametrize("row", ["bonjour\t ||| ", "bonjour\t|||", "bonjour\t |||  ||| "])
def test_a_row_with_only_separators_is_refused_naming_its_line(tmp_path, row):
    path = tmp_path / "pairs.tsv"
    path.write_text(f"fr\ten\nMerci.\tThanks.\n{row}\n", encoding="utf-8")
    message = f"{path} line 3: the en column holds no reference (only '|||' separators)"
    with pytest.raises(DataError, match=f"^{re.escape(message)}, got {re.escape(repr(row))}$"):
        read_pairs(path)


def test_splits_are_disjoint_sized_and_fixed_by_the_seed():
    examples = [Example(f"phrase {i}", (f"sentence {i}",)) for i in range(20)]
    splits = split(examples, valid_size=3, test_size=5, seed=1)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (12, 3, 5)
    assert sorted(splits.train + splits.valid + splits.test, key=examples.index) == examples
    assert split(examples, 3, 5, seed=1) == splits
    assert split(examples, 3, 5, seed=2).test != splits.test
    with pytest.raises(DataError, match="20 examples cannot hold valid_size=10 and test_size=10"):
        split(examples, 10, 10, seed=0)
