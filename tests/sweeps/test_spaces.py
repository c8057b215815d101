import json

import optuna
import pytest

from pgbench import estimators
from pgbench.config.verbs import SweepArgs, all_keys
from pgbench.errors import ConfigError
from pgbench.sweeps.spaces import builtin, check, load, suggest


def test_every_builtin_space_names_keys_of_its_estimator():
    for name in estimators.REGISTRY.names():
        unknown = set(builtin(name)) - set(all_keys(SweepArgs, estimator=name))
        assert not unknown, (name, unknown)
    assert "loss.clip_high" in builtin("ppo")
    assert list(builtin("rloo")) == ["trainer.lr", "kl.coef"]  # no estimator keys of its own


def test_a_space_file_is_read_and_each_key_drawn(tmp_path):
    space = {
        "trainer.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "trainer.epochs": {"type": "int", "low": 1, "high": 4},
        "estimator.scale": {"type": "categorical", "choices": ["group", "none"]},
    }
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    assert load(str(path)) == space
    fixed = {"trainer.lr": 3e-4, "trainer.epochs": 2, "estimator.scale": "none"}
    assert suggest(optuna.trial.FixedTrial(fixed), space) == fixed
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = suggest(study.ask(), space)
    assert 1e-5 <= drawn["trainer.lr"] <= 1e-3 and drawn["trainer.epochs"] in range(1, 5)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "cannot read a JSON search space"),
        ("{}", "a search space maps config keys to distributions"),
        ('{"trainer.lr": {"type": "float", "low": 1}}', "trainer.lr must be an object with type"),
        ('{"kl.coef": {"type": "uniform"}}', "kl.coef must be an object with type"),
        (
            '{"estimator.scale": {"type": "categorical", "choices": []}}',
            r"estimator.scale has choices \[\]; give a non-empty list of values$",
        ),
        (
            '{"kl.coef": {"type": "float", "low": 0.2, "high": 0.1}}',
            "kl.coef has low=0.2 > high=0.1; low must be at most high$",
        ),
        (
            '{"trainer.lr": {"type": "float", "low": 0, "high": 0.1, "log": true}}',
            "trainer.lr has log=true with low=0; a log scale needs low > 0$",
        ),
        (
            '{"trainer.epochs": {"type": "int", "low": 1.5, "high": 4}}',
            "trainer.epochs has low=1.5, high=4; both must be int numbers$",
        ),
        (
            '{"kl.coef": {"type": "float", "low": "0", "high": 1}}',
            "kl.coef has low='0', high=1; both must be float numbers$",
        ),
    ],
)
def test_a_malformed_space_file_is_one_config_error(tmp_path, content, message):
    path = tmp_path / "space.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=f"^sweep.space={path}: {message}"):
        load(str(path))


def test_every_builtin_space_passes_the_check():
    for name in estimators.REGISTRY.names():
        check(builtin(name), name)  # no ConfigError
