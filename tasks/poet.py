"""Agentic poet: short poems under constraints, with tools the policy may call mid-episode.

A prompt names a form (line count, rhyme scheme, syllables per line) and a theme word that
the poem must use, e.g. `Write a couplet (rhyme scheme AA, 4-8 syllables a line) that uses
the word "night".` Prompts are generated from `task.split_seed` over common English words.

Tools, in a text protocol: the policy writes `<tool>rhymes(night)</tool>` and the
environment appends `\\n<result>right, write, tonight, might, quite</result>\\n` (common
rhymes, most frequent first) before the policy goes on; `<tool>syllables(the night)</tool>`
answers `<result>2</result>`. Unknown or malformed calls are answered with an error result
naming the tools; error results never echo the policy's text. At most `task.max_turns`
policy turns: a call in the last turn ends the episode unanswered.

Reward: the mean of five constraint scores in [0, 1] over the poem (the completion without
tool calls and results; non-empty lines, stripped):
  lines      1 if the poem has exactly the form's number of lines, else 0
  rhyme      fraction of the scheme's rhyme pairs that rhyme (each line with the first line
             of its letter; different letters are not required to differ)
  syllables  fraction of the form's lines present with a syllable count in range
  theme      1 if the theme word is one of the poem's words, else 0
  distinct   distinct lines among the form's lines, divided by the form's line count
Held-out metrics: `score` (mean reward x 100), each constraint's pass rate (percent of poems
scoring 1 on it) and `tool_calls` (mean calls per episode).
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from pgbench.errors import ConfigError
from pgbench.fields import check_bounds, knob
from pgbench.tasks.base import Example, Splits, Task, ToolEnv, register
from pgbench.tasks.poetry import lexicon, rhyme, rhyming_parts, syllables, words

TOOL_CALL = re.compile(r"<tool>(.*?)</tool>", re.DOTALL)
RESULT = re.compile(r"<result>.*?</result>", re.DOTALL)
CALL = re.compile(r"([a-z_]{1,20})\((.*)\)", re.DOTALL)
TOOLS = "rhymes(word), syllables(line)"
RHYMES_SHOWN = 5
CONSTRAINTS = ("lines", "rhyme", "syllables", "theme", "distinct")
SYSTEM = (
    "Tools: <tool>rhymes(word)</tool> lists rhymes, <tool>syllables(line)</tool> counts "
    "syllables; the answer comes as <result>...</result>."
)


@dataclass(frozen=True)
class Form:
    """A poem form: one scheme letter per line (same letter = must rhyme), syllables a line."""

    scheme: str
    low: int
    high: int

    @property
    def lines(self) -> int:
        return len(self.scheme)

    def rhyme_pairs(self) -> list[tuple[int, int]]:
        """(first line of a letter, later line of that letter): ABAB -> [(0, 2), (1, 3)]."""
        first: dict[str, int] = {}
        pairs = []
        for index, letter in enumerate(self.scheme):
            if letter in first:
                pairs.append((first[letter], index))
            else:
                first[letter] = index
        return pairs


FORMS = {
    "couplet": Form("AA", 4, 8),
    "tercet": Form("AAA", 3, 6),
    "quatrain": Form("ABAB", 3, 5),
}


def run_tool(call: str) -> str:
    """The answer to one call such as `rhymes(night)` or `syllables(the night)`."""
    match = CALL.fullmatch(call.strip())
    if match is None:
        return f"error: malformed call; tools: {TOOLS}"
    name, argument = match.group(1), match.group(2).strip()
    if name == "rhymes":
        found = words(argument)
        if len(found) != 1:
            return "error: rhymes takes one word, e.g. rhymes(night)"
        return ", ".join(lexicon().rhymes(found[0], RHYMES_SHOWN)) or "none"
    if name == "syllables":
        if not words(argument):
            return "error: syllables takes a line of words, e.g. syllables(the night is long)"
        return str(syllables(argument))
    return f"error: unknown tool {name}; tools: {TOOLS}"


def tool_result(completion: str) -> str:
    """The text appended after a completion whose current turn (the text after the last
    result) contains `</tool>`: the answer to the `<tool>...</tool>` call there, framed."""
    turn = completion.rsplit("</result>", 1)[-1]
    end = turn.find("</tool>")
    start = turn.rfind("<tool>", 0, max(end, 0))
    if end < 0 or start < 0:
        answer = f"error: malformed call; tools: {TOOLS}"
    else:
        answer = run_tool(turn[start + len("<tool>") : end])
    return f"\n<result>{answer}</result>\n"


def poem_lines(completion: str) -> list[str]:
    """The poem: non-empty stripped lines of the completion without tool calls and results."""
    text = RESULT.sub("\n", TOOL_CALL.sub("\n", completion))
    return [line.strip() for line in text.splitlines() if line.strip()]


def constraint_scores(completion: str, theme: str, form: Form) -> dict[str, float]:
    """Score in [0, 1] of each constraint (see the module docstring)."""
    lines = poem_lines(completion)
    kept = lines[: form.lines]
    ends = [found[-1] if found else "" for found in (words(line) for line in kept)]
    pairs = form.rhyme_pairs()
    rhymed = sum(1 for a, b in pairs if b < len(ends) and rhyme(ends[a], ends[b]))
    in_range = sum(1 for line in kept if form.low <= syllables(line) <= form.high)
    distinct = {" ".join(words(line)) for line in kept}
    return {
        "lines": float(len(lines) == form.lines),
        "rhyme": rhymed / len(pairs),
        "syllables": in_range / form.lines,
        "theme": float(theme in {w for line in lines for w in words(line)}),
        "distinct": len(distinct) / form.lines,
    }


def parse_source(source: str) -> tuple[str, str]:
    """`"couplet night"` -> (form name, theme word)."""
    form, theme = source.split(" ")
    return form, theme


def transcript(theme: str, form: Form, rng: random.Random) -> str | None:
    """A good episode for the SFT bootstrap, or None if none can be made: one rhymes(theme)
    call, then Tatoeba sentences in the syllable range ending in the theme (first line) and
    in distinct words of the tool's answer (other lines). Every line then rhymes with every
    other, which satisfies any scheme."""
    lex = lexicon()
    if not lex.lines_ending(theme, form.low, form.high):
        return None
    # answer words sharing one rhyming part with the theme also rhyme with each other
    part = min(rhyming_parts(theme))
    options = [
        word
        for word in lex.rhymes(theme, RHYMES_SHOWN)
        if part in rhyming_parts(word) and lex.lines_ending(word, form.low, form.high)
    ]
    if len(options) < form.lines - 1:
        return None
    ends = [theme, *rng.sample(options, form.lines - 1)]
    lines = [rng.choice(lex.lines_ending(word, form.low, form.high)) for word in ends]
    call = f"<tool>rhymes({theme})</tool>"
    return call + tool_result(call) + "\n".join(lines)


@functools.cache
def combinations(forms: tuple[str, ...]) -> list[tuple[str, str]]:
    """Every (form, theme) pair with a good transcript, themes being common words of 3+
    letters outside the 30 most frequent, in a fixed order."""
    lex = lexicon()
    themes = sorted(w for w, rank in lex.rank.items() if rank >= 30 and len(w) >= 3)
    rng = random.Random(0)  # whether a transcript exists does not depend on the draw
    return [
        (name, theme)
        for name in forms
        for theme in themes
        if transcript(theme, FORMS[name], rng) is not None
    ]


@register("poet")
@dataclass
class Poet(Task):
    forms: str = knob("couplet,tercet,quatrain", "comma-separated forms: " + ", ".join(FORMS))
    max_turns: int = knob(3, "policy turns per episode (tool calls + 1)", ge=1)
    train_size: int = knob(4000, "generated training prompts (and tiny SFT transcripts)", ge=1)
    valid_size: int = knob(200, "held-out prompts for evaluation during training", ge=1)
    test_size: int = knob(200, "held-out prompts for the final evaluation", ge=1)
    split_seed: int = knob(0, "seed of the prompt split and transcripts (fixed across seeds)")

    metric = "score"
    # Transcripts are about 3x as long as fr_en pairs: room for them, and a shorter SFT
    # (half the steps and pairs per step) to keep the build within minutes on 2 CPU cores.
    tiny_overrides: ClassVar[dict[str, Any]] = {
        "max_length": 128,
        "sft_steps": 500,
        "sft_batch_size": 32,
    }

    def __post_init__(self) -> None:
        check_bounds(self, "task.")
        names = self.form_names()
        unknown = [name for name in names if name not in FORMS]
        if not names or unknown or len(set(names)) < len(names):
            raise ConfigError(
                f"task.forms={self.forms!r} is not valid; use comma-separated distinct forms "
                f"from: {', '.join(FORMS)}"
            )

    def form_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.forms.split(",") if name.strip())

    def splits(self) -> Splits:
        """(form, theme) pairs shuffled with `split_seed`: test first, then valid; training
        prompts are drawn from the remaining pairs, so held-out pairs are never trained on
        (their theme words may appear in training under another form)."""
        pairs = list(combinations(self.form_names()))
        held_out = self.valid_size + self.test_size
        if held_out >= len(pairs):
            raise ConfigError(
                f"task.valid_size + task.test_size = {held_out} must be below the "
                f"{len(pairs)} (form, theme) pairs of task.forms={self.forms}"
            )
        rng = random.Random(self.split_seed)
        rng.shuffle(pairs)
        test = pairs[: self.test_size]
        valid = pairs[self.test_size : held_out]
        train = [rng.choice(pairs[held_out:]) for _ in range(self.train_size)]

        def examples(part: list[tuple[str, str]]) -> list[Example]:
            return [
                Example(f"{name} {theme}", (transcript(theme, FORMS[name], rng) or "",))
                for name, theme in part
            ]

        return Splits(train=examples(train), valid=examples(valid), test=examples(test))

    def messages(self, example: Example) -> list[dict[str, str]]:
        name, theme = parse_source(example.source)
        form = FORMS[name]
        ask = (
            f"Write a {name} (rhyme scheme {form.scheme}, {form.low}-{form.high} syllables "
            f'a line) that uses the word "{theme}".'
        )
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ask}]

    def tools(self) -> ToolEnv:
        return ToolEnv(stop="</tool>", call=tool_result, max_turns=self.max_turns)

    def scores(self, completions: list[str], examples: list[Example]) -> list[dict[str, float]]:
        """Constraint scores of each completion."""
        result = []
        for completion, example in zip(completions, examples, strict=True):
            name, theme = parse_source(example.source)
            result.append(constraint_scores(completion, theme, FORMS[name]))
        return result

    def reward(self, completions: list[str], examples: list[Example]) -> list[float]:
        return [sum(s.values()) / len(s) for s in self.scores(completions, examples)]

    def metrics(self, completions: list[str], examples: list[Example]) -> dict[str, float]:
        scores = self.scores(completions, examples)
        count = len(scores)
        metrics = {"score": 100.0 * sum(sum(s.values()) / len(s) for s in scores) / count}
        for name in CONSTRAINTS:
            metrics[name] = 100.0 * sum(s[name] == 1.0 for s in scores) / count
        calls = sum(len(TOOL_CALL.findall(c)) for c in completions)
        metrics["tool_calls"] = calls / count
        return metrics
