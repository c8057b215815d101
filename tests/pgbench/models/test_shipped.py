"""The shipped tiny policies: hash-checked, loaded without training or writing, deterministic,
refused when damaged; `pgbench build-tiny` writes a policy folder with its manifest."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from pgbench import tasks
from pgbench.cli import main
from pgbench.config.sections import LoraConfig
from pgbench.engine.evaluate import evaluate
from pgbench.errors import ConfigError, DataError
from pgbench.hardware import cpu_capability
from pgbench.models import shipped
from pgbench.models.policy import load_policy
from pgbench.models.resolve import resolve_model
from pgbench.models.shipped import SHIPPED, file_sha256, read_manifest, shipped_policy, verify
from pgbench.models.tiny import MICRO
from pgbench.tasks.fr_en import FrEn

SHIPPED_TASKS = ["fr_en", "arith", "poet"]
CPU = torch.device("cpu")


@pytest.mark.parametrize("name", SHIPPED_TASKS)
def test_model_tiny_is_the_shipped_policy_and_writes_nothing(name, tmp_path):
    folder = resolve_model("tiny", tasks.get(name), str(tmp_path / "cache"))
    assert Path(folder) == SHIPPED / name
    assert not (tmp_path / "cache").exists()  # no build, no cache entry
    manifest = verify(SHIPPED / name)
    assert manifest["sha256"] == file_sha256(SHIPPED / name / "model.safetensors")
    assert set(manifest["files"]) >= {"model.safetensors", "tokenizer.json", "config.json"}
    assert manifest["task"] == name and set(manifest["metrics"]) == {"valid", "test"}
    assert manifest["spec"]["precision"] == "fp32"  # fp32 weights, no optimiser state
    assert manifest["cpu_capability"] and manifest["torch"]


def test_a_test_file_keeps_the_shipped_policy(tmp_path):
    mine = tmp_path / "mine.tsv"
    mine.write_text("fr\ten\nune phrase nouvelle\ta new sentence\n")
    task = tasks.get("fr_en", test_file=str(mine))
    assert resolve_model("tiny", task, str(tmp_path / "cache")) == str(SHIPPED / "fr_en")


@pytest.mark.parametrize("name", SHIPPED_TASKS)
def test_shipped_policy_decodes_deterministically(name):
    """Greedy decoding of the first test batch is the same twice, and the same as when the
    policy was built wherever the CPU capability and threads are the build's."""
    task, manifest = tasks.get(name), read_manifest(SHIPPED / name)
    settings = manifest["eval"]
    policy = load_policy(str(SHIPPED / name), LoraConfig(), CPU)
    batch = task.splits().test[: settings["batch_size"]]
    decode = (settings["max_new_tokens"], settings["batch_size"])
    _, first = evaluate(policy.model, policy.tokenizer, task, batch, *decode)
    _, again = evaluate(policy.model, policy.tokenizer, task, batch, *decode)
    assert first == again
    built_here = settings["hardware.cpu_capability"] == cpu_capability()
    if built_here and settings["hardware.threads"] == torch.get_num_threads():
        assert first[:4] == manifest["test_completions"]


@pytest.fixture
def damaged(tmp_path, monkeypatch) -> Path:
    """A copy of the shipped fr_en policy standing in for the package's folder."""
    monkeypatch.setattr(shipped, "SHIPPED", tmp_path / "policies")
    copy = tmp_path / "policies" / "fr_en"
    shutil.copytree(SHIPPED / "fr_en", copy)
    return copy


def test_truncated_weights_are_refused_naming_the_file_and_the_remedy(damaged, tmp_path):
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(DataError) as err:
        resolve_model("tiny", tasks.get("fr_en"), str(tmp_path / "cache"))
    message = str(err.value)
    assert f"{weights} does not match its sha256 in tiny.json" in message and "\n" not in message
    assert "pgbench build-tiny task=fr_en output_dir=DIR, then model=DIR" in message


def test_a_changed_missing_or_unreadable_file_is_refused(damaged):
    tokenizer = damaged / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace("<|end|>", "<|End|>", 1))
    with pytest.raises(DataError, match="tokenizer.json does not match its sha256"):
        verify(damaged)
    tokenizer.unlink()
    with pytest.raises(DataError, match="tokenizer.json is missing"):
        verify(damaged)
    manifest = damaged / "tiny.json"
    manifest.write_text(manifest.read_text()[:100])
    with pytest.raises(DataError, match=r"tiny.json is not valid JSON \(truncated\?\)"):
        verify(damaged)
    manifest.unlink()
    with pytest.raises(DataError, match="tiny.json is missing"):
        shipped_policy(tasks.get("fr_en"))


def test_build_tiny_writes_a_policy_that_runs_log_by_hash(
    run_overrides, tmp_path, monkeypatch, capsys
):
    spec = {k: getattr(MICRO, k) for k in ("vocab_size", "hidden_size", "layers", "heads")}
    spec |= {"intermediate_size": MICRO.intermediate_size, "sft_steps": 12, "sft_batch_size": 8}
    monkeypatch.setattr(FrEn, "tiny_overrides", spec, raising=False)
    micro = {k: v for k, v in run_overrides.items() if k.startswith("task.")}
    out, cache = tmp_path / "mine", tmp_path / "cache"
    args = [f"{k}={v}" for k, v in micro.items()] + ["eval.size=8", "eval.max_new_tokens=8"]
    args += [f"cache_dir={cache}", "task=fr_en"]
    assert main(["build-tiny", *args, f"output_dir={out}"]) == 0
    assert f"use it with model={out}" in capsys.readouterr().out
    manifest = verify(out)
    assert manifest["spec"]["sft_steps"] == 12 and "sizes" not in manifest  # the cache's record
    assert (cache / f"tiny-fr_en-{manifest['cache_key']}").is_dir()  # built in the cache
    assert set(manifest["metrics"]["test"]) == {"chrf", "bleu", "embed"}
    assert main(["build-tiny", *args, f"output_dir={out}"]) == 2  # never over a policy
    assert "already exists and is not empty" in capsys.readouterr().err
    # model=tiny with this spec and data: the same build, from the cache (no shipped one)
    cached = resolve_model("tiny", tasks.get("fr_en", **_task_fields(micro)), str(cache))
    assert Path(cached).parent == cache and Path(cached).name.startswith("tiny-fr_en-")

    run = run_overrides | {"model": str(out), "trainer.steps": "1", "eval.every": "0"}
    assert main(["run", *(f"{k}={v}" for k, v in run.items())]) == 0
    summary = json.loads((Path(run["output_dir"]) / "summary.json").read_text())
    assert summary["model_sha256"] == manifest["sha256"] == file_sha256(out / "model.safetensors")
    params = MlflowClient(run["tracking.uri"]).get_run(summary["run_id"]).data.params
    assert params["model_sha256"] == manifest["sha256"]


def test_a_writer_that_loses_the_race_for_output_dir_changes_nothing(tmp_path, monkeypatch):
    source, out = tmp_path / "built", tmp_path / "mine"
    source.mkdir()
    (source / "model.safetensors").write_bytes(b"ours")
    (source / "tiny.json").write_text('{"sizes": {"model.safetensors": 4}}')
    real = shipped.file_hashes

    def another_writer_finishes_first(folder: Path) -> dict[str, str]:
        out.mkdir(exist_ok=True)
        (out / "model.safetensors").write_bytes(b"theirs")
        return real(folder)

    monkeypatch.setattr(shipped, "file_hashes", another_writer_finishes_first)
    with pytest.raises(ConfigError, match=f"^output_dir={out} already exists and is not empty"):
        shipped.write_policy(source, out, {"metrics": {}})
    assert [p.name for p in out.iterdir()] == ["model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["built", "mine"]  # no temporary left


def _task_fields(values: dict[str, str]) -> dict[str, int]:
    return {key.removeprefix("task."): int(value) for key, value in values.items()}
