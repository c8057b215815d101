"""Search spaces: which config keys a sweep tunes, per estimator, as plain data.

A space maps a config key to a distribution:
    {"trainer.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": true},
     "estimator.scale": {"type": "categorical", "choices": ["group", "batch", "none"]}}
`sweep.space=<file.json>` replaces the built-in space with the file's. The sample budget
(steps, prompts per step, K, completion length) is not tuned by default, so tuned estimators
still compare at equal cost; add `rollout.samples_per_prompt` in a file to tune K.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna

from pgbench.errors import ConfigError

Space = dict[str, dict[str, Any]]

SHARED: Space = {
    "trainer.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "kl.coef": {"type": "float", "low": 0.0, "high": 0.2},
}

EXTRA: dict[str, Space] = {
    "reinforce": {"estimator.baseline": {"type": "categorical", "choices": ["none", "ema"]}},
    "grpo": {"estimator.scale": {"type": "categorical", "choices": ["group", "batch", "none"]}},
    "ppo": {
        "loss.clip_low": {"type": "float", "low": 0.1, "high": 0.3},
        "trainer.epochs": {"type": "int", "low": 1, "high": 4},
        "estimator.vf_coef": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
        # clips act only over several passes (PPO's default 2 x 2): DAPO's clip-higher
        "loss.clip_high": {"type": "float", "low": 0.2, "high": 0.35},
    },
}


def builtin(estimator: str) -> Space:
    """The default space of `estimator`: shared keys plus its own."""
    return SHARED | EXTRA.get(estimator, {})


def load(path: str) -> Space:
    """A space from a JSON file, checked for form (keys are checked against the config later)."""
    try:
        space = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"sweep.space={path}: cannot read a JSON search space ({err})") from None
    check(space, f"sweep.space={path}")
    return space


def check(space: Any, where: str) -> None:
    """A ConfigError naming `where` and the key unless `space` maps keys to well-formed,
    non-empty distributions."""
    needs = {"float": ("low", "high"), "int": ("low", "high"), "categorical": ("choices",)}
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{where}: a search space maps config keys to distributions")
    for key, spec in space.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in needs or any(n not in spec for n in needs[kind]):
            raise ConfigError(
                f"{where}: {key} must be an object with type float|int (low, high, "
                "optional log) or categorical (choices)"
            )
        problem = _categorical_problem(spec) if kind == "categorical" else _range_problem(spec)
        if problem:
            raise ConfigError(f"{where}: {key} {problem}")


def _categorical_problem(spec: dict[str, Any]) -> str:
    """What is wrong with a categorical distribution, or ""."""
    choices = spec["choices"]
    if not isinstance(choices, list) or not choices:
        return f"has choices {choices!r}; give a non-empty list of values"
    return ""


def _range_problem(spec: dict[str, Any]) -> str:
    """What is wrong with a float or int range, or ""."""
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    number = int if spec["type"] == "int" else (int, float)
    if any(isinstance(v, bool) or not isinstance(v, number) for v in (low, high)):
        return f"has low={low!r}, high={high!r}; both must be {spec['type']} numbers"
    if low > high:
        return f"has low={low} > high={high}; low must be at most high"
    if not isinstance(log, bool):
        return f"has log={log!r}; log is true or false"
    if log and low <= 0:
        return f"has log=true with low={low}; a log scale needs low > 0"
    return ""


def suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """Draw one value per key of `space` for `trial`."""
    values: dict[str, Any] = {}
    for key, spec in space.items():
        if spec["type"] == "float":
            values[key] = trial.suggest_float(
                key, spec["low"], spec["high"], log=spec.get("log", False)
            )
        elif spec["type"] == "int":
            values[key] = trial.suggest_int(
                key, spec["low"], spec["high"], log=spec.get("log", False)
            )
        else:
            values[key] = trial.suggest_categorical(key, spec["choices"])
    return values
