"""A user's reward functions, called by `task=dataset` in TRL's or verl's convention, and what
pgbench does with a `None` reward.

TRL (`task.reward_style=trl`, the default): `fn(prompts=..., completions=..., **columns)`
returns one float or None per completion. Standard format (the data's `prompt` is text):
`prompts` are the rows' prompt texts and `completions` the completion texts. Conversational
format (`prompt` is a list of chat messages): `prompts` are the message lists and each
completion is `[{"role": "assistant", "content": text}]`. Every other column of the data is
passed by name, one value per completion (TRL also passes `completion_ids` and
`trainer_state`; pgbench does not).

verl (`task.reward_style=verl`): `fn(data_source=..., solution_str=..., ground_truth=...,
extra_info=...)` per completion, from the columns `data_source`, `ground_truth` (or
`reward_model.ground_truth`) and `extra_info` (None where absent); it returns a number, None,
or a dict with a `score` key.

None ("no reward for this sample"): in training, each function's None is replaced by the
mean of that function's other rewards in the sample's group (the K completions of one prompt),
or by 0 where the whole group is None. So a mean-baseline estimator (RLOO, GRPO, Dr. GRPO,
OPO) gives a sample that is None for every function an advantage of 0; an estimator without a
group baseline (REINFORCE, REINFORCE++) treats it as an average sample of its group.
Evaluation averages each function over its non-None rewards only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pgbench.errors import ConfigError
from pgbench.registry import import_object

Style = Literal["trl", "verl"]
Score = float | None


@dataclass(frozen=True)
class UserReward:
    """One user function and its weight; `name` (the function's name) names its metric."""

    spec: str  # the import string, pkg.module:fn
    name: str
    weight: float
    function: Callable[..., Any]


def split_list(value: str | Sequence[Any]) -> list[str]:
    """`"a, b"`, `"[a, b]"` (text from the command line) or a TOML list -> ["a", "b"]."""
    if isinstance(value, str):
        value = value.strip().removeprefix("[").removesuffix("]").split(",")
    return [str(item).strip().strip("'\"") for item in value if str(item).strip()]


def load_function(spec: str, key: str) -> UserReward:
    """The function an import string names, weight 1, or a one-line ConfigError."""
    function = import_object(spec, key)
    if not callable(function):
        raise ConfigError(f"{key}={spec}: {spec.partition(':')[2]!r} is not a function")
    name = getattr(function, "__name__", spec.partition(":")[2])
    return UserReward(spec, name, 1.0, function)


def parse_weights(text: str | Sequence[Any], count: int, key: str) -> list[float]:
    """Finite weights, one per reward function (all 1 when `text` is empty)."""
    items = split_list(text)
    if not items:
        return [1.0] * count
    try:
        weights = [float(item) for item in items]
    except ValueError:
        weights = [math.nan]
    if len(weights) != count or not all(math.isfinite(w) for w in weights):
        raise ConfigError(
            f"{key}={text!r} must be {count} comma-separated number(s), one per task.reward "
            "function (e.g. 0.7,0.3)"
        )
    return weights


def load_rewards(spec: str | Sequence[Any], weights: str | Sequence[Any]) -> list[UserReward]:
    """The `task.reward` functions with their `task.reward_weights`, checked."""
    specs = split_list(spec)
    if not specs:
        raise ConfigError("task=dataset needs task.reward=pkg.module:function (several: a,b)")
    rewards = [load_function(s, "task.reward") for s in specs]
    names = [reward.name for reward in rewards]
    if len(set(names)) < len(names) or (len(names) > 1 and "reward" in names):
        raise ConfigError(
            f"task.reward={spec!r}: each function needs its own name, other than 'reward' "
            f"(got {', '.join(names)}); they name the logged metrics"
        )
    weighted = parse_weights(weights, len(rewards), "task.reward_weights")
    return [
        UserReward(r.spec, r.name, w, r.function) for r, w in zip(rewards, weighted, strict=True)
    ]


def checked(values: Any, count: int, name: str) -> list[Score]:
    """The function's output as floats and Nones, or a ConfigError naming the function."""
    shape = f"one number or None per completion ({count})"
    try:
        items = list(values)
    except TypeError:
        raise ConfigError(f"reward function {name} returned {values!r}; expected {shape}") from None
    if len(items) != count:
        raise ConfigError(f"reward function {name} returned {len(items)} values; expected {shape}")
    scores: list[Score] = []
    for item in items:
        if isinstance(item, dict) and "score" in item:  # verl's {"score": ..., ...}
            item = item["score"]
        if item is None:
            scores.append(None)
            continue
        try:
            scores.append(float(item))
        except (TypeError, ValueError):
            raise ConfigError(
                f"reward function {name} returned {item!r}; expected {shape}"
            ) from None
    return scores


def ground_truth(columns: dict[str, Any]) -> Any:
    """verl's ground truth: the `ground_truth` column if set, else reward_model.ground_truth."""
    if columns.get("ground_truth") is not None:
        return columns["ground_truth"]
    nested = columns.get("reward_model")
    return nested.get("ground_truth") if isinstance(nested, dict) else None


def call(
    reward: UserReward,
    style: Style,
    prompts: list[Any],
    completions: list[str],
    columns: list[dict[str, Any]],
) -> list[Score]:
    """One function's rewards of `completions` (prompts and columns: one per completion)."""
    if style == "verl":
        out = [
            reward.function(
                data_source=row.get("data_source"),
                solution_str=text,
                ground_truth=ground_truth(row),
                extra_info=row.get("extra_info"),
            )
            for text, row in zip(completions, columns, strict=True)
        ]
        return checked(out, len(completions), reward.name)
    conversational = bool(prompts) and not isinstance(prompts[0], str)
    texts: list[Any] = completions
    if conversational:
        texts = [[{"role": "assistant", "content": text}] for text in completions]
    names = dict.fromkeys(key for row in columns for key in row)
    by_name = {key: [row.get(key) for row in columns] for key in names}
    out = reward.function(prompts=prompts, completions=texts, **by_name)
    return checked(out, len(completions), reward.name)


def group_ids(examples: Sequence[object]) -> list[int]:
    """The group of each sample: runs of the same example object (the K completions of one
    prompt are consecutive in a rollout)."""
    groups: list[int] = []
    for i, example in enumerate(examples):
        same = i > 0 and example is examples[i - 1]
        groups.append(groups[-1] if same else (groups[-1] + 1 if groups else 0))
    return groups


def fill_none(scores: list[Score], groups: list[int]) -> list[float]:
    """Each None replaced by the mean of the non-None scores of its group (0 if none)."""
    known: dict[int, list[float]] = {}
    for score, group in zip(scores, groups, strict=True):
        if score is not None:
            known.setdefault(group, []).append(score)
    means = {group: sum(values) / len(values) for group, values in known.items()}
    return [
        means.get(group, 0.0) if score is None else score
        for score, group in zip(scores, groups, strict=True)
    ]


def mean_known(scores: list[Score]) -> float:
    """The mean of the non-None scores (NaN if all are None)."""
    known = [score for score in scores if score is not None]
    return sum(known) / len(known) if known else math.nan
