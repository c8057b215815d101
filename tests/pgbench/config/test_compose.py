"""Each verb's class and the keys its fields name: its defaults (the task's and estimator's
run_defaults), frozen instances and the output_dir pattern."""

import dataclasses
import re

import pytest

from pgbench.cli import VERBS
from pgbench.config.compose import output_path
from pgbench.config.verbs import (
    VERB_ARGS,
    BuildTinyArgs,
    EvalArgs,
    ReportArgs,
    VarianceArgs,
    all_keys,
    help_rows,
    resolve,
)
from pgbench.errors import ConfigError

# a verb's smallest valid values (report needs one of comparison or experiment)
MINIMAL = {"report": {"comparison": "c"}}


def test_task_run_defaults_apply_unless_set():
    fr_en = resolve({"task": "fr_en", "model": "tiny"})
    assert (fr_en.trainer.prompts_per_step, fr_en.rollout.samples_per_prompt) == (32, 8)
    assert fr_en.eval.every == 50
    arith = resolve({"task": "arith"})
    assert (arith.trainer.prompts_per_step, arith.rollout.samples_per_prompt) == (8, 4)
    assert arith.eval.every == 25 and arith.model == "tiny"
    explicit = resolve({"task": "fr_en", "model": "tiny", "trainer.prompts_per_step": "4"})
    assert explicit.trainer.prompts_per_step == 4 and explicit.rollout.samples_per_prompt == 8
    variance = resolve({"task": "fr_en", "model": "tiny"}, VarianceArgs)  # no eval.* keys
    assert variance.trainer.prompts_per_step == 32 and not hasattr(variance, "eval")
    rows = {row[0]: row for row in help_rows(task="fr_en", model="tiny")}
    assert rows["trainer.prompts_per_step"][2] == "32 (fr_en)"
    assert {row[0]: row for row in help_rows(task="arith")}["trainer.prompts_per_step"][2] == "8"


SMOLLM2_RECIPE = {  # fr_en's default model and the cpu_smollm2 protocol's recipe (issue 45)
    "lora.r": 8,
    "trainer.steps": 30,
    "trainer.lr": 3e-4,
    "trainer.prompts_per_step": 4,
    "rollout.samples_per_prompt": 4,
    "eval.every": 30,
    "eval.size": 100,
}


@pytest.mark.parametrize("values", [{}, {"task": "fr_en"}, {"task": "fr_en", "model": "smollm2"}])
def test_fr_en_defaults_to_smollm2_with_its_own_defaults(values):
    flat = resolve(values).to_flat()
    assert flat["model"] == "smollm2"
    assert {k: flat[k] for k in SMOLLM2_RECIPE} == SMOLLM2_RECIPE
    assert flat["rollout.temperature"] == 0.5  # the shared default, as the suite ran it
    rows = {row[0]: row[2] for row in help_rows(task="fr_en")}
    assert rows["model"] == "'smollm2' (fr_en)"
    assert (
        rows["lora.r"] == "8 (fr_en, model=smollm2)"
        and rows["eval.size"] == "100 (fr_en, model=smollm2)"
    )


def test_a_model_default_yields_to_the_command_line_and_to_other_models():
    set_here = resolve({"task": "fr_en", "lora.r": "0", "trainer.steps": "10"})
    assert (set_here.lora.r, set_here.trainer.steps, set_here.trainer.lr) == (0, 10, 3e-4)
    hub = resolve({"task": "fr_en", "model": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    assert (hub.lora.r, hub.trainer.prompts_per_step, hub.trainer.steps) == (0, 32, 150)
    arith = resolve({"task": "arith", "model": "smollm2"})  # the recipe is fr_en's own
    assert (arith.lora.r, arith.trainer.prompts_per_step) == (0, 8)
    # a verb without lora.* or eval.* keys takes the rest (eval: the model, eval.size)
    variance = resolve({"task": "fr_en"}, VarianceArgs)
    assert (variance.model, variance.trainer.prompts_per_step) == ("smollm2", 4)
    assert resolve({"task": "fr_en"}, EvalArgs).model == "smollm2"
    assert resolve({"task": "fr_en", "model": "tiny"}, EvalArgs).eval.size == 500


@pytest.mark.parametrize("verb", list(VERB_ARGS))
def test_a_verb_accepts_exactly_the_fields_of_its_dataclass(verb):
    args = VERB_ARGS[verb]
    assert verb in VERBS  # the CLI runs it
    keys = all_keys(args)
    assert {key.split(".")[0] for key in keys} == {f.name for f in dataclasses.fields(args)}
    config = resolve(MINIMAL.get(verb, {}), args)
    assert list(config.to_flat()) == keys  # every key resolves, in --help's order
    assert resolve(config.to_flat(), args).to_flat() == config.to_flat()
    others = {key for other in VERB_ARGS.values() for key in all_keys(other)} - set(keys)
    for key in sorted(others):
        with pytest.raises(ConfigError, match=f"'{key}' does not apply here"):
            resolve(MINIMAL.get(verb, {}) | {key: "1"}, args)


@pytest.mark.parametrize("verb", [v for v in VERB_ARGS if v != "run"])
def test_resolved_configs_are_frozen(verb):
    config = resolve(MINIMAL.get(verb, {}), VERB_ARGS[verb])
    name = dataclasses.fields(config)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, name, getattr(config, name))


def test_an_empty_output_dir_is_the_pattern_help_shows():
    variance = resolve({}, VarianceArgs)
    assert variance.output_dir == ""
    help_text = {row[0]: row[3] for row in help_rows(VarianceArgs)}["output_dir"]
    assert help_text == "output directory (empty = runs/variance-<time>)"
    assert re.fullmatch(r"runs/variance-\d{8}-\d{6}", str(output_path(variance)))
    tiny = resolve({"task": "arith"}, BuildTinyArgs)
    assert str(output_path(tiny, task=tiny.task.name)) == "tiny-arith"
    given = resolve({"output_dir": "elsewhere"}, VarianceArgs)
    assert str(output_path(given)) == "elsewhere"
    report = resolve({"experiment": "fr_en"}, ReportArgs)
    assert (report.comparison, report.experiment) == ("", "fr_en")
    with pytest.raises(ConfigError, match="give exactly one of comparison=<id> or experiment="):
        resolve({}, ReportArgs)
