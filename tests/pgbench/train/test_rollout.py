"""ReMax's greedy baseline in the rollout: decoded by the same engine (tool episodes and vLLM
too), scored by the task's reward, and counted in the step's tokens."""

from types import SimpleNamespace

import torch

import pgbench.train.pipeline
from pgbench.config.sections import LoraConfig
from pgbench.config.verbs import resolve
from pgbench.engine.sampling import sample
from pgbench.engine.vllm_backend import VLLMSampler
from pgbench.models.policy import load_policy
from pgbench.tasks import ToolEnv
from pgbench.train.rollout import collect_rollout
from pgbench.train.tracking import NullTracker
from pgbench.train.trainer import train

CPU = torch.device("cpu")


def setup(run_overrides, estimator="remax"):
    config = resolve(run_overrides | {"estimator": estimator})
    policy = load_policy(run_overrides["model"], LoraConfig(), CPU)
    examples = config.task.splits().train[:4]
    prompts = [config.task.prompt(example, policy.tokenizer) for example in examples]
    return config, policy, examples, prompts


def test_the_greedy_baseline_is_the_reward_of_each_prompts_greedy_completion(run_overrides):
    config, policy, examples, prompts = setup(run_overrides)
    torch.manual_seed(3)
    collected = collect_rollout(config, policy, examples, CPU)
    greedy = sample(policy.model, policy.tokenizer, prompts, 1, 12, greedy=True)  # max_new 12
    expected = torch.tensor(config.task.reward(greedy.texts, examples))  # [P]
    assert collected.baseline is not None and collected.baseline.device == CPU
    torch.testing.assert_close(collected.baseline, expected)
    assert collected.baseline_tokens == greedy.tokens > 0
    # the greedy decode draws no random numbers: the sampled batch is the one rloo gets
    torch.manual_seed(3)
    plain = collect_rollout(resolve(run_overrides), policy, examples, CPU)
    assert plain.baseline is None and plain.baseline_tokens == 0
    assert torch.equal(plain.rollout.completion_ids, collected.rollout.completion_ids)
    torch.testing.assert_close(plain.rewards, collected.rewards)


def test_tool_episodes_are_decoded_greedily_with_the_tools(run_overrides, monkeypatch):
    config, policy, examples, prompts = setup(run_overrides)
    calls: list[str] = []

    def call(text: str) -> str:
        calls.append(text)
        return " <ok> "

    tools = ToolEnv(stop="..", call=call, max_turns=3)  # the micro policy's greedy text: ...
    monkeypatch.setattr(type(config.task), "tools", lambda self: tools)
    torch.manual_seed(0)
    collect_rollout(resolve(run_overrides), policy, examples, CPU)  # rloo: sampled only
    sampled_calls = len(calls)
    torch.manual_seed(0)
    collected = collect_rollout(config, policy, examples, CPU)
    remax_calls = len(calls) - sampled_calls
    greedy = sample(policy.model, policy.tokenizer, prompts, 1, 12, greedy=True, tools=tools)
    greedy_calls = len(calls) - sampled_calls - remax_calls
    # remax: the same sampled episodes plus greedy episodes that call the tool
    assert remax_calls == sampled_calls + greedy_calls and greedy_calls > 0
    assert any("<ok>" in text for text in greedy.texts)
    expected = torch.tensor(config.task.reward(greedy.texts, examples))
    torch.testing.assert_close(collected.baseline, expected)
    # tool results are the environment's tokens: only the policy's own count
    assert collected.baseline_tokens == greedy.tokens < int(greedy.completion_mask.sum())


class FakeLLM:
    """vllm.LLM's `generate`: the same completion for every sample of every prompt."""

    def __init__(self, completion: list[int]) -> None:
        self.completion, self.params = completion, []

    def generate(self, requests, params, use_tqdm=True):
        self.params.append(params)
        outputs = [SimpleNamespace(token_ids=self.completion) for _ in range(params["n"])]
        return [SimpleNamespace(outputs=outputs) for _ in requests]


def test_vllm_decodes_the_baseline_at_temperature_zero(run_overrides):
    config, policy, examples, _ = setup(run_overrides)
    tokenizer = policy.tokenizer
    eos = tokenizer.eos_token_id
    word = tokenizer("hello", add_special_tokens=False)["input_ids"]
    fake = FakeLLM(word + [eos])
    sampler = VLLMSampler(fake, tokenizer, sync_every=1, sampling_params=dict)
    collected = collect_rollout(
        config, SimpleNamespace(tokenizer=tokenizer), examples, CPU, sampler, 7
    )
    common = dict(top_p=1.0, max_tokens=12, stop_token_ids=[eos])
    temperature = config.rollout.temperature
    assert fake.params == [
        dict(n=3, temperature=temperature, seed=7, **common),
        dict(n=1, temperature=0.0, seed=None, **common),  # vLLM's greedy decoding
    ]
    assert collected.baseline_tokens == 4 * (len(word) + 1)  # P greedy completions, EOS kept
    assert collected.baseline.shape == (4,)


def test_remax_steps_count_the_greedy_tokens(run_overrides, monkeypatch, tmp_path):
    base = run_overrides | {"eval.every": "0", "checkpoint.every": "0"}
    rloo: list[dict[str, float]] = []
    train(
        resolve(base | {"trainer.steps": "1", "output_dir": str(tmp_path / "rloo")}),
        NullTracker(),
        on_step_end=lambda step, metrics: rloo.append(metrics),
    )
    collected = []

    def recording(*args, **kwargs):
        collected.append(collect_rollout(*args, **kwargs))
        return collected[-1]

    monkeypatch.setattr(pgbench.train.pipeline, "collect_rollout", recording)
    remax: list[dict[str, float]] = []
    overrides = base | {"estimator": "remax", "trainer.steps": "2"}
    train(
        resolve(overrides | {"output_dir": str(tmp_path / "remax")}),
        NullTracker(),
        on_step_end=lambda step, metrics: remax.append(metrics),
    )
    greedy = [c.baseline_tokens for c in collected]
    assert len(greedy) == 2 and min(greedy) > 0
    # step 1 samples the same batch as rloo's (same seed and weights), plus P greedy ones
    assert collected[0].rollout.tokens == rloo[0]["train/tokens"]
    assert remax[0]["train/tokens"] == rloo[0]["train/tokens"] + greedy[0]
    step_2 = remax[1]["train/tokens"] - remax[0]["train/tokens"]
    assert step_2 == collected[1].rollout.tokens + greedy[1]
