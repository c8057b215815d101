"""The chat format of pgbench's tiny policies: its special tokens and chat template. The
tiny policies (pgbench.models.tiny) are built with it; a task that writes a system turn
for other models leaves it out for them (fr_en's `task.system=auto`)."""

SPECIAL_TOKENS = ["<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
