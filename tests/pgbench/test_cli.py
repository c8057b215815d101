import subprocess
import sys

import pytest

from pgbench import estimators
from pgbench.cli import main
from pgbench.config.verbs import VERB_ARGS, all_keys

ESTIMATORS = ", ".join(estimators.REGISTRY.names())
# what `--help` must list, written out (not derived from the code that prints it)
RUN_KEYS = """
    task estimator model seed output_dir resume cache_dir device threads task.source
    task.train_file task.test_file task.limit task.reward task.valid_size task.test_size
    task.split_seed task.test_split task.system estimator.baseline estimator.ema_decay
    trainer.steps
    trainer.lr trainer.prompts_per_step trainer.warmup_ratio trainer.grad_clip
    trainer.weight_decay trainer.micro_batch_size trainer.epochs trainer.minibatches
    trainer.max_skipped trainer.precision
    trainer.gradient_checkpointing rollout.samples_per_prompt rollout.max_new_tokens
    rollout.temperature rollout.drop_uniform_groups rollout.overlong_buffer
    rollout.overlong_penalty rollout.staleness engine.backend engine.sync_every
    engine.gpu_memory_utilization kl.coef kl.estimator kl.placement kl.is_correction
    loss.aggregation loss.policy loss.ratio loss.clip_low loss.clip_high loss.dual_clip
    loss.sapo_tau_pos loss.sapo_tau_neg loss.cov_ratio loss.clip_cov_lb loss.clip_cov_ub
    loss.kl_cov_coef loss.entropy_coef loss.dppo_ratio_cap loss.m2po_threshold loss.kimi_tau
    loss.vespo_k_pos loss.vespo_lambda_pos loss.vespo_k_neg loss.vespo_lambda_neg
    loss.top_entropy_quantile loss.off_policy_mask loss.rollout_correction
    loss.rollout_correction_level loss.rollout_correction_high loss.rollout_correction_low
    loss.rollout_correction_kl_max lora.r lora.alpha lora.dropout
    lora.target_modules eval.every eval.size eval.batch_size eval.max_new_tokens eval.test
    reward.model reward.device reward.batch_size reward.flip reward.noise_std reward.permute
    reward.scale reward.offset checkpoint.every tracking.uri
    tracking.experiment
""".split()
EVAL_KEYS = """
    task model seed output_dir cache_dir device threads task.source task.train_file
    task.test_file task.limit task.reward task.valid_size task.test_size task.split_seed
    task.test_split task.system eval.every eval.size eval.batch_size eval.max_new_tokens eval.test
    reward.model reward.device reward.batch_size reward.flip reward.noise_std reward.permute
    reward.scale reward.offset
""".split()


def run_cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def help_keys(out: str) -> list[str]:
    """The keys listed by `--help` (lines `  key  help  [type, default ...]`)."""
    return [line.split()[0] for line in out.splitlines() if line.endswith("]") and "  " in line]


def test_help_lists_every_key_with_default(capsys):
    code, out, _ = run_cli(capsys, "run", "estimator=reinforce", "--help")
    assert code == 0
    assert help_keys(out) == RUN_KEYS
    assert "default 'none'" in out and "default 0.05" in out


def test_help_shows_fr_ens_defaults_for_the_model_named(capsys):
    def defaults(*args: str) -> dict[str, str]:
        _, out, _ = run_cli(capsys, "run", *args, "--help")
        rows = [line.split()[0:1] + line.rsplit("default ", 1)[1:] for line in out.splitlines()]
        return {row[0]: row[1].rstrip("]") for row in rows if len(row) == 2}

    smollm2 = defaults()
    assert smollm2["model"] == "'smollm2' (fr_en)"
    assert smollm2["lora.r"] == "8 (fr_en, model=smollm2)"
    assert smollm2["trainer.lr"] == "0.0003 (fr_en, model=smollm2)"
    assert smollm2["rollout.samples_per_prompt"] == "4 (fr_en, model=smollm2)"
    tiny = defaults("model=tiny")
    assert (tiny["lora.r"], tiny["trainer.lr"], tiny["trainer.steps"]) == ("0", "0.0001", "150")
    assert tiny["rollout.samples_per_prompt"] == "8 (fr_en)"
    arith = defaults("task=arith")
    assert (arith["model"], arith["lora.r"]) == ("'tiny'", "0")


@pytest.mark.parametrize("verb", list(VERB_ARGS))
def test_every_verbs_help_lists_exactly_its_keys(capsys, verb):
    code, out, _ = run_cli(capsys, verb, "--help")
    assert code == 0 and help_keys(out) == all_keys(VERB_ARGS[verb])


def test_eval_help_lists_only_its_keys(capsys):
    _, out, _ = run_cli(capsys, "eval", "--help")
    assert help_keys(out) == EVAL_KEYS
    assert "task.test_file" in out and "eval.size" in out and "trainer.lr" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "trainer.lrr=1"], "did you mean trainer.lr"),
        (["run", "estimator=ppo2"], f"registered: {ESTIMATORS}"),
        (["run", "trainer.lr=-1"], "trainer.lr must be > 0.0"),
        (["run", "tracking.uri=http://127.0.0.1:9"], "is unreachable"),
        (["run", "tracking.uri=./mlruns"], "file store is deprecated"),
        (["run", "resume=/nonexistent/run"], "no pgbench run there"),
        (["eval", "trainer.lr=1e-5"], "does not apply here"),
        (["eval", "model=/nonexistent/model"], "no such folder"),
        (["fly"], None),
    ],
)
def test_user_errors_exit_2_with_one_line(capsys, args, message):
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if message:
        assert message in err


def test_console_entry_point_reports_errors_without_traceback():
    done = subprocess.run(
        [sys.executable, "-m", "pgbench", "run", "kl.coef=-1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "pgbench run: error: kl.coef must be >= 0.0 (got -1.0)"


def test_a_run_prints_only_its_own_progress_bar_and_lines(run_overrides, tmp_path):
    # a fresh SQLite store, LoRA (peft) and activation checkpointing: the known noise sources
    overrides = run_overrides | {
        "trainer.steps": "2",
        "lora.r": "2",
        "trainer.gradient_checkpointing": "true",
        "tracking.uri": f"sqlite:///{tmp_path / 'fresh.db'}",
        "output_dir": str(tmp_path / "run"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pgbench", "run", *(f"{k}={v}" for k, v in overrides.items())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.strip() for line in done.stderr.replace("\r", "\n").splitlines()]
    # pgbench's `train` bar only: transformers' "Loading weights" / "Writing model shards"
    # bars (a load and a save happen in every run) are switched off
    noise = [line for line in lines if line and not line.startswith(("pgbench", "train:"))]
    assert noise == []
    assert any(line.startswith("train: 100%") for line in lines)


HEAVY = ("torch", "transformers", "mlflow", "optuna")
# each command's exit code and its output, then the heavy libraries imported by any of them
LIGHT_COMMANDS = """
import contextlib, io, sys
from pgbench.cli import main
for args in (["--help"], ["run", "task=nope"], ["run", "trainer.lrr=1"], ["run", "kl.coef=-1"],
             ["sweep", "estimator=ppo2"], ["eval", "trainer.lr=1"], ["run", "--help"],
             ["suite", "estimator=ppo", "--help"]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    print(code, (out.getvalue() + err.getvalue()).splitlines()[0])
print(sorted(name for name in HEAVY if name in sys.modules))
""".replace("HEAVY", repr(HEAVY))


def test_help_and_bad_names_keys_and_values_need_no_torch():
    done = subprocess.run(
        [sys.executable, "-c", LIGHT_COMMANDS], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("0 pgbench 0.1.0: compare policy-gradient estimators")
    known = "arith, dataset, fr_en, poet"
    assert lines[1] == f"2 pgbench run: error: unknown task 'nope'; registered: {known}"
    assert lines[2].startswith("2 pgbench run: error: unknown key 'trainer.lrr'; did you mean")
    assert lines[3] == "2 pgbench run: error: kl.coef must be >= 0.0 (got -1.0)"
    assert lines[4] == f"2 pgbench sweep: error: unknown estimator 'ppo2'; registered: {ESTIMATORS}"
    assert lines[5].startswith("2 pgbench eval: error: key 'trainer.lr' does not apply here")
    # a verb's help lists the selected task's and estimator's keys: their modules load without torch
    assert lines[6] == "0 usage: pgbench run [key=value ...]"
    assert lines[7] == "0 usage: pgbench suite [key=value ...]"
    assert lines[8] == "[]"  # none of HEAVY was imported
