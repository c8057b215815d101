"""Arithmetic with a verifiable reward: multi-digit addition and multiplication.

Problems such as `37 + 45` are generated from `task.split_seed` (no data, no download):
both operands have exactly `task.digits` digits and the operator is drawn from `task.ops`.
The reward is 1 when the last integer of the completion equals the answer, else 0; the
held-out metric is accuracy in percent.

The default (5-digit addition) is set for the tiny policy: its bootstrap answers about 60%
of the test problems, leaving room for RL. Multiplication (`task.ops=*` or `+*`) is there for
larger models; the tiny policy learns almost none of it within a CPU budget.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from pgbench.errors import ConfigError
from pgbench.fields import check_bounds, knob
from pgbench.tasks.base import Example, Splits, Task, register

OPERATORS = {"+": lambda a, b: a + b, "*": lambda a, b: a * b}

# Integers with optional thousands separators ("1,234") and an optional decimal part;
# the sign may be "-" or the Unicode minus.
NUMBER = re.compile(r"[-\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def parse_answer(text: str) -> int | None:
    """The last number in `text` as an integer, or None if there is none or it is fractional.

    Tolerates surrounding words and markup: "82", " 82.", "= 82", "The answer is **82**",
    "1,234" (-> 1234), "-7", "82.0" (-> 82); "82.5" -> None.
    """
    numbers = NUMBER.findall(text)
    if not numbers:
        return None
    whole, _, fraction = numbers[-1].replace(",", "").replace("\u2212", "-").partition(".")
    if fraction.strip("0"):
        return None
    return int(whole)


def problem_count(digits: int, ops: str) -> int:
    """Distinct problems: unordered operand pairs (a + b is b + a) for each operator."""
    operands = 9 * 10 ** (digits - 1)
    return len(ops) * operands * (operands + 1) // 2


@register("arith")
@dataclass
class Arith(Task):
    digits: int = knob(5, "digits of each operand (difficulty)", ge=1)
    ops: str = knob("+", "operators to draw from: +, * or +* (quote * in a shell)")
    train_size: int = knob(100000, "generated problems for training (and the tiny SFT)", ge=1)
    valid_size: int = knob(500, "held-out problems for evaluation during training", ge=1)
    test_size: int = knob(500, "held-out problems for the final evaluation", ge=1)
    split_seed: int = knob(0, "seed of the generated problems (fixed across run seeds)")

    metric = "accuracy"
    # The tiny bootstrap for arithmetic, chosen by measurement on CPU: one token per digit;
    # a 128-wide 2-layer model (the default 256x4 one was still near 0% on 3-digit addition
    # after 1,750 steps); and an SFT learning rate that ends at 30% of its peak instead of 0
    # (policies annealed to 0 lost ~10 points of valid accuracy in their first 50 RL steps
    # at trainer.lr=1e-4 and mostly ended below where they started). Whether and when SFT
    # learns carrying is a lottery of the build (2,000 fp32 steps gave 0.8% with 2 threads and
    # 86.4% with 1), so SFT stops once 200 valid problems reach 40%: 43.6% / 41.6% on test.
    tiny_overrides: ClassVar[dict[str, Any]] = {
        "split_digits": True,
        "hidden_size": 128,
        "layers": 2,
        "intermediate_size": 352,
        "sft_steps": 4000,
        "sft_final_lr_ratio": 0.3,
        "stop_at": 40.0,
    }

    def __post_init__(self) -> None:
        check_bounds(self, "task.")  # before counting problems, which needs digits >= 1
        if not self.ops or set(self.ops) - set(OPERATORS) or len(set(self.ops)) < len(self.ops):
            raise ConfigError(
                f"task.ops={self.ops!r} is not valid; use +, * or +* (each operator at most once)"
            )
        total = self.train_size + self.valid_size + self.test_size
        available = problem_count(self.digits, self.ops)
        if total > available:
            room = available - self.valid_size - self.test_size  # train problems that fit
            fix = (
                f"set task.train_size<={room}"
                if room >= 1
                else "lower task.valid_size and task.test_size"
            )
            raise ConfigError(
                f"task.train_size + task.valid_size + task.test_size = {total} exceeds the "
                f"{available} distinct problems with task.digits={self.digits} and "
                f"task.ops={self.ops}; {fix} or raise task.digits"
            )

    def splits(self) -> Splits:
        """Distinct problems drawn test first, then valid, then train, so the held-out splits
        do not depend on `train_size`; a problem and its commuted form share one split."""
        rng = random.Random(self.split_seed)
        low, high = 10 ** (self.digits - 1), 10**self.digits - 1
        seen: set[tuple[str, int, int]] = set()
        drawn: list[list[Example]] = []
        for size in (self.test_size, self.valid_size, self.train_size):
            part: list[Example] = []
            while len(part) < size:
                op = rng.choice(self.ops)
                a, b = rng.randint(low, high), rng.randint(low, high)
                key = (op, min(a, b), max(a, b))
                if key in seen:
                    continue
                seen.add(key)
                part.append(Example(f"{a} {op} {b}", (str(OPERATORS[op](a, b)),)))
            drawn.append(part)
        test, valid, train = drawn
        return Splits(train=train, valid=valid, test=test)

    def messages(self, example: Example) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"What is {example.source}?"}]

    def reward(self, completions: list[str], examples: list[Example]) -> list[float]:
        return [
            float(parse_answer(c) in {int(r) for r in ex.references})
            for c, ex in zip(completions, examples, strict=True)
        ]

    def metrics(self, completions: list[str], examples: list[Example]) -> dict[str, float]:
        """Accuracy (0-100) and the mean length in characters of the wrong completions (NaN
        if none is wrong): GRPO's normalisations are said to lengthen wrong answers."""
        rewards = self.reward(completions, examples)
        wrong = [len(c) for c, r in zip(completions, rewards, strict=True) if not r]
        return {
            "accuracy": 100.0 * sum(rewards) / len(rewards),
            "wrong_chars": sum(wrong) / len(wrong) if wrong else math.nan,
        }
