import pytest

from pgbench.config import all_keys, help_rows, parse_overrides, resolve
from pgbench.errors import ConfigError

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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trainer.lrr=1"], "unknown key 'trainer.lrr'; did you mean trainer.lr"),
        (["modle=x"], "did you mean model"),
        (
            ["estimator=ppo2"],
            "unknown estimator 'ppo2'; registered: grpo, ppo, reinforce, reinforce_pp, rloo",
        ),
        (["task=de_en"], "unknown task 'de_en'; registered: arith, fr_en, poet"),
        (["trainer.lr=0"], "trainer.lr must be > 0.0"),
        (["trainer.lr=fast"], "trainer.lr='fast' is not a valid float"),
        (["trainer.steps=0"], "trainer.steps must be >= 1"),
        (["rollout.temperature=0"], "rollout.temperature must be > 0.0"),
        (["rollout.samples_per_prompt=1"], "must be >= 2 for estimator=rloo"),
        (["kl.estimator=k2"], "choose one of: k1, k3"),
        (["kl.placement=both"], "choose one of: reward, loss"),
        (["task.reward=rouge"], "bad term 'rouge'; use .* names chrf, bleu, embed, comet"),
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
    with pytest.raises(ConfigError, match="does not apply here"):
        resolve({"trainer.lr": "1"}, allowed={"task", "model"})


def test_help_rows_have_type_default_and_text():
    rows = {row[0]: row for row in help_rows(estimator="reinforce")}
    assert rows["kl.estimator"][1:3] == ("{k1|k3}", "'k1'")
    assert rows["estimator.baseline"][3]
    assert all(row[3] for row in rows.values())


def test_task_run_defaults_apply_unless_set():
    fr_en = resolve({"task": "fr_en"})
    assert (fr_en.trainer.prompts_per_step, fr_en.rollout.samples_per_prompt) == (32, 8)
    assert fr_en.eval.every == 50
    arith = resolve({"task": "arith"})
    assert (arith.trainer.prompts_per_step, arith.rollout.samples_per_prompt) == (8, 4)
    assert arith.eval.every == 25
    explicit = resolve({"task": "fr_en", "trainer.prompts_per_step": "4"})
    assert explicit.trainer.prompts_per_step == 4 and explicit.rollout.samples_per_prompt == 8
    restricted = resolve({"task": "fr_en"}, allowed={"task", "model"})
    assert restricted.trainer.prompts_per_step == 8  # a section the verb ignores: global default
    rows = {row[0]: row for row in help_rows(task="fr_en")}
    assert rows["trainer.prompts_per_step"][2] == "32 (fr_en)"
    assert {row[0]: row for row in help_rows(task="arith")}["trainer.prompts_per_step"][2] == "8"
