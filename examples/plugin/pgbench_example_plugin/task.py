"""Echo: repeat a word. A task generated from a seed, with a verifiable reward.

The prompt asks the policy to repeat a word drawn from WORDS; the reward is 1 when the
completion, stripped, is that word, else 0; the held-out metric is accuracy in percent.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pgbench.fields import knob
from pgbench.tasks import Example, Splits, Task

WORDS = "chat chien maison pomme livre arbre soleil lune table porte mer ciel".split()


@dataclass
class Echo(Task):
    train_size: int = knob(200, "generated prompts for training", ge=1)
    valid_size: int = knob(40, "held-out prompts for evaluation during training", ge=1)
    test_size: int = knob(40, "held-out prompts for the final evaluation", ge=1)
    split_seed: int = knob(0, "seed of the generated prompts (fixed across run seeds)")

    metric = "accuracy"

    def splits(self) -> Splits:
        rng = random.Random(self.split_seed)
        drawn = [
            [Example(word, (word,)) for word in rng.choices(WORDS, k=size)]
            for size in (self.train_size, self.valid_size, self.test_size)
        ]
        return Splits(*drawn)

    def messages(self, example: Example) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"Repeat: {example.source}"}]

    def reward(self, completions: list[str], examples: list[Example]) -> list[float]:
        return [
            float(c.strip() == ex.references[0])
            for c, ex in zip(completions, examples, strict=True)
        ]

    def metrics(self, completions: list[str], examples: list[Example]) -> dict[str, float]:
        rewards = self.reward(completions, examples)
        return {"accuracy": 100.0 * sum(rewards) / len(rewards)}
