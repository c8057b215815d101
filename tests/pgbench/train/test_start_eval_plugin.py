"""The start-evaluation cache key covers a task from outside pgbench: its source file, and
whatever the task itself names as an input (`fingerprint()`: a reward's source, a data file)."""

import sys

import torch

from pgbench.config.sections import LoraConfig
from pgbench.models.policy import load_policy
from pgbench.tasks import CATALOG
from pgbench.train import start_eval

SETTINGS = {"max_new_tokens": 12, "batch_size": 8}
USER_TASK = """
from dataclasses import dataclass
from pathlib import Path

from pgbench.tasks.fr_en import FrEn


@dataclass
class MyFrEn(FrEn):
    def fingerprint(self):
        return (Path(__file__).parent / "data.txt").read_text()
"""


def test_the_key_changes_with_the_plugin_source_and_its_own_inputs(
    micro_policy, micro_task, tmp_path, monkeypatch
):
    monkeypatch.syspath_prepend(str(tmp_path))
    policy = load_policy(str(micro_policy), LoraConfig(), torch.device("cpu"))
    examples = micro_task.splits().test[:4]
    fields = {"limit": 2000, "valid_size": 40, "test_size": 40}

    def key_of(source: str) -> str:
        (tmp_path / "user_task.py").write_text(source)
        monkeypatch.delitem(sys.modules, "user_task", raising=False)
        task = CATALOG.get_class("user_task:MyFrEn")(**fields)
        return start_eval.start_key(policy, task, examples, SETTINGS)

    (tmp_path / "data.txt").write_text("v1")
    key = key_of(USER_TASK)
    assert key == key_of(USER_TASK)
    assert key != start_eval.start_key(policy, micro_task, examples, SETTINGS)
    assert key != key_of(USER_TASK + "\n# an edit that changes no behaviour\n")
    (tmp_path / "data.txt").write_text("v2")
    assert key != key_of(USER_TASK)  # the task's own input
