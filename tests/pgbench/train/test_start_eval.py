"""The starting policy's evaluation is cached: reused where everything it depends on matches,
never where anything differs."""

import os
import shutil
from pathlib import Path

import torch
from mlflow import MlflowClient

from pgbench.config.sections import LoraConfig
from pgbench.config.verbs import resolve
from pgbench.models.policy import Policy, load_policy
from pgbench.train import start_eval
from pgbench.train.trainer import train

SETTINGS = {"max_new_tokens": 12, "batch_size": 8}


def test_a_second_run_reads_its_start_evaluation_from_the_cache(run_overrides, monkeypatch):
    values = run_overrides | {"trainer.steps": "2", "eval.every": "2", "checkpoint.every": "0"}
    first = train(resolve(values))
    entries = list(Path(run_overrides["cache_dir"], "evals").glob("*.json"))
    assert len(entries) == 2  # the test split and the valid split, at step 0

    def no_decoding(*args, **kwargs):
        raise AssertionError("the starting policy was decoded again")

    monkeypatch.setattr(start_eval, "evaluate", no_decoding)  # only evaluate_start's
    second = train(resolve(values | {"output_dir": values["output_dir"] + "-2", "seed": "1"}))
    assert second["eval_before"] == first["eval_before"]
    client = MlflowClient(values["tracking.uri"])
    logged = [
        [(m.step, m.value) for m in client.get_metric_history(s["run_id"], "eval/chrf")][:1]
        for s in (first, second)
    ]
    assert logged[0] == logged[1]  # step 0 logged from the cache, as when decoded


def test_anything_that_changes_the_evaluation_changes_the_key(micro_policy, micro_task, tmp_path):
    policy = load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))
    examples = micro_task.splits().test[:4]
    key = start_eval.start_key(policy, micro_task, examples, SETTINGS)
    assert key == start_eval.start_key(policy, micro_task, examples, dict(SETTINGS))
    assert key != start_eval.start_key(policy, micro_task, examples[:3], SETTINGS)
    longer = SETTINGS | {"max_new_tokens": 13}
    assert key != start_eval.start_key(policy, micro_task, examples, longer)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert key != start_eval.start_key(policy, micro_task, examples, SETTINGS)
    finally:
        torch.set_num_threads(threads)
    copy = tmp_path / "policy"
    shutil.copytree(micro_policy, copy)
    changed = Policy(policy.model, policy.tokenizer, str(copy), False)
    assert key == start_eval.start_key(changed, micro_task, examples, SETTINGS)
    config = copy / "generation_config.json"
    config.write_text(config.read_text().replace("{", '{"note": 1, ', 1))  # one file changes
    assert key != start_eval.start_key(changed, micro_task, examples, SETTINGS)
    hub = Policy(policy.model, policy.tokenizer, "org/some-model", False)
    assert start_eval.start_key(hub, micro_task, examples, SETTINGS) == ""


def test_the_reward_models_files_and_the_scoring_versions_enter_the_key(
    micro_policy, micro_task, tmp_path, monkeypatch
):
    policy = load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))
    examples = micro_task.splits().test[:4]
    embedder = tmp_path / "embedder"
    embedder.mkdir()
    weights = embedder / "model.safetensors"
    weights.write_bytes(b"a" * 10)
    os.utime(weights, ns=(0, 1_000))
    settings = SETTINGS | {"reward": {"model": str(embedder), "device": "auto"}}
    assert start_eval.reward_model_files(settings) == {"model": [["model.safetensors", 10, 1_000]]}
    key = start_eval.start_key(policy, micro_task, examples, settings)
    assert key == start_eval.start_key(policy, micro_task, examples, dict(settings))
    weights.write_bytes(b"b" * 10)  # retrained in place: same path, same size, a new time
    retrained = start_eval.start_key(policy, micro_task, examples, settings)
    assert retrained != key
    real = start_eval.metadata.version

    def newer_sacrebleu(name: str) -> str:
        return "99.0" if name == "sacrebleu" else real(name)

    monkeypatch.setattr(start_eval.metadata, "version", newer_sacrebleu)
    assert start_eval.library_versions()["sacrebleu"] == "99.0"
    assert start_eval.start_key(policy, micro_task, examples, settings) not in (key, retrained)


def test_a_stale_entry_is_not_used(micro_policy, micro_task, tmp_path, monkeypatch):
    policy = load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))
    examples = micro_task.splits().test[:4]
    calls = []
    real = start_eval.evaluate

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(start_eval, "evaluate", counted)
    start = start_eval.evaluate_start
    metrics, texts = start(policy, micro_task, examples, SETTINGS, tmp_path)
    assert start(policy, micro_task, examples, SETTINGS, tmp_path) == (metrics, texts)
    assert len(calls) == 1
    start(policy, micro_task, examples, SETTINGS | {"batch_size": 4}, tmp_path)
    assert len(calls) == 2
