from dataclasses import dataclass
from typing import Literal

import pytest

from pgbench.errors import ConfigError
from pgbench.fields import build, describe, knob


@dataclass(frozen=True)
class Toy:
    steps: int = knob(3, "optimiser steps", ge=1)
    lr: float = knob(0.1, "learning rate", gt=0.0, le=1.0)
    mode: Literal["a", "b"] = knob("a", "a mode")
    on: bool = knob(False, "a switch")
    reward_name: str = knob("chrf", "reward terms", key="reward")


def test_text_is_parsed_into_each_fields_type():
    values = {"steps": "7", "lr": "1e-3", "mode": "b", "on": "yes", "reward": "bleu"}
    assert build(Toy, "toy.", values) == Toy(7, 1e-3, "b", True, "bleu")
    assert build(Toy, "toy.", {"on": "FALSE", "steps": 5}) == Toy(steps=5)  # typed: as given
    assert build(Toy, "toy.", {}) == Toy()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"steps": "x"}, "toy.steps='x' is not a valid int"),
        ({"steps": "0"}, r"toy.steps must be >= 1 \(got 0\)"),
        ({"lr": "0"}, r"toy.lr must be > 0.0 \(got 0.0\)"),
        ({"lr": "2"}, r"toy.lr must be <= 1.0 \(got 2.0\)"),
        ({"mode": "c"}, "toy.mode='c' is not valid; choose one of: a, b"),
        ({"on": "maybe"}, "toy.on='maybe' is not a boolean; use true or false"),
        (
            {"stps": "1"},
            r"unknown key toy.stps; did you mean toy.steps\? "
            r"\(valid: toy.steps, toy.lr, toy.mode, toy.on, toy.reward\)",
        ),
        ({"reward_name": "bleu"}, "unknown key toy.reward_name"),  # the key, not the attribute
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        build(Toy, "toy.", values)


def test_describe_gives_key_type_default_and_help():
    assert describe(Toy, "toy.") == [
        ("toy.steps", "int", "3", "optimiser steps"),
        ("toy.lr", "float", "0.1", "learning rate"),
        ("toy.mode", "{a|b}", "'a'", "a mode"),
        ("toy.on", "bool", "False", "a switch"),
        ("toy.reward", "str", "'chrf'", "reward terms"),
    ]
    assert describe(Toy, "", {"lr"}) == [("lr", "float", "0.1", "learning rate")]
