import pytest
import torch

from pgbench.config.sections import LoraConfig
from pgbench.engine.sampling import sample
from pgbench.engine.scoring import token_logprobs, token_logprobs_chunked
from pgbench.errors import DataError
from pgbench.models.policy import Reference, enable_gradient_checkpointing, load_policy

CPU = torch.device("cpu")


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


def test_lora_trains_only_the_adapter(micro_policy):
    policy = load_policy(str(micro_policy), LoraConfig(r=4, target_modules="q_proj,v_proj"), CPU)
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert policy.lora and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {"q_proj", "v_proj"}
    full = load_policy(str(micro_policy), LoraConfig(), CPU)
    assert not full.lora and all(p.requires_grad for p in full.model.parameters())


def test_the_full_models_reference_stays_the_starting_policy(micro_policy):
    policy = load_policy(str(micro_policy), LoraConfig(), CPU)
    reference = Reference(policy)
    torch.manual_seed(0)
    rollout = sample(policy.model, policy.tokenizer, ["Bonjour.", "Merci."], 2, 6)
    before = reference.logprobs(rollout, chunk_rows=2, temperature=1.0)
    start = token_logprobs_chunked(policy.model, rollout, 2).logprobs
    torch.testing.assert_close(before, start, rtol=0, atol=1e-6)
    with torch.no_grad():
        for param in policy.model.parameters():
            param.add_(0.05 * torch.randn_like(param))  # the policy trains on
    moved = token_logprobs_chunked(policy.model, rollout, 2).logprobs
    assert (moved - start).abs().max() > 1e-2
    torch.testing.assert_close(reference.logprobs(rollout, 2, 1.0), before, rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in reference.copy.parameters())


def test_a_model_that_cannot_be_loaded_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="offline, use model=tiny or a local folder"):
        load_policy(str(tmp_path / "missing"), LoraConfig(), CPU)
