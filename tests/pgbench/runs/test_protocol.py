"""A suite's plan (pgbench.runs.protocol): protocol files read, every cell resolved, no run."""

from collections import Counter

import pytest

from pgbench.errors import ConfigError
from pgbench.reports import findings
from pgbench.runs.protocol import plan_suite
from tests.pgbench.runs.test_suite_tuning import protocol


def test_protocol_file_is_read_and_a_bad_key_names_the_file(run_overrides, tmp_path):
    protocol = tmp_path / "mine.toml"
    protocol.write_text(
        '[suite]\ntasks = ["fr_en"]\nestimators = ["rloo", "grpo"]\nseeds = 3\n'
        '[overrides]\n"trainer.steps" = 7\n[task.fr_en]\n"eval.every" = 5\nlimit = 900\n'
    )
    plan = plan_suite({"suite": str(protocol), "output_dir": str(tmp_path / "o")})
    assert plan.id == "mine"
    with pytest.raises(ConfigError, match=r"suite.proxy=.*nowhere: no runs.csv there; run the"):
        plan_suite({"suite": str(protocol), "suite.proxy": str(tmp_path / "nowhere")})
    assert [c.name for c in plan.cells][:2] == ["fr_en-rloo-s0", "fr_en-grpo-s0"]
    assert len(plan.cells) == 6
    cell = plan.cells[0].values
    assert (cell["trainer.steps"], cell["eval.every"], cell["task.limit"]) == (7, 5, 900)
    # the command line wins over the file
    plan = plan_suite({"suite": str(protocol), "trainer.steps": "3"})
    assert plan.cells[0].values["trainer.steps"] == 3

    protocol.write_text('[suite]\ntasks = ["fr_en"]\n[overrides]\n"trainer.stepz" = 7\n')
    with pytest.raises(ConfigError, match=f"^{protocol}: unknown key 'trainer.stepz'") as err:
        plan_suite({"suite": str(protocol)})
    assert "\n" not in str(err.value)
    protocol.write_text('[suite]\ntasks = ["fr_en"]\n[task.fr_en]\n"rollout.temperature" = -1\n')
    with pytest.raises(ConfigError, match=f"^{protocol} \\(cell fr_en-.*-s0\\): .*temperature"):
        plan_suite({"suite": str(protocol)})
    with pytest.raises(
        ConfigError, match="no such protocol; shipped: cpu, cpu_offpolicy, cpu_smollm2, gpu"
    ):
        plan_suite({"suite": "nope"})


def test_shipped_cpu_protocol_resolves_every_cell():
    plan = plan_suite({"suite": "cpu"})
    columns = {"reinforce", "rloo", "grpo", "reinforce_pp", "ppo", "rloo_k3", "variance"}
    zoo = {"grpo_seq", "dr_grpo", "reinforce_pp_baseline", "remax", "opo", "gpg"}
    zoo_2026 = {"maxrl", "grpo_passk", "otb", "gdpo", "luspo", "top_entropy", "rloo_k3_is"}
    # arith: 19 columns x 4 lr x 2 tuning seeds, then 10 seeds at defaults; fr_en untuned
    tuning = [c for c in plan.cells if c.tuning]
    assert len(tuning) == 19 * 4 * 2 and {c.task for c in tuning} == {"arith"}
    assert {c.seed for c in tuning} == {100, 101} and not any(c.values["eval.test"] for c in tuning)
    assert {c.values["trainer.lr"] for c in tuning} == {3e-5, 1e-4, 3e-4, 1e-3}
    assert plan.id == "cpu" and len(plan.cells) == 152 + (19 + 6) * 10 + 2  # + a variance cell each
    variance = [c for c in plan.cells if c.estimator == "variance"]
    assert [c.task for c in variance] == ["arith", "fr_en"]
    assert variance[0].values["estimators"] == "reinforce,rloo,grpo,reinforce_pp,ppo"
    # a variance cell holds the keys of `pgbench variance`: no eval.*, no kl.*
    assert variance[1].values["trainer.steps"] == 75 and "eval.every" not in variance[1].values
    assert {c.estimator for c in plan.cells if c.task == "fr_en"} == columns
    assert {c.estimator for c in plan.cells if c.task == "arith"} == columns | zoo | zoo_2026
    fr_en = [c.values for c in plan.cells if c.task == "fr_en" and c.estimator != "variance"]
    assert {
        (v["trainer.steps"], v["trainer.prompts_per_step"], v["eval.every"]) for v in fr_en
    } == {(75, 32, 25)}
    dr_grpo = next(c.values for c in plan.cells if c.estimator == "dr_grpo")
    assert (dr_grpo["estimator"], dr_grpo["estimator.scale"]) == ("grpo", "none")
    assert dr_grpo["loss.aggregation"] == "seq_mean_token_sum_norm"
    k3 = next(c.values for c in plan.cells if c.estimator == "rloo_k3" and not c.tuning)
    assert (k3["estimator"], k3["kl.estimator"], k3["kl.placement"]) == ("rloo", "k3", "loss")
    assert k3["output_dir"].endswith("arith-rloo_k3-s0")
    k3_is = next(c.values for c in plan.cells if c.estimator == "rloo_k3_is")
    assert (k3_is["kl.estimator"], k3_is["kl.placement"], k3_is["kl.is_correction"]) == (
        "k3",
        "loss",
        True,
    )
    luspo = next(c.values for c in plan.cells if c.estimator == "luspo")
    assert (luspo["loss.policy"], luspo["loss.aggregation"]) == ("luspo", "seq_mean_token_mean")
    gpu = plan_suite({"suite": "gpu"}).cells
    assert len(gpu) == 3 * 5 * 10
    keys = ("trainer.prompts_per_step", "rollout.samples_per_prompt", "trainer.lr", "eval.size")
    by_task = {c.task: tuple(c.values[k] for k in keys) for c in gpu if c.estimator == "rloo"}
    assert by_task == {
        "fr_en": (32, 8, 1e-4, 500),
        "arith": (8, 4, 1e-4, 500),
        "poet": (8, 4, 1e-4, 500),
    }


def test_a_variant_needs_an_estimator(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[suite]\ntasks = ["arith"]\n[variant.mine]\n"kl.estimator" = "k3"\n')
    with pytest.raises(ConfigError, match=r"\[variant.mine\] needs estimator"):
        plan_suite({"suite": str(path)})


def test_shipped_off_policy_protocol_resolves_every_cell():
    plan = plan_suite({"suite": "cpu_offpolicy"})
    assert plan.id == "cpu_offpolicy" and len(plan.cells) == (23 + 9) * 10
    by_column = {c.estimator: c.values for c in plan.cells if c.seed == 0}
    assert {v["estimator"] for v in by_column.values()} == {"grpo"}
    assert {v["trainer.minibatches"] for v in by_column.values()} == {2}
    staleness = {name: v.get("rollout.staleness", 0) for name, v in by_column.items()}
    zoo_2026 = ["dppo_tv", "m2po", "topr", "vespo"]  # issue 43: at staleness 0 and 4
    assert sorted(n for n, k in staleness.items() if k == 0) == sorted(
        ["cispo", "clip_higher", "gmpo", "grpo", "gspo", "lite_ppo", "sapo", *zoo_2026]
    )
    forms = ["cispo", "clip_higher", "gmpo", "gspo", "mis", "ppo_clip", "sapo", "tis"]
    for k, new in ((2, []), (4, [*zoo_2026, "icepop"])):
        columns = sorted(n.removeprefix(f"stale{k}_") for n, s in staleness.items() if s == k)
        assert columns == sorted(forms + new)
    assert by_column["stale4_icepop"]["loss.rollout_correction"] == "icepop"
    assert by_column["stale4_vespo"]["loss.policy"] == "vespo"
    assert by_column["stale4_tis"]["loss.rollout_correction"] == "tis"
    assert by_column["stale2_gspo"]["loss.ratio"] == "sequence"
    # every claim of the off-policy findings names columns of this protocol
    stale_claims = [c for c in findings.CLAIMS if c.a.startswith("stale")]
    assert len(stale_claims) == 10
    assert all({c.a, c.b} <= set(by_column) for c in stale_claims)


def test_shipped_smollm2_protocol_tunes_nine_columns_on_the_lora_recipe():
    plan = plan_suite({"suite": "cpu_smollm2"})
    tuning = [c for c in plan.cells if c.tuning]
    columns = {c.estimator for c in plan.cells}
    assert len(columns) == 9 and {"reinforce_pp_baseline", "remax", "cispo"} <= columns
    assert len(tuning) == 9 * 3 and {c.seed for c in tuning} == {100}
    assert plan.cells == tuning  # no runs at the shared defaults: 81 runs in all, not 135
    assert len(plan.all_cells()) == 9 * 3 + 9 * 3 * 6  # each point's test seeds 0-5, if chosen
    lrs = {c.values["trainer.lr"] for c in tuning}
    assert lrs == {1e-4, 3e-4, 1e-3}
    cell = tuning[0].values
    assert (cell["model"], cell["lora.r"], cell["trainer.steps"]) == ("smollm2", 8, 30)
    assert (cell["trainer.prompts_per_step"], cell["rollout.samples_per_prompt"]) == (4, 4)


def test_every_column_gets_the_same_tuning_budget():
    plan = plan_suite({"suite": "cpu"})
    tuning = Counter((c.task, c.estimator) for c in plan.cells if c.tuning)
    assert len(set(tuning.values())) == 1  # trials x seeds, the same for every column
    columns = {c.estimator for c in plan.cells if c.task == "arith" and c.estimator != "variance"}
    assert {e for t, e in tuning if t == "arith"} == columns


def test_a_space_gives_every_column_its_trials(tmp_path):
    tune = '[tune]\nspace = "builtin"\ntrials = 3\nseeds = [5]\n'
    plan = plan_suite({"suite": protocol(tmp_path, '"rloo", "ppo"', tune), "seeds": "2"})
    tuning = Counter(c.estimator for c in plan.cells if c.tuning)
    assert tuning == {"rloo": 3, "ppo": 3}
    ppo = plan.points[("fr_en", "ppo", 0)]
    assert {"trainer.lr", "loss.clip_low", "trainer.epochs"} <= set(ppo)


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ('[tune]\ngrid = {"trainer.lr" = [1e-4]}\nseeds = [1, 5]\n', r"seeds \[1\] are test"),
        (
            '[tune]\ngrid = {"estimator.vf_coef" = [0.1]}\nseeds = [5]\n',
            r"\[tune\] estimator.vf_coef of column rloo: .*vf_coef",
        ),
        ('[tune]\ngrid = {"trainer.lr" = [1e-4]}\nseeds = [5]\nobjective = "test"\n', "test split"),
        ('[tune]\ngrid = {"trainer.lr" = []}\nseeds = [5]\n', "tune.grid is empty"),
    ],
)
def test_bad_tuning_input_fails_at_plan_time_in_one_line(tmp_path, tune, message):
    with pytest.raises(ConfigError, match=message) as err:
        plan_suite({"suite": protocol(tmp_path, '"rloo"', tune)})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ('[variant."x/../../../tmp/pwn"]\nestimator = "rloo"\n', "is not a valid name"),
        ('[variant.".."]\nestimator = "rloo"\n', "is not a valid name"),
        ('[variant.grpo-t0]\nestimator = "rloo"\n', "would collide with generated cell names"),
        ('[variant.k3-s1]\nestimator = "rloo"\n', "would collide with generated cell names"),
        ("[variant.variance]\nestimator = 'rloo'\n", "would collide with generated cell names"),
        ("variant = {a = 1}\n", r"write each variant as a table, \[variant.NAME\]"),
        ('[suite]\nid = "../elsewhere"\n', r"suite.id='../elsewhere' is not a valid name"),
    ],
)
def test_unsafe_or_colliding_names_are_refused_before_any_work(tmp_path, table, error):
    protocol = tmp_path / "mine.toml"
    suite = 'tasks = ["fr_en"]\n' if "[suite]" in table else '[suite]\ntasks = ["fr_en"]\n'
    protocol.write_text(table + suite + 'estimators = ["grpo"]\n')
    with pytest.raises(ConfigError, match=error) as err:
        plan_suite({"suite": str(protocol), "output_dir": str(tmp_path / "out")})
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "tmp" / "pwn").exists()


def test_a_suite_id_from_the_command_line_is_checked_and_a_safe_one_is_kept(tmp_path):
    values = {"tasks": "fr_en", "estimators": "rloo", "output_dir": str(tmp_path / "o")}
    with pytest.raises(ConfigError, match=r"^suite.id='a/b' is not a valid name; use letters"):
        plan_suite(values | {"suite.id": "a/b"})
    assert plan_suite(values | {"suite.id": "v1.2_x-y"}).id == "v1.2_x-y"


def test_eval_test_false_is_refused_before_any_cell_trains(tmp_path):
    values = {"tasks": "fr_en", "estimators": "rloo", "output_dir": str(tmp_path / "o")}
    with pytest.raises(ConfigError, match=r"^eval.test=false: a suite ranks its runs by their"):
        plan_suite(values | {"eval.test": "false"})


def test_margins_come_from_stats_then_suite_margin_and_stay_out_of_the_suite_id(tmp_path):
    protocol = tmp_path / "mine.toml"
    protocol.write_text(
        '[suite]\ntasks = ["fr_en", "arith"]\nestimators = ["rloo"]\n[stats]\nmargin.arith = 1.5\n'
    )
    values = {"suite": str(protocol), "output_dir": str(tmp_path / "o")}
    assert plan_suite(values).margins == {"fr_en": 1.0, "arith": 1.5}  # fr_en: the default
    inline = {"tasks": "fr_en", "estimators": "rloo", "output_dir": str(tmp_path / "o")}
    judged = plan_suite(inline | {"suite.margin": "fr_en:0.5"})
    assert judged.margins == {"fr_en": 0.5}
    assert judged.id == plan_suite(inline).id  # the margin judges the runs, it does not make them
    bad = [
        ({"suite.margin": "poet:1"}, r"^margin.poet names no task of this suite \(fr_en\)$"),
        ({"suite.margin": "fr_en:-1"}, r"^margin.fr_en = -1.0 must be a number above 0$"),
        ({"suite.margin": "fr_en=1"}, r"^suite.margin item 'fr_en=1' must be task:number"),
    ]
    for override, error in bad:
        with pytest.raises(ConfigError, match=error):
            plan_suite(inline | override)
    protocol.write_text('[suite]\ntasks = ["fr_en"]\nestimators = ["rloo"]\n[stats]\nalpha = 0.1\n')
    with pytest.raises(ConfigError, match=r"\[stats\] takes margin.<task> = <number> only"):
        plan_suite(values)


def test_the_probes_protocol_plans_its_probes_and_property_columns(tmp_path):
    plan = plan_suite({"suite": "probes", "output_dir": str(tmp_path / "o")})
    assert len(plan.cells) == 21 * 10 and len(plan.probes) == 11
    assert plan.properties["rloo_offset5"] == ("rloo", "offset=5.0")
    assert plan.properties["grpo_permute"] == ("grpo", "permute=True")
    assert len(plan.properties) == 18  # every variant only transforms its estimator's reward
    probe = plan.probes[0]
    assert (probe.a, probe.b, probe.expect) == ("rloo_offset5", "reinforce_offset5", "a better")
    protocol = tmp_path / "mine.toml"
    table = '[probe.p]\ntask = "arith"\na = "rloo"\nb = "ppo"\nexpect = "a better"\nsource = "s"\n'
    protocol.write_text('[suite]\ntasks = ["arith"]\nestimators = ["rloo", "grpo"]\n' + table)
    with pytest.raises(ConfigError, match=r"\[probe.p\] names ppo, not a column of arith"):
        plan_suite({"suite": str(protocol), "output_dir": str(tmp_path / "o")})
