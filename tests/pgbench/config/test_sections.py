import dataclasses
import typing

import pytest

from pgbench.config import sections
from pgbench.config.sections import SECTIONS, Knobs, SlurmConfig
from pgbench.config.verbs import VERB_ARGS, help_rows, resolve
from pgbench.errors import ConfigError


def test_sections_are_named_by_their_classes_and_frozen():
    assert list(SECTIONS)[:6] == ["trainer", "rollout", "engine", "kl", "loss", "lora"]
    assert SECTIONS["sweep"].__name__ == "SweepConfig" and len(SECTIONS) == 16
    for cls in (Knobs, *SECTIONS.values()):
        for field in dataclasses.fields(cls):
            assert field.metadata["help"], f"{cls.__name__}.{field.name} has no help"
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(cls(), dataclasses.fields(cls)[0].name, None)


def test_sweep_and_suite_share_the_launch_knobs():
    launch = ["workers", "storage", "heartbeat_s", "launcher", "wait"]
    for head in ("sweep", "suite"):
        assert [f.name for f in dataclasses.fields(SECTIONS[head])][:5] == launch


def test_slurm_extra_becomes_sbatch_flags():
    flags = SlurmConfig(extra="--account=rl --qos=high --exclusive").sbatch_flags()
    assert flags == {"account": "rl", "qos": "high", "exclusive": True}
    assert SlurmConfig().sbatch_flags() == {}
    with pytest.raises(ConfigError, match="slurm.extra: '-q' is not an sbatch flag"):
        SlurmConfig(extra="--account=rl -q").sbatch_flags()


def test_top_level_knobs_are_defined_once():
    for knob in dataclasses.fields(Knobs):
        name = knob.name
        verbs = [a for a in VERB_ARGS.values() if name in {f.name for f in dataclasses.fields(a)}]
        assert verbs, f"{name} is used by no verb"
        types = {typing.get_type_hints(a)[name] for a in verbs}
        # arith changes no top-level default (fr_en's default model is smollm2)
        rows = {row[:3] for a in verbs for row in help_rows(a, "arith") if row[0] == name}
        assert types == {typing.get_type_hints(Knobs)[name]} and len(rows) == 1, name
        assert rows.pop()[2] == repr(knob.default)
        texts = {row[3] for a in verbs for row in help_rows(a) if row[0] == name}
        if name != "output_dir":  # each verb adds where it writes by default
            assert texts == {knob.metadata["help"]}, name


def test_reward_defaults_restated_without_torch_agree_with_their_module():
    # sections restates them so that --help needs no torch; the module that uses them must agree
    from pgbench.tasks import model_rewards

    assert sections.DEFAULT_COMET == model_rewards.DEFAULT_COMET
    assert sections.DEFAULT_BATCH_SIZE == model_rewards.DEFAULT_BATCH_SIZE


def test_each_verb_class_types_its_sections_with_their_classes():
    for verb, args in VERB_ARGS.items():
        hints = typing.get_type_hints(args)
        config = resolve({"comparison": "c"} if verb == "report" else {}, args)
        for field in dataclasses.fields(args):
            if field.name in SECTIONS:
                assert hints[field.name] is SECTIONS[field.name], (verb, field.name)
                assert isinstance(getattr(config, field.name), SECTIONS[field.name])
            elif field.name not in ("task", "estimator"):
                assert hints[field.name] == typing.get_type_hints(Knobs)[field.name]
