import dataclasses
import json
import logging
import math
import re
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from transformers import AutoTokenizer

from pgbench import estimators, tasks
from pgbench.config.verbs import resolve
from pgbench.errors import ConfigError
from pgbench.hardware import auto_precision
from pgbench.models.resolve import resolve_model
from pgbench.models.tiny import TinySpec, task_spec, tiny_policy_dir
from pgbench.tasks import Example
from pgbench.tasks.arith import Arith, parse_answer, problem_count
from pgbench.train.trainer import train

MICRO_ARITH_SPEC = {
    "vocab_size": 300,
    "hidden_size": 32,
    "layers": 1,
    "heads": 2,
    "intermediate_size": 64,
    "sft_steps": 30,
    "sft_batch_size": 16,
}
MICRO_ARITH_TASK = {"train_size": "300", "valid_size": "16", "test_size": "16"}


def operands(example: Example) -> tuple[int, str, int]:
    a, op, b = example.source.split()
    return int(a), op, int(b)


def test_splits_are_deterministic_disjoint_sized_and_correct():
    fields = {"digits": 3, "ops": "+*", "train_size": 400, "valid_size": 50, "test_size": 60}
    first = tasks.get("arith", **fields).splits()
    assert tasks.get("arith", **fields).splits() == first  # a new instance draws the same
    assert first.sizes() == {"train": 400, "valid": 50, "test": 60}
    # disjoint even up to commuting the operands: a + b and b + a are one problem
    keys = [
        {(op, min(a, b), max(a, b)) for a, op, b in map(operands, part)}
        for part in (first.train, first.valid, first.test)
    ]
    assert [len(k) for k in keys] == [400, 50, 60]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    for example in first.train + first.valid + first.test:
        a, op, b = operands(example)
        assert 100 <= a <= 999 and 100 <= b <= 999
        assert example.references == (str(a + b if op == "+" else a * b),)
    assert {operands(e)[1] for e in first.train} == {"+", "*"}
    assert tasks.get("arith", **fields, split_seed=1).splits().test != first.test


def test_held_out_splits_do_not_depend_on_train_size():
    small = tasks.get("arith", train_size=10, valid_size=20, test_size=30).splits()
    large = tasks.get("arith", train_size=1000, valid_size=20, test_size=30).splits()
    assert small.test == large.test and small.valid == large.valid
    assert large.train[:10] == small.train


def test_ops_and_digits_are_respected():
    task = tasks.get("arith", digits=1, ops="*", train_size=30, valid_size=5, test_size=5)
    splits = task.splits()
    for example in splits.train + splits.valid + splits.test:
        a, op, b = operands(example)
        assert op == "*" and 1 <= a <= 9 and 1 <= b <= 9
        assert example.references == (str(a * b),)
    # 1-digit operands: 9 * 10 / 2 = 45 unordered pairs per operator, all drawn when asked
    assert problem_count(1, "*") == 45 and problem_count(2, "+*") == 2 * 90 * 91 // 2 == 8190
    everything = tasks.get("arith", digits=1, ops="+", train_size=35, valid_size=5, test_size=5)
    assert sum(everything.splits().sizes().values()) == 45


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"ops": "-"}, "task.ops='-' is not valid; use +, * or +*"),
        ({"ops": "++"}, "task.ops='++' is not valid"),
        ({"ops": ""}, "task.ops='' is not valid"),
        ({"digits": "0"}, "task.digits must be >= 1 (got 0)"),
        ({"test_size": "0"}, "task.test_size must be >= 1 (got 0)"),
        (
            {"digits": "1", "train_size": "40", "valid_size": "5", "test_size": "1"},
            "= 46 exceeds the 45 distinct problems with task.digits=1 and task.ops=+; "
            "set task.train_size<=39 or raise task.digits",
        ),
        (
            {"digits": "1", "train_size": "1", "valid_size": "40", "test_size": "40"},
            "= 81 exceeds the 45 distinct problems with task.digits=1 and task.ops=+; "
            "lower task.valid_size and task.test_size or raise task.digits",
        ),
    ],
)
def test_bad_fields_raise_config_error(fields, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        tasks.get("arith", **fields)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("82", 82),
        (" 82.", 82),
        ("= 82", 82),
        ("The answer is **82**", 82),
        ("37 + 45 = 82", 82),  # the last number, not the first
        ("1,234", 1234),
        ("It is 1,234,567.", 1234567),
        ("-17", -17),
        ("\u221217", -17),  # Unicode minus
        ("82.0", 82),
        ("82.5", None),  # not an integer
        ("12,34", 34),  # not a thousands separator: two numbers
        ("", None),
        ("no idea", None),
    ],
)
def test_parse_answer(text, expected):
    assert parse_answer(text) == expected


def test_reward_and_accuracy_by_hand():
    task = tasks.get("arith")
    examples = [
        Example("37 + 45", ("82",)),
        Example("40 + 41", ("81",)),
        Example("2 + 3", ("5",)),
        Example("34 * 37", ("1258",)),
    ]
    completions = ["The answer is 82.", "80", "", "1,258"]
    # correct, wrong, no number, correct with a separator -> 1, 0, 0, 1; accuracy 2/4 = 50%
    assert task.reward(completions, examples) == [1.0, 0.0, 0.0, 1.0]
    # the wrong ones are "80" and "": (2 + 0) / 2 characters
    assert task.metrics(completions, examples) == {"accuracy": 50.0, "wrong_chars": 1.0}
    assert math.isnan(task.metrics(completions[:1], examples[:1])["wrong_chars"])
    assert task.metric == "accuracy"
    assert task.messages(examples[0]) == [{"role": "user", "content": "What is 37 + 45?"}]
    assert task.target(examples[0]) == "82"


def test_model_tiny_builds_the_task_spec(monkeypatch, tmp_path):
    monkeypatch.setattr(Arith, "tiny_overrides", Arith.tiny_overrides | MICRO_ARITH_SPEC)
    task = tasks.get("arith", **MICRO_ARITH_TASK)
    assert task_spec(task) == TinySpec(**Arith.tiny_overrides)
    folder = resolve_model("tiny", task, str(tmp_path))
    info = json.loads((Path(folder) / "tiny.json").read_text())
    built = TinySpec(**Arith.tiny_overrides, precision=auto_precision(torch.device("cpu")))
    assert info["spec"] == dataclasses.asdict(built)  # "auto" precision is recorded resolved
    assert info["spec"]["split_digits"] and info["spec"]["sft_final_lr_ratio"] == 0.3
    assert info["spec"]["stop_at"] == 40.0
    assert AutoTokenizer.from_pretrained(folder).tokenize("90710") == ["9", "0", "7", "1", "0"]


@pytest.fixture(scope="module")
def micro_arith_policy(tmp_path_factory) -> Path:
    """A micro policy SFT-ed on the micro arith task, built once for this module."""
    task = tasks.get("arith", **MICRO_ARITH_TASK)
    spec = TinySpec(**MICRO_ARITH_SPEC, split_digits=True)
    return tiny_policy_dir(task, tmp_path_factory.mktemp("cache"), spec, progress=False)


def test_micro_grpo_run_logs_accuracy(micro_arith_policy, tmp_path):
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    overrides = {
        "task": "arith",
        "estimator": "grpo",
        "model": str(micro_arith_policy),
        **{f"task.{k}": v for k, v in MICRO_ARITH_TASK.items()},
        "trainer.steps": "3",
        "trainer.prompts_per_step": "4",
        "rollout.samples_per_prompt": "3",
        "rollout.max_new_tokens": "6",
        "eval.every": "2",
        "eval.max_new_tokens": "6",
        "output_dir": str(tmp_path / "run"),
        "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    summary = train(resolve(overrides))
    assert set(summary["eval_before"]) == set(summary["eval_after"]) == {"accuracy", "wrong_chars"}
    client = MlflowClient(overrides["tracking.uri"])
    valid = client.get_metric_history(summary["run_id"], "eval/accuracy")
    assert [m.step for m in valid] == [0, 2, 3]
    test = client.get_metric_history(summary["run_id"], "test/accuracy")
    assert [m.value for m in test] == [
        summary["eval_before"]["accuracy"],
        summary["eval_after"]["accuracy"],
    ]
    assert all(0 <= m.value <= 100 for m in valid + test)


def two_steps(task: str, policy, fields: dict[str, str], out: Path) -> dict[str, str]:
    """Overrides of a 2-step run of 2 prompts x 2 samples on a micro policy, no evaluation."""
    return {
        "task": task,
        "model": str(policy),
        **{f"task.{k}": v for k, v in fields.items()},
        "trainer.steps": "2",
        "trainer.prompts_per_step": "2",
        "rollout.samples_per_prompt": "2",
        "rollout.max_new_tokens": "6",
        "eval.every": "0",
        "eval.max_new_tokens": "6",
        "output_dir": str(out),
        "tracking.uri": f"sqlite:///{out.parent / 'mlflow.db'}",
    }


def test_every_estimator_trains_two_steps_on_arith(micro_arith_policy, tmp_path):
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    names = None
    for estimator in estimators.REGISTRY.names():
        overrides = two_steps("arith", micro_arith_policy, MICRO_ARITH_TASK, tmp_path / estimator)
        summary = train(resolve(overrides | {"estimator": estimator}))
        assert summary["steps"] == 2, estimator
        assert 0 <= summary["train"]["train/reward_mean"] <= 1, estimator
        logged = set(summary["train"]) - {"train/explained_variance"}  # PPO's value head
        names = names or logged
        assert logged == names, estimator


LOSS_VARIANTS = [
    {"loss.policy": "cispo", "loss.clip_low": "1", "loss.clip_high": "0.28"},
    {"loss.policy": "gmpo", "loss.aggregation": "seq_mean_token_mean"},
    {"loss.ratio": "sequence", "loss.dual_clip": "3", "kl.estimator": "k2", "kl.placement": "loss"},
    {"rollout.drop_uniform_groups": "true", "rollout.overlong_buffer": "3"},
    {"loss.policy": "sapo", "rollout.staleness": "1"},
    {"loss.policy": "clip_cov", "loss.cov_ratio": "0.1", "loss.entropy_coef": "0.01"},
    {"loss.policy": "kl_cov", "loss.aggregation": "prompt_mean"},
    {"kl.estimator": "k3_plus", "kl.placement": "loss", "estimator.scale": "batch"},  # Lite PPO
    {"rollout.staleness": "2", "loss.rollout_correction": "tis"},
    {"rollout.staleness": "1", "loss.rollout_correction": "mis"},
    {"rollout.staleness": "1", "loss.rollout_correction": "tis", "loss.ratio": "sequence"},
    # the 2026 zoo (issue 43)
    {"loss.policy": "dppo_tv", "loss.top_entropy_quantile": "0.2", "loss.off_policy_mask": "0.001"},
    {"loss.policy": "luspo", "loss.aggregation": "seq_mean_token_mean"},
    {"loss.policy": "m2po", "rollout.staleness": "1", "loss.rollout_correction": "icepop"},
    {
        "loss.policy": "vespo",
        "rollout.staleness": "1",
        "loss.rollout_correction": "reject_seq_mean_k3",
    },
    {
        "loss.policy": "topr",
        "kl.estimator": "k1_plus",
        "kl.placement": "loss",
        "kl.is_correction": "true",
    },
]


@pytest.mark.parametrize("task", ["arith", "fr_en"])
def test_every_loss_variant_trains_two_steps(micro_arith_policy, run_overrides, tmp_path, task):
    """Each shared loss knob end to end, over two clipped passes (where the forms differ)."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    fr_en = {k[5:]: v for k, v in run_overrides.items() if k.startswith("task.")}
    micro = {
        "arith": (micro_arith_policy, MICRO_ARITH_TASK),
        "fr_en": (run_overrides["model"], fr_en),
    }
    policy, fields = micro[task]
    for index, variant in enumerate(LOSS_VARIANTS):
        overrides = two_steps(task, policy, fields, tmp_path / f"v{index}")
        overrides |= {"estimator": "grpo", "trainer.epochs": "2"}
        summary = train(resolve(overrides | variant))
        assert summary["steps"] == 2, variant
        assert 0 <= summary["train"]["train/clip_fraction"] <= 1, variant
        assert 0 <= summary["train"]["train/uniform_groups"] <= 2, variant
        stale = int(variant.get("rollout.staleness", 0))
        assert summary["train"]["train/staleness"] == min(stale, 1), variant  # the last step
        if not stale:  # on-policy: the behaviour is the trained policy itself
            assert summary["train"]["train/abs_log_rho"] == 0, variant
        assert 0 <= summary["train"]["train/correction_kept"] <= 1, variant
