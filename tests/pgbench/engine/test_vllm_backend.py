"""The vLLM sampler against a fake `vllm.LLM` (vLLM is never imported): prompt tokens,
the engine's rollout layout, and the weights `sync` loads."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from pgbench.config.sections import LoraConfig
from pgbench.engine.sampling import encode_prompts
from pgbench.engine.vllm_backend import VLLMSampler, build_rollout, policy_weights
from pgbench.models.policy import load_policy

CPU = torch.device("cpu")


def test_vllm_backend_module_never_imports_vllm():
    code = (
        "import sys, pgbench.train.trainer, pgbench.engine.vllm_backend; "
        "print('vllm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class FakeLLM:
    """Answers `generate` with fixed token ids per prompt; records what it was asked."""

    def __init__(self, completions: list[list[list[int]]]) -> None:
        self.completions = completions  # [P][K] token ids
        self.requests = None
        self.loaded: list[tuple[str, torch.Tensor]] = []
        copy = lambda weights: self.loaded.extend((n, t.clone()) for n, t in weights)  # noqa: E731
        model = SimpleNamespace(load_weights=copy)  # copies, as vLLM's own parameters do
        worker = SimpleNamespace(worker=SimpleNamespace(model_runner=SimpleNamespace(model=model)))
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=worker))

    def generate(self, requests, params, use_tqdm=True):
        self.requests, self.params = requests, params
        return [
            SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids) for ids in per_prompt])
            for per_prompt in self.completions
        ]


def test_vllm_sampler_builds_the_engines_rollout_layout(micro_policy):
    tokenizer = AutoTokenizer.from_pretrained(micro_policy)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = ["Bonjour.", "Je suis très content de vous voir."]  # different lengths
    word = tokenizer("hello", add_special_tokens=False)["input_ids"]
    completions = [[word + [eos], word], [[eos, *word], word + [eos] + word]]  # [P=2][K=2]
    fake = FakeLLM(completions)
    sampler = VLLMSampler(fake, tokenizer, sync_every=1, sampling_params=dict)
    rollout = sampler.sample(prompts, 2, 16, 0.7, CPU, seed=5)

    assert fake.params == dict(
        n=2, temperature=0.7, top_p=1.0, max_tokens=16, stop_token_ids=[eos], seed=5
    )
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, CPU)
    assert [r["prompt_token_ids"] for r in fake.requests] == [
        ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask, strict=True)
    ]  # the same tokens as the hf path, without the left padding
    assert torch.equal(rollout.prompt_ids, prompt_ids.repeat_interleave(2, dim=0))
    assert torch.equal(rollout.prompt_mask, prompt_mask.repeat_interleave(2, dim=0))
    n = len(word)  # rows: word+EOS | word | EOS+word | word+EOS+word, width 2n + 1
    assert rollout.completion_ids.shape == (4, 2 * n + 1)
    assert rollout.completion_mask.sum(1).tolist() == [n + 1, n, 1, n + 1]  # through first EOS
    assert rollout.completion_ids[1, n:].tolist() == [pad] * (n + 1)  # right padding
    assert torch.equal(rollout.policy_mask, rollout.completion_mask)
    assert rollout.texts[2] == "" and rollout.texts[0] == rollout.texts[1] == rollout.texts[3]
    assert rollout.tokens == 3 * n + 3


def test_empty_completions_still_make_a_rollout(micro_policy):
    tokenizer = AutoTokenizer.from_pretrained(micro_policy)
    ids, mask = encode_prompts(tokenizer, ["Oui."], CPU)
    rollout = build_rollout(ids, mask, [[]], tokenizer)
    assert rollout.completion_ids.shape == (1, 1) and rollout.tokens == 0


@pytest.mark.parametrize("rank", [0, 4])
def test_sync_loads_the_policys_weights_by_hf_name(micro_policy, rank):
    policy = load_policy(str(micro_policy), LoraConfig(r=rank), CPU)
    model = policy.model
    base_names = set(load_policy(str(micro_policy), LoraConfig(), CPU).model.state_dict())
    if rank:
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param)  # a trained adapter: merged weights differ
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fake = FakeLLM([])
    sampler = VLLMSampler(fake, policy.tokenizer, sync_every=2)
    assert [sampler.sync_if_due(model, step) > 0 for step in range(5)] == [1, 0, 1, 0, 1]
    assert sampler.syncs == 3
    loaded = dict(fake.loaded[: len(fake.loaded) // 3])
    assert set(loaded) == base_names  # peft prefixes and adapter tensors are gone
    if rank:
        with torch.no_grad():
            model.merge_adapter()
            merged = {n: t.clone() for n, t in policy_weights(model)}
            model.unmerge_adapter()
        name = next(n for n in loaded if "q_proj" in n)
        assert torch.allclose(loaded[name], merged[name])
        assert not torch.allclose(
            loaded[name],
            before[f"base_model.model.{name}".replace("q_proj.weight", "q_proj.base_layer.weight")],
        )
    after = model.state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)  # unmerged again
