"""The engine: sampling (pgbench.engine.sampling) of rollouts, single- and multi-turn."""

import pytest
import torch

from pgbench.config.sections import LoraConfig
from pgbench.engine import sampling as engine
from pgbench.engine.sampling import (
    completion_mask,
    encode_prompts,
    generate_greedy,
    pick,
    prefill,
    sample,
    sample_episodes,
    shared_prefix,
)
from pgbench.models.policy import load_policy
from pgbench.tasks import ToolEnv


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


def scripted_tools(max_turns=3):
    """A tool env that answers every word ending in "e " with the fixed text " <ok> "."""
    calls: list[str] = []

    def call(text: str) -> str:
        calls.append(text)
        return " <ok> "

    return ToolEnv(stop="e ", call=call, max_turns=max_turns), calls


def test_single_turn_sample_has_policy_mask_equal_to_completion_mask(micro_policy, micro_task):
    policy = load(micro_policy)
    torch.manual_seed(0)
    rollout = sample(policy.model, policy.tokenizer, prompts(micro_task, policy), 2, 10, 1.0)
    assert torch.equal(rollout.policy_mask, rollout.completion_mask)


def test_multi_turn_sample_appends_tool_results_outside_the_policy_mask(micro_policy, micro_task):
    policy = load(micro_policy)
    tokenizer = policy.tokenizer
    tools, calls = scripted_tools(max_turns=3)
    torch.manual_seed(0)
    rollout = sample(
        policy.model, tokenizer, prompts(micro_task, policy, 4), 3, 16, 1.0, tools=tools
    )
    result_ids = tokenizer(" <ok> ", add_special_tokens=False)["input_ids"]
    answered = 0
    for row in range(len(rollout.texts)):
        real = rollout.completion_mask[row].bool()
        policy_tokens = rollout.policy_mask[row].bool()
        assert not (policy_tokens & ~real).any()  # policy tokens are real tokens
        assert int(policy_tokens.sum()) <= 16  # the budget counts the policy's tokens only
        env = rollout.completion_ids[row][real & ~policy_tokens].tolist()
        # environment tokens are whole copies of the result, one per answered call
        assert len(env) % len(result_ids) == 0
        assert env == result_ids * (len(env) // len(result_ids))
        answered += len(env) // len(result_ids)
        assert len(env) // len(result_ids) <= tools.max_turns - 1
        assert rollout.texts[row].count("<ok>") == len(env) // len(result_ids)
    assert answered == len(calls) > 0
    assert all(text.endswith("e ") or "e " in text for text in calls)
    assert rollout.tokens == int(rollout.policy_mask.sum())


def test_a_tool_call_in_the_last_turn_ends_the_episode(micro_policy, micro_task):
    policy = load(micro_policy)
    tokenizer = policy.tokenizer
    texts = prompts(micro_task, policy, 4)
    tools, calls = scripted_tools(max_turns=1)
    torch.manual_seed(0)
    stopped = sample(policy.model, tokenizer, texts, 3, 16, 1.0, tools=tools)
    assert calls == []  # one turn: no call is ever answered
    assert torch.equal(stopped.policy_mask, stopped.completion_mask)
    cut = 0
    for row in range(len(texts) * 3):
        ids = stopped.completion_ids[row][stopped.completion_mask[row].bool()].tolist()
        if "e " in tokenizer.decode(ids):  # the call ended the row at the token completing it
            cut += 1
            assert "e " not in tokenizer.decode(ids[:-1])
        else:  # no call: the row ran to EOS or to the token budget
            assert ids[-1] == tokenizer.eos_token_id or len(ids) == 16
    assert cut > 0


def test_greedy_multi_turn_is_deterministic_and_single_turn_greedy_is_unchanged(
    micro_policy, micro_task
):
    policy = load(micro_policy)
    tools, _ = scripted_tools()
    texts = prompts(micro_task, policy, 4)
    first = generate_greedy(policy.model, policy.tokenizer, texts, 12, 2, tools)
    assert first == generate_greedy(policy.model, policy.tokenizer, texts, 12, 3, tools)
    # a tool env that is never triggered gives the completions of model.generate
    never = ToolEnv(stop="\x00never\x00", call=lambda text: "", max_turns=3)
    plain = generate_greedy(policy.model, policy.tokenizer, texts, 12, 4)
    assert generate_greedy(policy.model, policy.tokenizer, texts, 12, 4, never) == plain


def test_sampling_is_deterministic_per_seed(micro_policy, micro_task):
    policy = load(micro_policy)
    texts = prompts(micro_task, policy)
    draws = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        draws.append(sample(policy.model, policy.tokenizer, texts, 3, 10).completion_ids)
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_pick_draws_from_softmax_of_logits_over_temperature(temperature):
    # p = softmax([0, ln 2, ln 5, -inf] / T); at T = 1: [1, 2, 5, 0] / 8 = [.125, .25, .625, 0]
    logits = torch.tensor([0.0, 2.0, 5.0, 0.0]).log()
    logits[3] = -torch.inf
    rows = 100_000
    torch.manual_seed(0)
    drawn = pick(logits.expand(rows, 4), temperature, greedy=False)
    frequency = torch.bincount(drawn, minlength=4) / rows
    expected = (logits / temperature).softmax(-1)
    # 5 standard errors of a frequency from 100k draws is at most 5 * 0.5 / sqrt(1e5) < 0.008
    torch.testing.assert_close(frequency, expected, atol=0.008, rtol=0)
    assert frequency[3] == 0  # a token of probability 0 is never drawn
    assert (pick(logits[None], temperature, greedy=True) == 2).all()


def test_sampler_matches_an_uncached_greedy_loop_while_rows_leave_the_batch(
    micro_policy, micro_task
):
    """Greedy `sample_episodes` against one full forward per token of each unpadded row, with a
    frequent token standing in for EOS so that rows stop at different steps."""
    policy = load(micro_policy)
    model, pad = policy.model, policy.tokenizer.pad_token_id
    prompt_ids, prompt_mask = encode_prompts(
        policy.tokenizer, prompts(micro_task, policy, 4), torch.device("cpu")
    )
    free = sample_episodes(model, prompt_ids, prompt_mask, 2, 10, 1.0, True, -1, pad)[0]  # no EOS
    eos = int(free[0, 3])  # row 0 stops at step 4 at the latest
    got, policy, ends = sample_episodes(model, prompt_ids, prompt_mask, 2, 10, 1.0, True, eos, pad)
    lengths = []
    for row in range(8):
        prompt = prompt_ids[row // 2][prompt_mask[row // 2].bool()].tolist()
        expected: list[int] = []
        while len(expected) < 10 and eos not in expected:
            with torch.no_grad():
                logits = model(torch.tensor([prompt + expected])).logits[0, -1]
            expected.append(int(logits.argmax()))
        assert got[row, : len(expected)].tolist() == expected
        assert (got[row, len(expected) :] == pad).all()
        lengths.append(len(expected))
    assert got.shape[1] == max(lengths) and ends.tolist() == lengths
    assert torch.equal(policy, (got != pad).long() | (torch.arange(got.shape[1]) < ends[:, None]))
    assert min(lengths) < max(lengths)  # some rows left the batch before others


def test_a_prefix_every_prompt_shares_is_run_once_and_changes_nothing(
    micro_policy, micro_task, monkeypatch
):
    """A system-turn-like prefix: prefill feeds it once (then only each row's own tokens),
    and the first logits and greedy completions equal those of the full prefill."""
    policy = load(micro_policy)
    texts = [f"Translate it. {text}" for text in prompts(micro_task, policy, 4)]
    ids, mask = encode_prompts(policy.tokenizer, texts, torch.device("cpu"))
    rows = [ids[r][mask[r].bool()].tolist() for r in range(4)]
    common = 0  # the longest common prefix by hand, each row keeping a token of its own
    while common + 1 < min(map(len, rows)) and len({r[common] for r in rows}) == 1:
        common += 1
    assert shared_prefix(ids, mask) == common >= 4
    assert shared_prefix(ids[:1], mask[:1]) == 0  # a single prompt has nothing to share

    fed: list[int] = []
    policy.model.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(kwargs["input_ids"].numel()), with_kwargs=True
    )
    first = prefill(policy.model, ids, mask, 2)
    once = sample_episodes(policy.model, ids, mask, 2, 10, 1.0, True, -1, 0)
    assert fed[:2] == [common, 4 * (max(map(len, rows)) - common)]
    monkeypatch.setattr(engine, "shared_prefix", lambda ids, mask: 0)
    fed.clear()
    full = prefill(policy.model, ids, mask, 2)
    assert fed == [ids.numel()]
    torch.testing.assert_close(first.logits, full.logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(first.next_position, full.next_position)
    plain = sample_episodes(policy.model, ids, mask, 2, 10, 1.0, True, -1, 0)
    assert all(torch.equal(got, want) for got, want in zip(once, plain, strict=True))


def test_greedy_batches_are_cut_by_length_and_answers_keep_the_prompts_order(
    micro_policy, micro_task
):
    policy = load(micro_policy)
    texts = prompts(micro_task, policy, 5)
    texts[1] = texts[1] + " " + texts[1]  # the longest, batched with others than its neighbours
    alone = [generate_greedy(policy.model, policy.tokenizer, [t], 12, 1)[0] for t in texts]
    assert generate_greedy(policy.model, policy.tokenizer, texts, 12, 2) == alone
