import pytest
from transformers import AutoTokenizer

from pgbench.models.shipped import SHIPPED
from pgbench.tasks.chat import CHAT_TEMPLATE, SPECIAL_TOKENS


@pytest.mark.parametrize("task", ["fr_en", "arith", "poet"])
def test_the_shipped_policies_speak_the_tiny_chat_format(task):
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED / task)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    for token in SPECIAL_TOKENS:  # each one token, never split
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        "<|system|>S<|end|><|user|>Q<|end|><|assistant|>"
    )
