import pytest
import torch

from pgbench.config import LoraConfig
from pgbench.engine import completion_mask, sample, token_logprobs, token_logprobs_chunked
from pgbench.policy import load_policy


def test_completion_mask_keeps_tokens_through_first_eos():
    eos = 9
    ids = torch.tensor([[5, 6, 9, 9, 9], [5, 9, 7, 9, 2], [1, 2, 3, 4, 5]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(completion_mask(ids, eos), expected)


def load(micro_policy):
    return load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))


def prompts(task, policy, count=3):
    return [task.prompt(example, policy.tokenizer) for example in task.splits().train[:count]]


def test_sample_shapes_padding_and_masks(micro_policy, micro_task):
    policy = load(micro_policy)
    torch.manual_seed(0)
    rollout = sample(policy.model, policy.tokenizer, prompts(micro_task, policy), 2, 10, 1.0)
    assert rollout.prompt_ids.shape[0] == rollout.completion_ids.shape[0] == 6
    assert rollout.completion_ids.shape[1] <= 10
    # left padding: every prompt ends at the last column; rows of one prompt are adjacent
    assert bool(rollout.prompt_mask[:, -1].all())
    assert torch.equal(rollout.prompt_ids[0], rollout.prompt_ids[1])
    eos = policy.tokenizer.eos_token_id
    for ids, mask in zip(rollout.completion_ids, rollout.completion_mask, strict=True):
        kept = ids[mask.bool()]
        assert (kept[:-1] != eos).all()  # EOS, if any, is the last kept token
    assert rollout.tokens == int(rollout.completion_mask.sum())


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_logprobs_match_a_naive_unpadded_forward(micro_policy, micro_task, temperature):
    policy = load(micro_policy)
    torch.manual_seed(1)
    rollout = sample(policy.model, policy.tokenizer, prompts(micro_task, policy, 4), 2, 10, 1.0)
    logprobs, entropy, _ = token_logprobs(policy.model, rollout, temperature, with_entropy=True)
    for row in range(len(rollout.texts)):
        prompt = rollout.prompt_ids[row][rollout.prompt_mask[row].bool()]
        completion = rollout.completion_ids[row][rollout.completion_mask[row].bool()]
        full = torch.cat([prompt, completion])[None]  # no padding at all
        with torch.no_grad():
            logits = policy.model(full).logits[0, len(prompt) - 1 : -1] / temperature
        naive = logits.log_softmax(-1).gather(-1, completion[:, None])[:, 0]
        torch.testing.assert_close(
            logprobs[row][rollout.completion_mask[row].bool()], naive, atol=1e-5, rtol=1e-5
        )
        naive_entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
        torch.testing.assert_close(
            entropy[row][rollout.completion_mask[row].bool()], naive_entropy, atol=1e-4, rtol=1e-4
        )
    chunked, _, _ = token_logprobs_chunked(
        policy.model, rollout, chunk_rows=3, temperature=temperature
    )
    torch.testing.assert_close(chunked, logprobs.detach(), atol=1e-6, rtol=0)


def test_value_head_reads_the_hidden_state_before_each_token(micro_policy, micro_task):
    policy = load(micro_policy)
    rollout = sample(policy.model, policy.tokenizer, prompts(micro_task, policy, 2), 2, 6, 1.0)
    head = torch.nn.Linear(policy.model.config.hidden_size, 1)
    scores = token_logprobs(policy.model, rollout, value_head=head)
    row = 0
    prompt = rollout.prompt_ids[row][rollout.prompt_mask[row].bool()]
    completion = rollout.completion_ids[row][rollout.completion_mask[row].bool()]
    with torch.no_grad():
        hidden = policy.model(torch.cat([prompt, completion])[None], output_hidden_states=True)
        expected = head(hidden.hidden_states[-1][0, len(prompt) - 1 : -1]).squeeze(-1)
    got = scores.values[row][rollout.completion_mask[row].bool()]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
