"""Bad input, clear errors: each case exits 2 with one line naming the input and what is valid,
and leaves no run directory or MLflow store behind."""

import json
import typing
from pathlib import Path

import pytest

from pgbench import estimators
from pgbench.cli import main
from pgbench.config.verbs import resolve
from pgbench.rl.choices import KLEstimator

ESTIMATORS = ", ".join(estimators.REGISTRY.names())
KL_CHOICES = ", ".join(typing.get_args(KLEstimator))

TSV = {
    "rows.tsv": "fr\ten\nBonjour.\tHello.\nSeulement une colonne\n",
    "empty.tsv": "",
    "columns.tsv": "de\ten\nHallo.\tHello.\n",
    "header_only.tsv": "fr\ten\n",
}

# (arguments, text the one-line message must contain); {tmp} is the test's folder
CASES = [
    (["run", "trainer.lrr=1"], "did you mean trainer.lr"),
    (["run", "estimator=ppo2"], f"registered: {ESTIMATORS}"),
    (["run", "task=de_en"], "unknown task 'de_en'; registered: arith, dataset, fr_en, poet"),
    (["run", "trainer.steps=abc"], "trainer.steps='abc' is not a valid int"),
    (["run", "trainer.steps=1.5"], "trainer.steps='1.5' is not a valid int"),
    (["run", "trainer.lr=-1"], "trainer.lr must be > 0.0"),
    (["run", "rollout.temperature=0"], "rollout.temperature must be > 0.0"),
    (["run", "kl.estimator=k4"], f"choose one of: {KL_CHOICES}"),
    (["run", "loss.dual_clip=0.5"], "loss.dual_clip must be 0 (off) or a constant c > 1"),
    (
        ["run", "loss.dual_clip=3", "loss.policy=cispo"],
        "applies to loss.policy=ppo_clip or clip_cov only",
    ),
    (["eval", "eval.test=false"], "does not apply to pgbench eval"),
    (["run", "loss.policy=vespa"], "choose one of: ppo_clip, cispo, gmpo, sapo, clip_cov, kl_cov"),
    (["run", "device=tpu"], "choose one of: auto, cpu, cuda"),
    (["run", "estimator.baseline=ema"], "belongs to estimator=reinforce, not rloo"),
    (["run", "estimator=grpo", "rollout.samples_per_prompt=1"], "must be >= 2"),
    (["run", "task.source=file"], "task.source=file needs task.train_file"),
    (["run", "task.train_file=x.tsv"], "only read with task.source=file"),
    (["run", "task.reward=rouge"], "bad term 'rouge'"),
    (["run", "task.reward=embed+comet", "reward.model=x"], "is ambiguous"),
    (["run", "trainer.lr"], "expected key=value"),
    (["run", "seed=1", "seed=2"], "key seed is given twice"),
    (["run", "model=/nonexistent/model"], "no such folder; use tiny, smollm2, a hub id or a"),
    (["run", "model={tmp}"], "is not a Hugging Face model folder"),
    (["run", "tracking.uri=http://127.0.0.1:9"], "is unreachable"),
    (["run", "tracking.uri=./mlruns"], "file store is deprecated"),
    (["run", "resume=/nonexistent/run"], "no pgbench run there"),
    (["eval", "trainer.lr=1e-5"], "does not apply here"),
    (["sweep", "resume=auto"], "'resume' does not apply here"),
    (["variance", "estimator.baseline=ema"], "'estimator.baseline' does not apply here"),
    (["variance", "estimators=rloo,nope"], "unknown estimator 'nope'"),
    (["compare", "seeds=0"], "seeds must be >= 1"),
    (["suite", "task=arith"], "task= does not apply to a suite; use tasks="),
    (["report"], "give exactly one of"),
    (["report", "comparison=a", "experiment=b"], "give exactly one of"),
    (["sweep", "sweep.space=/nonexistent.json"], "cannot read a JSON search space"),
    (["fly"], "unknown verb 'fly'; valid: run"),
    (["run", "engine.backend=vllm"], "needs vLLM: pip install 'pgbench[vllm]'"),  # not installed
    (["run", "task=poet", "engine.backend=vllm"], "does not run multi-turn tool episodes"),
    (["run", "engine.backend=sglang"], "choose one of: hf, vllm"),
    (["run", "engine.sync_every=0"], "engine.sync_every must be >= 1"),
    (["run", "trainer.precision=fp16"], "choose one of: fp32, bf16"),
    (["run", "loss.rollout_correction=tis"], "set rollout.staleness >= 1"),
    (["run", "loss.rollout_correction=is"], "choose one of: none, tis, mis"),
    (["run", "rollout.staleness=-1"], "rollout.staleness must be >= 0"),
    (["run", "loss.rollout_correction_high=1"], "loss.rollout_correction_high must be > 1"),
    (["variance", "rollout.staleness=2"], "does not apply to pgbench variance"),
    # components from outside pgbench (import strings): each bad one named in one line
    (
        ["run", "estimator=no_such_plugin.est:Median"],
        "estimator=no_such_plugin.est:Median: module 'no_such_plugin.est' does not import "
        "(ModuleNotFoundError: No module named 'no_such_plugin')",
    ),
    (["run", "estimator=json:Nope"], "estimator=json:Nope: module 'json' has no 'Nope'"),
    (
        ["run", "task=json:JSONDecoder"],
        "task=json:JSONDecoder: json.decoder.JSONDecoder does not derive from "
        "pgbench.tasks.base.Task",
    ),
    (["suite", "tasks=fr_en", "estimators=rloo,json:dumps"], "names a function, not a class"),
]
FILE_CASES = [
    ("rows.tsv", "line 3: expected two non-empty tab-separated columns"),
    ("empty.tsv", "is empty; expected a header line"),
    ("columns.tsv", "line 1: header is 'de\\ten'; expected 'fr\\ten'"),
    ("header_only.tsv", "has a header but no rows"),
    ("latin1.tsv", "is not UTF-8 text"),
    ("missing.tsv", "does not exist"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty working directory holding the bad data files."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    for name, text in TSV.items():
        (data / name).write_text(text)
    (data / "latin1.tsv").write_bytes("fr\ten\nÇa va.\tFine.\n".encode("latin-1"))
    return tmp_path


def _assert_clean_failure(capsys, workdir: Path, args: list[str], message: str) -> None:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, args
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err
    leftovers = sorted(p.name for p in workdir.iterdir() if p.name != "data")
    assert leftovers == [], f"{args} left {leftovers}"


@pytest.mark.parametrize(("args", "message"), CASES)
def test_bad_option(capsys, workdir, args, message):
    args = [a.replace("{tmp}", str(workdir / "data")) for a in args]
    _assert_clean_failure(capsys, workdir, args, message)


@pytest.mark.parametrize(("name", "message"), FILE_CASES)
def test_bad_data_file(capsys, workdir, name, message):
    path = workdir / "data" / name
    for args in (
        ["run", "task.source=file", f"task.train_file={path}"],
        ["eval", f"task.test_file={path}"],
    ):
        _assert_clean_failure(capsys, workdir, args, message)


def test_bad_run_directories(capsys, workdir, run_overrides, micro_policy):
    args = [f"{k}={v}" for k, v in run_overrides.items() if k != "output_dir"]
    taken = workdir / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert main(["run", *args, f"output_dir={taken}"]) == 2
    assert f"continue it with resume={taken}" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]

    # a run whose newest checkpoint is corrupted
    broken = workdir / "broken"
    step = broken / "checkpoints" / "step-000002"
    step.mkdir(parents=True)
    (step / "weights.safetensors").write_bytes(b"not safetensors")
    (step / "state.pt").write_bytes(b"not a torch file")
    config = resolve(run_overrides | {"output_dir": str(broken)}).to_flat()
    (broken / "config.json").write_text(json.dumps(config))
    assert main(["run", f"resume={broken}"]) == 2
    err = capsys.readouterr().err  # after the policy's loading bar: the message, one line
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"checkpoint {step} cannot be read" in last and "delete it" in last
