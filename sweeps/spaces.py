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
    """A ConfigError naming `where` unless `space` maps keys to well-formed distributions."""
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
