"""The engine's scoring half (pgbench.engine.scoring): log-probs, entropy and values of rollouts."""

import pytest
import torch

from pgbench.engine.sampling import sample
from pgbench.engine.scoring import token_logprobs, token_logprobs_chunked
from tests.pgbench.engine.test_sampling import load, prompts, scripted_tools


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_logprobs_match_a_naive_unpadded_forward(micro_policy, micro_task, temperature):
    policy = load(micro_policy)
    torch.manual_seed(1)
    rollout = sample(policy.model, policy.tokenizer, prompts(micro_task, policy, 4), 2, 10, 1.0)
    logprobs, entropy, *_ = token_logprobs(policy.model, rollout, temperature, with_entropy=True)
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
    chunked, *_ = token_logprobs_chunked(
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


def test_multi_turn_logprobs_match_a_naive_forward(micro_policy, micro_task):
    policy = load(micro_policy)
    tools, _ = scripted_tools()
    torch.manual_seed(0)
    rollout = sample(
        policy.model, policy.tokenizer, prompts(micro_task, policy, 3), 2, 12, 1.0, tools=tools
    )
    assert (rollout.completion_mask.sum(1) > rollout.policy_mask.sum(1)).any()
    logprobs = token_logprobs(policy.model, rollout).logprobs
    for row in range(len(rollout.texts)):
        prompt = rollout.prompt_ids[row][rollout.prompt_mask[row].bool()]
        real = rollout.completion_mask[row].bool()
        completion = rollout.completion_ids[row][real]
        with torch.no_grad():
            logits = policy.model(torch.cat([prompt, completion])[None]).logits[0]
        naive = logits[len(prompt) - 1 : -1].log_softmax(-1).gather(-1, completion[:, None])[:, 0]
        torch.testing.assert_close(logprobs[row][real], naive, atol=1e-5, rtol=1e-5)


def test_logprobs_under_gradient_checkpointing_match_the_shared_prompt_forward(
    micro_policy, micro_task
):
    """Gradient checkpointing drops the KV cache, so training-mode scoring with gradients
    runs prompt and completion in one forward; it gives the same log-probs."""
    policy = load(micro_policy)
    torch.manual_seed(0)
    rollout = sample(policy.model, policy.tokenizer, prompts(micro_task, policy), 2, 8)
    shared = token_logprobs(policy.model, rollout).logprobs.detach()
    policy.model.activation_checkpointing_enable()
    policy.model.train()
    whole = token_logprobs(policy.model, rollout).logprobs
    assert whole.requires_grad
    torch.testing.assert_close(whole.detach(), shared, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sq_probs_are_the_naive_sum_of_squared_probabilities(micro_policy, micro_task, temperature):
    # the optimal token baseline's proxy needs sum_v pi(v)^2 of the sampled distribution
    policy = load(micro_policy)
    torch.manual_seed(2)
    rollout = sample(policy.model, policy.tokenizer, prompts(micro_task, policy, 2), 2, 8, 1.0)
    assert token_logprobs(policy.model, rollout, temperature).sq_probs is None  # only if asked
    scores = token_logprobs(policy.model, rollout, temperature, with_sq_probs=True)
    assert not scores.sq_probs.requires_grad
    for row in range(len(rollout.texts)):
        prompt = rollout.prompt_ids[row][rollout.prompt_mask[row].bool()]
        completion = rollout.completion_ids[row][rollout.completion_mask[row].bool()]
        with torch.no_grad():
            logits = policy.model(torch.cat([prompt, completion])[None]).logits
        probs = (logits[0, len(prompt) - 1 : -1] / temperature).softmax(-1)
        got = scores.sq_probs[row][rollout.completion_mask[row].bool()]
        torch.testing.assert_close(got, (probs**2).sum(-1), atol=1e-5, rtol=1e-5)
    chunked = token_logprobs_chunked(policy.model, rollout, 3, temperature, with_sq_probs=True)
    torch.testing.assert_close(chunked.sq_probs, scores.sq_probs, atol=1e-6, rtol=0)
    assert token_logprobs_chunked(policy.model, rollout, 3, temperature).sq_probs is None
