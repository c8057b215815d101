"""The verbs' bodies (pgbench.runs.commands), called as the CLI calls them: with the overrides."""

import json

import pytest

from pgbench.errors import ConfigError
from pgbench.runs import commands


def test_a_run_refuses_an_output_dir_that_holds_files(run_overrides, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(ConfigError, match=f"continue it with resume={out}"):
        commands.run(run_overrides | {"output_dir": str(out)})
    assert [p.name for p in out.iterdir()] == ["something"]


def test_run_then_eval_the_run_directory(capsys, run_overrides, tmp_path):
    overrides = run_overrides | {"trainer.steps": "2"}
    assert commands.run(overrides) == 0
    out = capsys.readouterr().out
    summary = json.loads(open(run_overrides["output_dir"] + "/summary.json").read())
    table = out.split("test metric", 1)[1].splitlines()  # the before/after table it prints
    chrf = next(line.split() for line in table if line.startswith("chrf"))
    before, after = summary["eval_before"]["chrf"], summary["eval_after"]["chrf"]
    assert [float(v) for v in chrf[1:]] == pytest.approx([before, after, after - before], abs=0.01)

    test_file = tmp_path / "test.tsv"
    test_file.write_text("fr\ten\nJe suis là.\tI am here. ||| I'm here.\nMerci.\tThank you.\n")
    eval_dir = tmp_path / "eval"
    task_keys = {k: v for k, v in overrides.items() if k.startswith("task.")}
    eval_keys = task_keys | {"output_dir": str(eval_dir), "eval.max_new_tokens": "12"}
    model = {"model": summary["output_dir"]}
    assert commands.evaluate_policy(model | eval_keys | {"task.test_file": str(test_file)}) == 0
    scores = json.loads((eval_dir / "eval.json").read_text())
    assert scores["examples"] == 2 and {"chrf", "bleu", "embed"} <= set(scores)

    # the same policy on the run's own test split reproduces eval_after
    assert commands.evaluate_policy(model | eval_keys) == 0
    scores = json.loads((eval_dir / "eval.json").read_text())
    assert scores["chrf"] == pytest.approx(summary["eval_after"]["chrf"])

    with pytest.raises(ConfigError, match="drop trainer.lr"):
        commands.run({"resume": summary["output_dir"], "trainer.lr": "1"})
