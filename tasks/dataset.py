"""A task from a data file and reward functions, with no class to write:

    pgbench run task=dataset task.data=train.jsonl task.reward=mypkg.rewards:score

Data (`task.data`, `task.valid_data`, `task.test_data`): JSONL, CSV or Parquet files, or a
folder saved by `datasets` (`save_to_disk`), read with `datasets` offline. Each row has a
`prompt`: text (asked as one user turn in the policy's chat template) or a list of chat
messages (`{"role", "content"}`, used as they are). Every other column goes to the reward.
Without `task.valid_data` / `task.test_data`, `task.valid_size` / `task.test_size` rows of
`task.data` are held out, drawn with `task.split_seed`.

Rewards (`task.reward=a` or `task.reward=a,b` with `task.reward_weights=0.7,0.3`): functions
named by import strings, in TRL's convention or verl's (`task.reward_style=verl`); the
training reward is their weighted sum, and a None reward is replaced by its group's mean
(tasks/user_rewards.py says how each is called and what None does to each estimator).

Evaluation: the mean of each function's rewards on the split, as the function returns them
(no x100: on the scale of `train/reward_mean`), under the function's name (`valid/score`),
their weighted sum as `reward` (the metric sweeps and suites maximise), and the fraction of
None rewards as `none_fraction`. `task.metric=pkg.module:fn`, a function with the reward's
signature, adds its mean under its own name and becomes the metric that sweeps maximise.

The tiny policies (`model=tiny`) are built on pgbench's own tasks and their tokenizers; a
dataset task asks for `model=smollm2`, a hub id or a model folder instead.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgbench.errors import ConfigError, DataError
from pgbench.fields import knob
from pgbench.registry import plugin_fingerprint
from pgbench.tasks.base import Example, Splits, Task, register
from pgbench.tasks.tsv import split
from pgbench.tasks.user_rewards import (
    Score,
    Style,
    UserReward,
    call,
    fill_none,
    group_ids,
    load_function,
    load_rewards,
    mean_known,
)

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
TINY = (
    "model=tiny builds pgbench's tiny policies on their own tasks' data and tokenizers; "
    "with task=dataset use model=smollm2, a hub id or a model folder"
)


@dataclass(frozen=True, eq=False)
class Row(Example):
    """One data row: `source` is the prompt as text (messages as JSON) and `references` holds
    the other columns as JSON (what samples.csv shows and the start-eval cache hashes)."""

    prompt: str | list[dict[str, str]] = ""
    columns: dict[str, Any] = field(default_factory=dict)


def read_table(path: Path, key: str) -> Any:
    """The rows of a data file or saved folder as a `datasets.Dataset`, or a DataError."""
    import datasets

    datasets.disable_progress_bars()
    if path.is_dir():
        try:
            table = datasets.load_from_disk(str(path))
        except Exception as err:  # datasets raises many types for a folder it cannot read
            raise DataError(f"{key}={path} is not a folder saved by datasets ({err})") from None
        if isinstance(table, datasets.DatasetDict):
            if "train" not in table and len(table) != 1:
                raise DataError(f"{key}={path} holds splits {list(table)}; save one, or 'train'")
            table = table["train"] if "train" in table else next(iter(table.values()))
        return table
    builder = FORMATS.get(path.suffix.lower())
    if builder is None:
        raise DataError(
            f"{key}={path}: unknown format {path.suffix!r}; use .jsonl, .json, .csv, .parquet "
            "or a folder saved by datasets"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{key}={path} is empty; each row needs a 'prompt'")
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # a malformed file surfaces as many exception types
        reason = " ".join(str(getattr(err, "__cause__", None) or err).split())[:200]
        raise DataError(f"{key}={path} cannot be read as {builder} ({reason})") from None


def to_row(record: dict[str, Any], where: str) -> Row:
    """A Row from one record, or a DataError naming the row."""
    prompt = record.pop("prompt")
    messages = isinstance(prompt, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in prompt
    )
    if not (isinstance(prompt, str) and prompt.strip()) and not (messages and prompt):
        raise DataError(
            f"{where}: prompt must be non-empty text or a list of {{role, content}} chat "
            f"messages, got {str(prompt)[:80]!r}"
        )
    if messages:
        prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
    source = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
    reference = json.dumps(record, ensure_ascii=False, sort_keys=True, default=str)
    return Row(source, (reference,), prompt, record)


def load_rows(path_text: str, key: str) -> list[Row]:
    """Every row of the data file `path_text` (JSONL, CSV, Parquet or a saved folder)."""
    path = Path(path_text).expanduser()
    if not path.exists():
        raise DataError(f"{key}={path_text}: no such file or folder")
    table = read_table(path, key)
    if len(table) == 0:
        raise DataError(f"{key}={path_text} has no rows; each row needs a 'prompt'")
    if "prompt" not in table.column_names:
        raise DataError(
            f"{key}={path_text} has no 'prompt' column (columns: {', '.join(table.column_names)})"
        )
    return [to_row(record, f"{key}={path_text} row {i + 1}") for i, record in enumerate(table)]


@register("dataset")
@dataclass
class DatasetTask(Task):
    data: str = knob("", "training data: .jsonl, .csv, .parquet or a saved datasets folder")
    valid_data: str = knob("", "valid split file (default: task.valid_size rows of task.data)")
    test_data: str = knob("", "test split file (default: task.test_size rows of task.data)")
    reward_name: str = knob(
        "", "reward function(s): pkg.module:fn, several joined by commas", key="reward"
    )
    reward_weights: str = knob("", "weights of the reward functions, comma-separated (default 1)")
    reward_style: Style = knob("trl", "calling convention of the reward functions")
    metric_name: str = knob(
        "",
        "evaluation metric pkg.module:fn, the reward's signature (default: the reward)",
        key="metric",
    )
    valid_size: int = knob(100, "rows of task.data held out for validation", ge=1)
    test_size: int = knob(100, "rows of task.data held out for the final test", ge=1)
    split_seed: int = knob(0, "seed of the held-out rows (fixed across run seeds)")

    metric = "reward"  # the instance's is task.metric's name where one is given

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("task=dataset needs task.data=<.jsonl, .csv, .parquet or folder>")
        self.rewards: list[UserReward] = load_rewards(self.reward_name, self.reward_weights)
        self.evaluation: UserReward | None = None
        if self.metric_name:
            self.evaluation = load_function(self.metric_name, "task.metric")
            self.metric = self.evaluation.name
        self._splits: Splits | None = None

    def splits(self) -> Splits:
        """Train from `task.data`; valid and test from their files, else held out of it."""
        if self._splits is None:
            rows = load_rows(self.data, "task.data")
            valid_size = 0 if self.valid_data else self.valid_size
            test_size = 0 if self.test_data else self.test_size
            drawn = split(rows, valid_size, test_size, self.split_seed)
            valid = load_rows(self.valid_data, "task.valid_data") if self.valid_data else None
            test = load_rows(self.test_data, "task.test_data") if self.test_data else None
            self._splits = Splits(drawn.train, valid or drawn.valid, test or drawn.test)
        return self._splits

    def fingerprint(self) -> str:
        """What the start-evaluation cache must see change: the source of every user function
        (a reward edited in place) and the bytes of every data file."""
        functions = [r.function for r in self.rewards]
        functions += [self.evaluation.function] if self.evaluation else []
        digest = hashlib.sha256("".join(map(plugin_fingerprint, functions)).encode())
        for name in (self.data, self.valid_data, self.test_data):
            path = Path(name)
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in (f for f in files if f.is_file()):
                digest.update(hashlib.sha256(file.read_bytes()).digest())
        return digest.hexdigest()

    def messages(self, example: Example) -> list[dict[str, str]]:
        prompt = row(example).prompt
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt

    def target(self, example: Example) -> str:
        raise ConfigError(TINY)

    def _scores(
        self, reward: UserReward, completions: list[str], examples: list[Example]
    ) -> list[Score]:
        rows = [row(example) for example in examples]
        prompts = [r.prompt for r in rows]
        columns = [r.columns for r in rows]
        return call(reward, self.reward_style, prompts, completions, columns)

    def reward(self, completions: list[str], examples: list[Example]) -> list[float]:
        """The weighted sum of the reward functions, each None replaced by its group's mean;
        `last_reward_metrics` keeps each function's mean and the None fraction."""
        groups = group_ids(examples)
        totals = [0.0] * len(completions)
        nones = 0
        self.last_reward_metrics: dict[str, float] = {}
        parts = []
        for reward in self.rewards:
            scores = self._scores(reward, completions, examples)
            nones += scores.count(None)
            filled = fill_none(scores, groups)
            parts.append(filled)
            totals = [t + reward.weight * s for t, s in zip(totals, filled, strict=True)]
            self.last_reward_metrics[f"train/reward/{reward.name}"] = mean_known(scores)
        weights = [reward.weight for reward in self.rewards]
        self.last_components = (parts, weights) if len(parts) > 1 else None
        count = len(completions) * len(self.rewards)
        self.last_reward_metrics["train/reward_none_fraction"] = nones / max(count, 1)
        return totals

    def reward_components(self) -> tuple[list[list[float]], list[float]] | None:
        """Each function's rewards (None filled) and weight in the last `reward` call."""
        return getattr(self, "last_components", None)

    def reward_metrics(self) -> dict[str, float]:
        """Each function's mean reward and the None fraction of the last `reward` call."""
        return dict(getattr(self, "last_reward_metrics", {}))

    def metrics(self, completions: list[str], examples: list[Example]) -> dict[str, float]:
        """Each function's mean over its non-None rewards, their weighted sum (`reward`), the
        None fraction and, with task.metric, the metric function's mean."""
        metrics: dict[str, float] = {}
        nones, total = 0, 0.0
        for reward in self.rewards:
            scores = self._scores(reward, completions, examples)
            nones += scores.count(None)
            metrics[reward.name] = mean_known(scores)
            total += reward.weight * metrics[reward.name]
        metrics["reward"] = total
        metrics["none_fraction"] = nones / max(len(completions) * len(self.rewards), 1)
        if self.evaluation is not None:
            metrics[self.evaluation.name] = mean_known(
                self._scores(self.evaluation, completions, examples)
            )
        return metrics


def row(example: Example) -> Row:
    """The Row behind an example (a dataset task's examples are all Rows)."""
    if not isinstance(example, Row):
        raise TypeError(f"task=dataset got a {type(example).__name__}, not a data row")
    return example
