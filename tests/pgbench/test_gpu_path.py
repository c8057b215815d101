"""The GPU-path switches, tested on CPU: engine.backend (vLLM faked, never imported),
trainer.precision=bf16, trainer.gradient_checkpointing, and data parallelism under
`accelerate launch` with two CPU processes (gloo)."""

import importlib.util
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from mlflow import MlflowClient
from transformers import AutoTokenizer

from pgbench import hardware
from pgbench.config import verbs as config_module
from pgbench.config.sections import LoraConfig
from pgbench.config.verbs import help_rows, resolve
from pgbench.engine.sampling import encode_prompts, sample
from pgbench.engine.scoring import token_logprobs
from pgbench.engine.vllm_backend import VLLMSampler, build_rollout, policy_weights
from pgbench.errors import ConfigError
from pgbench.models.policy import enable_gradient_checkpointing, load_policy
from pgbench.train.tracking import NullTracker
from pgbench.train.trainer import Trainer

CPU = torch.device("cpu")


# -- configuration --------------------------------------------------------------------------
def test_new_keys_have_defaults_and_help(monkeypatch):
    config = resolve({})
    assert config.engine.backend == "hf" and config.engine.sync_every == 1
    assert config.engine.gpu_memory_utilization == 0.3
    assert config.trainer.precision == "fp32" and config.trainer.gradient_checkpointing is False
    keys = {row[0]: row for row in help_rows()}
    assert keys["engine.backend"][1] == "{hf|vllm}" and "pgbench[vllm]" in keys["engine.backend"][3]
    assert keys["trainer.precision"][1] == "{fp32|bf16}"
    # where bf16 is native (an AVX2-only CPU refuses it: tests/pgbench/test_hardware.py)
    monkeypatch.setattr(hardware, "native_bf16", lambda device: True)
    resolved = resolve({"trainer.precision": "bf16", "trainer.gradient_checkpointing": "true"})
    assert resolved.trainer.precision == "bf16" and resolved.trainer.gradient_checkpointing


def test_vllm_backend_needs_the_package_then_a_gpu(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        config_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "vllm" else real_find_spec(name, *a),
    )
    with pytest.raises(ConfigError, match=r"pip install 'pgbench\[vllm\]'"):
        resolve({"engine.backend": "vllm"})
    monkeypatch.setattr(
        config_module.importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "vllm" else real_find_spec(name, *a),
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        resolve({"engine.backend": "vllm"})
    with pytest.raises(ConfigError, match="multi-turn"):
        resolve({"engine.backend": "vllm", "task": "poet"})


def test_vllm_backend_module_never_imports_vllm():
    code = (
        "import sys, pgbench.train.trainer, pgbench.engine.vllm_backend; "
        "print('vllm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the vLLM sampler, with a fake engine ---------------------------------------------------
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


# -- precision and memory switches ----------------------------------------------------------
def test_bf16_autocast_step_is_finite_and_keeps_fp32_weights(run_overrides, monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda device: True)  # correctness, not speed
    overrides = run_overrides | {"trainer.precision": "bf16", "estimator": "ppo"}
    trainer = Trainer(resolve(overrides), NullTracker())
    metrics = trainer.train_step()
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("train/loss", "train/grad_norm"))
    assert metrics["train/grad_norm"] > 0
    assert all(p.dtype == torch.float32 for p in trainer.params)
    assert all(s["exp_avg"].dtype == torch.float32 for s in trainer.optimizer.state.values())


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients(micro_policy):
    policy = load_policy(str(micro_policy), LoraConfig(), CPU)
    model = policy.model
    torch.manual_seed(0)
    rollout = sample(model, policy.tokenizer, ["Bonjour.", "Merci beaucoup."], 2, 8, 1.0)
    attention_calls = []
    model.model.layers[0].self_attn.register_forward_hook(lambda *_: attention_calls.append(1))

    def gradients() -> tuple[list[torch.Tensor], int]:
        """Gradients of the completions' log-likelihood, and the layer's runs in the backward."""
        model.zero_grad(set_to_none=True)
        scores = token_logprobs(model, rollout, with_entropy=True)
        forward_calls = len(attention_calls)
        (-(scores.logprobs * rollout.completion_mask).sum()).backward()
        return [p.grad.clone() for p in model.parameters()], len(attention_calls) - forward_calls

    plain, recomputed = gradients()
    assert recomputed == 0
    enable_gradient_checkpointing(model)
    checkpointed, recomputed = gradients()
    assert recomputed == 1  # the layer ran again in the backward pass
    assert not model.model.layers[0].self_attn.training  # dropout stays in eval mode
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_trainer_switches_checkpointing_on(run_overrides):
    overrides = run_overrides | {"trainer.gradient_checkpointing": "true"}
    trainer = Trainer(resolve(overrides), NullTracker())
    assert trainer.policy.model.is_activation_checkpointing
    assert torch.isfinite(torch.tensor(trainer.train_step()["train/loss"]))


# -- data parallel: two CPU processes under accelerate launch -------------------------------
TWO_PROCESSES = """
import json, sys
import torch
from pgbench import parallel
from pgbench.config.verbs import resolve
from pgbench.engine.sampling import sample
from pgbench.models.policy import load_policy
from pgbench.train.trainer import Trainer
from pgbench.train.update import accumulate_gradients, prepare

overrides = dict(arg.split("=", 1) for arg in sys.argv[2:])
processes = parallel.current("cpu")
result = {"world": processes.world}

# 1. The combined gradients of each process's share = the gradient of the whole batch.
config = resolve(overrides)
policy = load_policy(overrides["model"], config.lora, torch.device("cpu"))
model, params = policy.model, list(policy.model.parameters())
torch.manual_seed(0)  # the same rollout of 4 prompts x 3 samples on both processes
rollout = sample(model, policy.tokenizer, ["Bonjour.", "Merci.", "Oui.", "Non."], 3, 10)
rewards = torch.rand(4, 3, generator=torch.Generator().manual_seed(1))
for how in ("token_mean", "seq_mean_token_mean"):
    config = resolve(overrides | {"loss.aggregation": how})
    prepared = prepare(config, config.estimator, model=model, rollout=rollout, rewards=rewards)
    accumulate_gradients(config, config.estimator, model, None, prepared, torch.arange(12))
    whole = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    mine = torch.arange(12)[processes.rank * 6 : (processes.rank + 1) * 6]  # 2 prompts each
    accumulate_gradients(config, config.estimator, model, None, prepared, mine)
    processes.combine_gradients_(params, prepared.mask[mine], how)
    result[how] = max((p.grad - w).abs().max().item() for p, w in zip(params, whole))
    model.zero_grad(set_to_none=True)

# 2. A run: both processes end with the same, trained weights; only the main one logs.
trainer = Trainer(resolve(overrides))
start = torch.cat([p.detach().flatten() for p in trainer.params])
summary = trainer.run()
end = torch.cat([p.detach().flatten() for p in trainer.params])
both = processes.gather(end[None])  # [2, n]
result |= {
    "weights_differ": (both[0] - both[1]).abs().max().item(),
    "weights_moved": (end - start).abs().max().item(),
    "run_id": summary["run_id"],
    "steps": summary["steps"],
}
processes.close()  # leaving the group before exit: no gloo thread aborts the shutdown
result["group_left"] = not torch.distributed.is_initialized()
if processes.main:
    with open(sys.argv[1], "w") as handle:
        json.dump(result, handle)
"""


def test_two_processes_train_like_one(run_overrides, tmp_path):
    """`accelerate launch` with 2 CPU processes: gradients combine exactly, weights agree,
    MLflow gets one run. (On CPU, accelerate's `--cpu` launcher starts one process unless it
    has MPI, so `--multi_gpu` starts the two, as torchrun would; they talk through gloo.)"""
    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESSES)
    out = tmp_path / "result.json"
    overrides = run_overrides | {"trainer.steps": "3", "trainer.lr": "1e-3", "eval.every": "0"}
    # this interpreter's accelerate: its console script is on PATH only in an activated venv
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", "29517", str(script), str(out)]
    done = subprocess.run(
        [*launch, *(f"{k}={v}" for k, v in overrides.items())],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world"] == 2
    assert result["token_mean"] < 1e-6 and result["seq_mean_token_mean"] < 1e-6
    assert result["weights_differ"] == 0.0 and result["weights_moved"] > 0
    assert result["steps"] == 3 and result["group_left"]

    client = MlflowClient(run_overrides["tracking.uri"])
    runs = client.search_runs(client.get_experiment_by_name("fr_en").experiment_id)
    assert [run.info.run_id for run in runs] == [result["run_id"]]  # logged once
    history = client.get_metric_history(result["run_id"], "train/reward_mean")
    assert [m.step for m in history] == [1, 2, 3]
    tokens = client.get_metric_history(result["run_id"], "train/tokens")
    assert tokens[0].value > 0
