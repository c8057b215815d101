import dataclasses
import typing

import pytest

from pgbench import estimators
from pgbench.config.compose import Resolved, Verb, component, section, top
from pgbench.config.sections import EvalConfig
from pgbench.config.verbs import (
    VERB_ARGS,
    CompareArgs,
    Config,
    EvalArgs,
    SweepArgs,
    VarianceArgs,
    all_keys,
    check,
    help_rows,
    parse_overrides,
    resolve,
)
from pgbench.errors import ConfigError
from pgbench.rl.choices import KLEstimator
from pgbench.tasks import Task

ESTIMATORS = ", ".join(estimators.REGISTRY.names())
KL_CHOICES = ", ".join(typing.get_args(KLEstimator))

CONTRACT_KEYS = """task estimator model seed output_dir resume trainer.steps trainer.lr
trainer.prompts_per_step trainer.warmup_ratio trainer.grad_clip rollout.samples_per_prompt
rollout.max_new_tokens rollout.temperature kl.coef kl.estimator kl.placement lora.r eval.every
eval.size checkpoint.every tracking.uri tracking.experiment task.source task.train_file
task.test_file task.limit task.reward""".split()


def test_contract_keys_exist():
    assert set(CONTRACT_KEYS) <= set(all_keys())
    assert "estimator.baseline" in all_keys(estimator="reinforce")


def test_overrides_are_typed():
    config = resolve(
        parse_overrides(
            [
                "estimator=reinforce",
                "estimator.baseline=ema",
                "trainer.lr=1e-4",
                "trainer.steps=7",
                "kl.placement=loss",
                "task.reward=bleu",
            ]
        )
    )
    assert config.trainer.lr == 1e-4 and config.trainer.steps == 7
    assert config.estimator.baseline == "ema" and config.kl.placement == "loss"
    assert config.task.reward_name == "bleu"


def test_flat_config_round_trips():
    config = resolve(parse_overrides(["trainer.lr=2e-4", "lora.r=8"]))
    assert resolve(config.to_flat()).to_flat() == config.to_flat()


def test_changing_estimator_changes_only_estimator_keys():
    rloo = resolve({"estimator": "rloo"}).to_flat()
    reinforce = resolve({"estimator": "reinforce"}).to_flat()
    differing = {k for k in rloo.keys() | reinforce.keys() if rloo.get(k) != reinforce.get(k)}
    assert differing and all(k.startswith("estimator") for k in differing)


def test_ppo_differs_only_in_its_keys_and_its_stated_two_by_two():
    rloo = resolve({"estimator": "rloo"}).to_flat()
    ppo = resolve({"estimator": "ppo"}).to_flat()
    differing = {k for k in rloo.keys() | ppo.keys() if rloo.get(k) != ppo.get(k)}
    shared = {k for k in differing if not k.startswith("estimator")}
    assert shared == {"trainer.epochs", "trainer.minibatches"}
    assert ppo["trainer.epochs"] == ppo["trainer.minibatches"] == 2
    assert rloo["trainer.epochs"] == rloo["trainer.minibatches"] == 1
    assert resolve({"estimator": "ppo", "trainer.epochs": "3"}).trainer.epochs == 3
    assert rloo["loss.clip_low"] == rloo["loss.clip_high"] == ppo["loss.clip_low"] == 0.2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trainer.lrr=1"], "unknown key 'trainer.lrr'; did you mean trainer.lr"),
        (["modle=x"], "did you mean model"),
        (
            ["estimator=ppo2"],
            f"unknown estimator 'ppo2'; registered: {ESTIMATORS}",
        ),
        (["task=de_en"], "unknown task 'de_en'; registered: arith, dataset, fr_en, poet"),
        (["trainer.lr=0"], "trainer.lr must be > 0.0"),
        (["trainer.lr=fast"], "trainer.lr='fast' is not a valid float"),
        (["trainer.steps=0"], "trainer.steps must be >= 1"),
        (["rollout.temperature=0"], "rollout.temperature must be > 0.0"),
        (["rollout.samples_per_prompt=1"], "must be >= 2 for estimator=rloo"),
        (["kl.estimator=k4"], f"choose one of: {KL_CHOICES}"),
        (["kl.placement=both"], "choose one of: reward, loss"),
        (
            ["task.reward=rouge"],
            "bad term 'rouge'; use .* names chrf, bleu, embed, bertscore, comet",
        ),
        (["estimator.baseline=ema"], "estimator.baseline belongs to estimator=reinforce"),
        (["lora.r=-1"], "lora.r must be >= 0"),
        (["device=tpu"], "choose one of: auto, cpu, cuda"),
    ],
)
def test_bad_values_are_one_line_errors(args, message):
    with pytest.raises(ConfigError, match=message) as info:
        resolve(parse_overrides(args))
    assert "\n" not in str(info.value)


def test_malformed_and_repeated_overrides():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["trainer.lr"])
    with pytest.raises(ConfigError, match="given twice"):
        parse_overrides(["seed=1", "seed=2"])


def test_verb_restriction():
    with pytest.raises(ConfigError, match="'trainer.lr' does not apply here; keys used: cache_dir"):
        resolve({"trainer.lr": "1"}, EvalArgs)
    with pytest.raises(ConfigError, match="'resume' does not apply here"):
        resolve({"resume": "auto"}, SweepArgs)
    with pytest.raises(ConfigError, match="'estimator.baseline' does not apply here"):
        resolve({"estimator.baseline": "ema"}, VarianceArgs)
    with pytest.raises(ConfigError, match="unknown key 'trainer.lrr'; did you mean trainer.lr"):
        resolve({"trainer.lrr": "1"}, SweepArgs)


def test_help_rows_have_type_default_and_text():
    rows = {row[0]: row for row in help_rows(estimator="reinforce")}
    assert rows["kl.estimator"][1:3] == ("{" + KL_CHOICES.replace(", ", "|") + "}", "'k1'")
    assert rows["estimator.baseline"][3]
    assert all(row[3] for row in rows.values())


def test_each_verb_class_is_exported_under_its_name():
    from pgbench.config import verbs

    for verb, args in VERB_ARGS.items():
        assert args.__name__ == verbs.VERBS[verb].name and getattr(verbs, args.__name__) is args


def test_each_verb_checks_its_own_estimators():
    with pytest.raises(ConfigError, match="unknown estimator 'nope'"):
        resolve({"estimators": "rloo,nope"}, VarianceArgs)
    with pytest.raises(ConfigError, match=">= 2 for estimators=grpo"):
        resolve({"estimators": "grpo", "rollout.samples_per_prompt": "1"}, VERB_ARGS["compare"])
    assert isinstance(resolve({"estimator": "grpo"}), Config)


def test_check_finds_early_what_resolve_would_without_building_components():
    cases = [
        ({"task": "de_en"}, "unknown task 'de_en'"),
        ({"trainer.lrr": "1"}, "unknown key 'trainer.lrr'; did you mean trainer.lr"),
        ({"kl.coef": "-1"}, r"kl.coef must be >= 0.0 \(got -1.0\)"),
        ({"seeds": "0"}, "seeds must be >= 1"),
        ({"resume": "auto"}, "'resume' does not apply here"),
    ]
    for values, message in cases:
        args = CompareArgs if "seeds" in values else SweepArgs if "resume" in values else Config
        for find in (check, resolve):
            with pytest.raises(ConfigError, match=message):
                find(values, args)
    check({"estimator.baseline": "ema", "task.limit": "-5"})  # left to the components


def test_a_verb_is_a_class_of_knobs_components_and_sections():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class ProbeArgs(Resolved):
        spec = Verb("probe a task", "probe-<task>")
        task: Task = component()
        seed: int = top("seed")
        eval: EvalConfig = section(EvalConfig)

    assert ProbeArgs.spec.name == "ProbeArgs"
    assert all_keys(ProbeArgs)[:3] == ["task", "seed", "task.source"]
    assert all_keys(ProbeArgs)[-1] == "eval.test"
    probe = resolve({"task": "arith", "seed": "3", "eval.size": "7"}, ProbeArgs)
    assert (probe.task.name, probe.seed, probe.eval.size) == ("arith", 3, 7)
    assert resolve(probe.to_flat(), ProbeArgs) == probe
    with pytest.raises(ConfigError, match="'trainer.lr' does not apply here; keys used: eval"):
        resolve({"trainer.lr": "1"}, ProbeArgs)
