import torch

from pgbench import tasks
from pgbench.config.sections import LoraConfig
from pgbench.engine.evaluate import evaluate
from pgbench.engine.sampling import generate_greedy
from pgbench.models.policy import load_policy
from pgbench.models.shipped import SHIPPED


def test_greedy_completions_of_the_tasks_prompts_scored_in_order():
    task = tasks.get("arith")
    policy = load_policy(str(SHIPPED / "arith"), LoraConfig(), torch.device("cpu"))
    examples = task.splits().test[:16]
    metrics, texts = evaluate(policy.model, policy.tokenizer, task, examples, 12, batch_size=5)

    prompts = [task.prompt(example, policy.tokenizer) for example in examples]
    alone = [generate_greedy(policy.model, policy.tokenizer, [p], 12, 1)[0] for p in prompts]
    assert texts == alone  # each example's own completion, in the examples' order
    # hand count: the shipped policy answers with the bare number ("80431")
    right = [text.strip() == ex.references[0] for text, ex in zip(texts, examples, strict=True)]
    assert 0 < sum(right) < len(right)  # the shipped policy solves some, not all
    assert metrics["accuracy"] == 100 * sum(right) / len(right)
    wrong = [len(text) for text, ok in zip(texts, right, strict=True) if not ok]
    assert metrics["wrong_chars"] == sum(wrong) / len(wrong)
