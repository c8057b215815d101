from dataclasses import dataclass

import pytest
from transformers import AutoTokenizer

from pgbench import tasks
from pgbench.errors import ConfigError
from pgbench.models.shipped import SHIPPED
from pgbench.tasks.base import Example, Splits, Task

TOKENIZER = AutoTokenizer.from_pretrained(SHIPPED / "arith")


@dataclass(frozen=True)
class Echo(Task):
    system: str | None = None

    def messages(self, example):
        return [{"role": "user", "content": f"Repeat: {example.source}"}]

    def system_message(self, tokenizer):
        return self.system


def test_a_prompt_is_the_system_turn_and_the_messages_in_the_chat_template():
    example = Example("abc", ("abc", "ABC"))
    assert Echo().prompt(example, TOKENIZER) == "<|user|>Repeat: abc<|end|><|assistant|>"
    assert Echo("Be brief.").prompt(example, TOKENIZER) == (
        "<|system|>Be brief.<|end|><|user|>Repeat: abc<|end|><|assistant|>"
    )
    assert Echo().target(example) == "abc" and Echo().tools() is None  # the first reference


def test_splits_sizes_and_the_registry():
    one = [Example("a", ("b",))]
    assert Splits(one * 3, one, one * 2).sizes() == {"train": 3, "valid": 1, "test": 2}
    assert tasks.get("arith").name == "arith"
    known = "arith, dataset, fr_en, poet"
    with pytest.raises(ConfigError, match=f"^unknown task 'de_en'; registered: {known}$"):
        tasks.get("de_en")
