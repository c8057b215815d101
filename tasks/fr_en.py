"""French -> English translation, rewarded by chrF or BLEU against every reference.

Data: Tatoeba pairs shipped with pgbench (default), the fr-en rows of the hub dataset
`haoranxu/X-ALMA-Preference` (`task.source=hub`, needs network), or your own TSV files
(`task.source=file`, header `fr<TAB>en`, ` ||| ` between several references).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Literal

from pgbench.errors import ConfigError, DataError
from pgbench.fields import knob
from pgbench.tasks import Example, Splits, Task, register
from pgbench.tasks.rewards import SENTENCE_REWARDS, corpus_metrics
from pgbench.tasks.tsv import read_pairs, split

HUB_DATASET = "haoranxu/X-ALMA-Preference"


def load_hub_pairs(limit: int) -> list[Example]:
    """fr-en rows of X-ALMA-Preference: French from `source`, the reference from `chosen`."""
    import datasets

    try:
        rows = datasets.load_dataset(HUB_DATASET, split="train")
    except Exception as err:  # datasets raises many types when offline or missing
        raise DataError(
            f"cannot load the hub dataset {HUB_DATASET} ({type(err).__name__}: {err}); "
            "it needs network access, or use task.source=tatoeba (offline) or task.source=file"
        ) from None
    rows = rows.filter(lambda row: row["directions"] == "fr-en")
    if limit:
        rows = rows.select(range(min(limit, len(rows))))
    return [Example(row["source"].strip(), (row["chosen"].strip(),)) for row in rows]


@register("fr_en")
@dataclass
class FrEn(Task):
    source: Literal["tatoeba", "hub", "file"] = knob("tatoeba", "where the data comes from")
    train_file: str = knob("", "TSV of training pairs (fr<TAB>en); used with task.source=file")
    test_file: str = knob("", "TSV that replaces the test split (any source)")
    limit: int = knob(0, "use only the first N pairs of the source (0 = all)", ge=0)
    reward_name: Literal["chrf", "bleu"] = knob(
        "chrf", "training reward, scaled to [0, 1]", key="reward"
    )
    valid_size: int = knob(500, "held-out pairs for evaluation during training", ge=1)
    test_size: int = knob(500, "held-out pairs for the final evaluation", ge=1)
    split_seed: int = knob(0, "seed of the train/valid/test split (fixed across run seeds)")

    metric = "chrf"

    def __post_init__(self) -> None:
        if self.source == "file" and not self.train_file:
            raise ConfigError("task.source=file needs task.train_file=<path to a fr<TAB>en TSV>")
        if self.train_file and self.source != "file":
            raise ConfigError(
                "task.train_file is only read with task.source=file "
                f"(got task.source={self.source})"
            )

    def _pairs(self) -> list[Example]:
        if self.source == "hub":
            return load_hub_pairs(self.limit)
        if self.source == "file":
            pairs = read_pairs(self.train_file)
        else:
            data = resources.files("pgbench.tasks") / "data" / "tatoeba_fr_en.tsv.gz"
            with resources.as_file(data) as path:
                pairs = read_pairs(path)
        return pairs[: self.limit] if self.limit else pairs

    def splits(self) -> Splits:
        pairs = self._pairs()
        if not self.test_file:
            return split(pairs, self.valid_size, self.test_size, self.split_seed)
        test = read_pairs(self.test_file)
        rest = split(pairs, self.valid_size, 0, self.split_seed)
        return Splits(train=rest.train, valid=rest.valid, test=test)

    def messages(self, example: Example) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"Translate French to English:\n{example.source}"}]

    def reward(self, completions: list[str], examples: list[Example]) -> list[float]:
        score = SENTENCE_REWARDS[self.reward_name]
        return [
            score(c.strip(), ex.references) for c, ex in zip(completions, examples, strict=True)
        ]

    def metrics(self, completions: list[str], examples: list[Example]) -> dict[str, float]:
        return corpus_metrics([c.strip() for c in completions], [ex.references for ex in examples])
