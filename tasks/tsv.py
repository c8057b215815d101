"""Reading `fr<TAB>en` sentence-pair files and splitting them deterministically."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

from pgbench.errors import DataError
from pgbench.tasks.base import Example, Splits

REFERENCE_SEPARATOR = " ||| "


def read_pairs(path: Path | str, columns: tuple[str, str] = ("fr", "en")) -> list[Example]:
    """Read a (optionally gzipped) TSV with a header `fr<TAB>en`; ` ||| ` separates references."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if not lines:
        raise DataError(f"{path} is empty; expected a header line '{columns[0]}\\t{columns[1]}'")
    header = lines[0].split("\t")
    if header != list(columns):
        raise DataError(
            f"{path} line 1: header is {lines[0]!r}; expected '{columns[0]}\\t{columns[1]}'"
        )
    examples = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != 2 or not cells[0].strip() or not cells[1].strip():
            raise DataError(
                f"{path} line {number}: expected two non-empty tab-separated columns "
                f"({columns[0]}, {columns[1]}), got {line[:80]!r}"
            )
        # padded, so a separator at either end of the cell separates too (`Hello. |||`)
        parts = f" {cells[1]} ".split(REFERENCE_SEPARATOR)
        references = tuple(r.strip() for r in parts if r.strip())
        if not references:
            raise DataError(
                f"{path} line {number}: the {columns[1]} column holds no reference (only "
                f"'{REFERENCE_SEPARATOR.strip()}' separators), got {line[:80]!r}"
            )
        examples.append(Example(cells[0].strip(), references))
    if not examples:
        raise DataError(f"{path} has a header but no rows")
    return examples


def split(examples: list[Example], valid_size: int, test_size: int, seed: int) -> Splits:
    """Shuffle with `seed` and cut test, valid, then train from the rest."""
    if len(examples) < valid_size + test_size + 1:
        raise DataError(
            f"{len(examples)} examples cannot hold valid_size={valid_size} and "
            f"test_size={test_size} with any left to train on"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    shuffled = [examples[i] for i in order]
    test = shuffled[:test_size]
    valid = shuffled[test_size : test_size + valid_size]
    return Splits(train=shuffled[test_size + valid_size :], valid=valid, test=test)
