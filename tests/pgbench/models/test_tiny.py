import dataclasses
import json
import threading
import time
from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pgbench import tasks
from pgbench.models import tiny
from pgbench.models.tiny import (
    TinySpec,
    answer_loss,
    cache_key,
    sft_batch,
    stop_metric,
    supervised_fine_tune,
    task_spec,
    tiny_policy_dir,
    train_tokenizer,
)


def test_micro_policy_loads_and_renders_chat(micro_policy):
    tokenizer = AutoTokenizer.from_pretrained(micro_policy)
    model = AutoModelForCausalLM.from_pretrained(micro_policy)
    assert (
        model.config.eos_token_id
        == tokenizer.eos_token_id
        == tokenizer.convert_tokens_to_ids("<|end|>")
    )
    assert tokenizer.padding_side == "left"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Où êtes-vous ?"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|user|>Où êtes-vous ?<|end|><|assistant|>"
    sentence = "Ça a été très agréable, merci ! « Déjà » vu."
    ids = tokenizer(sentence, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == sentence


def test_sft_lowers_the_loss(micro_policy):
    info = json.loads((micro_policy / "tiny.json").read_text())
    assert info["last_loss"] < info["first_loss"] - 0.3
    assert info["train_pairs"] > 1000


def test_cache_is_reused_and_keyed_by_spec(micro_task, micro_policy, tmp_path):
    spec = TinySpec(
        vocab_size=300,
        hidden_size=16,
        layers=1,
        heads=1,
        intermediate_size=32,
        sft_steps=2,
        sft_batch_size=4,
    )
    first = tiny_policy_dir(micro_task, tmp_path, spec, progress=False)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny_policy_dir(micro_task, tmp_path, spec, progress=False) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    other = tiny_policy_dir(
        micro_task, tmp_path, TinySpec(**{**spec.__dict__, "seed": 1}), progress=False
    )
    assert other != first and not list(tmp_path.glob("*.tmp*"))


def test_two_builders_at_once_train_one_policy(micro_task, tmp_path, monkeypatch):
    # suite workers may start the same task's bootstrap at once: the first builds under the
    # cache's lock, the second waits and reuses its folder (threads: each FileLock has its own
    # descriptor, so they exclude each other as two processes would)
    spec = TinySpec(
        vocab_size=300,
        hidden_size=16,
        layers=1,
        heads=1,
        intermediate_size=32,
        sft_steps=2,
        sft_batch_size=4,
    )
    real, runs, barrier, found = tiny.supervised_fine_tune, [], threading.Barrier(2), []

    def counted(*args, **kwargs):
        runs.append(threading.get_ident())
        time.sleep(0.2)  # a racing builder would strike here
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny, "supervised_fine_tune", counted)

    def build() -> None:
        barrier.wait()
        found.append(tiny_policy_dir(micro_task, tmp_path, spec, progress=False))

    builders = [threading.Thread(target=build) for _ in range(2)]
    for builder in builders:
        builder.start()
    for builder in builders:
        builder.join(60)
    assert len(runs) == 1 and len(found) == 2 and found[0] == found[1]
    info = json.loads((found[0] / "tiny.json").read_text())
    assert info["sizes"]["model.safetensors"] == (found[0] / "model.safetensors").stat().st_size
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_split_digits_tokenizer_gives_one_token_per_digit():
    texts = ["12345 + 12345 = 24690"] * 50
    split = train_tokenizer(texts, 300, split_digits=True)
    assert split.tokenize("12345") == ["1", "2", "3", "4", "5"]
    assert split.decode(split("What is 12 + 345?", add_special_tokens=False)["input_ids"]) == (
        "What is 12 + 345?"
    )
    merged = train_tokenizer(texts, 300)
    assert len(merged.tokenize("12345")) < 5  # plain BPE merges the repeated number


def test_task_spec_applies_the_task_overrides():
    poet = tasks.REGISTRY.get_class("poet")
    assert task_spec(tasks.get("poet")) == TinySpec(**poet.tiny_overrides)
    assert task_spec(tasks.get("fr_en", limit=10, valid_size=1, test_size=1)) == TinySpec()


def test_every_spec_field_enters_the_cache_key():
    task = SimpleNamespace(name="fr_en")
    pairs = [([{"role": "user", "content": "Translate French to English:\nBonjour."}], "Hello.")]
    changed = {  # another valid value for every field of the spec, listed by hand
        "vocab_size": 2048,
        "hidden_size": 128,
        "layers": 2,
        "heads": 2,
        "intermediate_size": 352,
        "max_length": 64,
        "sft_steps": 500,
        "sft_batch_size": 32,
        "sft_lr": 1e-3,
        "seed": 1,
        "split_digits": True,
        "sft_final_lr_ratio": 0.3,
        "precision": "bf16",
        "stop_at": 40.0,
        "stop_every": 50,
        "stop_examples": 100,
    }
    assert set(changed) == {f.name for f in dataclasses.fields(TinySpec)}
    base = cache_key(task, pairs, TinySpec())
    for name, value in changed.items():
        assert cache_key(task, pairs, TinySpec(**{name: value})) != base, name


def test_answer_loss_equals_the_models_own_loss(micro_policy):
    model = AutoModelForCausalLM.from_pretrained(micro_policy)
    encoded = [([5, 6, 7, 8, 9], 3), ([5, 6, 10], 2), ([11, 12, 13, 14], 1)]
    ids, mask, labels = sft_batch(encoded, [0, 1, 2], pad_id=0)
    expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(answer_loss(model, ids, mask, labels), expected, atol=1e-6)


def test_sft_stops_once_the_held_out_metric_reaches_stop_at(micro_policy):
    model = AutoModelForCausalLM.from_pretrained(micro_policy)
    encoded = [([5, 6, 7, 8, 9], 3), ([5, 6, 10], 2), ([11, 12, 13, 14], 1)]
    spec = TinySpec(sft_steps=50, sft_batch_size=2, stop_at=30.0, stop_every=4)
    checks = iter([10.0, 29.9, 30.0, 99.0])  # the metric at steps 4, 8, 12, 16
    modes = []

    def reached() -> float:
        modes.append(model.training)
        return next(checks)

    losses = supervised_fine_tune(model, encoded, spec, 0, False, reached)
    assert len(losses) == 12  # stopped at the third check, the first >= 30
    assert modes == [False] * 3 and not model.training  # scored in eval mode


def test_stop_metric_scores_the_valid_split(micro_task, micro_policy):
    from pgbench.config.sections import LoraConfig
    from pgbench.engine.evaluate import evaluate
    from pgbench.models.policy import load_policy

    policy = load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))
    metric = stop_metric(micro_task, policy.model, policy.tokenizer, 8)
    expected, _ = evaluate(
        policy.model, policy.tokenizer, micro_task, micro_task.splits().valid[:8], 48, 64
    )
    assert metric() == expected["chrf"]
