import shutil

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from pgbench.cli import main
from pgbench.errors import ConfigError
from pgbench.reports import findings
from pgbench.reports.stats import LEADERBOARD, PAIRS
from pgbench.runs.suite import open_storage, plan_suite, queue_cells, run_cell, run_suite


def fast(run_overrides, tmp_path) -> dict[str, str]:
    values = run_overrides | {"trainer.steps": "2", "eval.every": "0", "checkpoint.every": "0"}
    return values | {"output_dir": str(tmp_path / "suite")}


def suite_runs(uri: str, suite_id: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("fr_en")
    return client.search_runs([experiment.experiment_id], f"tags.`pgbench.suite` = '{suite_id}'")


def test_inline_suite_writes_tables_and_resumes_without_rerunning(run_overrides, tmp_path, capsys):
    values = fast(run_overrides, tmp_path)
    args = [f"{k}={v}" for k, v in values.items()]
    args += ["tasks=fr_en", "estimators=reinforce,rloo", "seeds=2", "suite.id=t1"]
    assert main(["suite", *args]) == 0
    assert "suite t1: 4 runs finished" in capsys.readouterr().out
    out = tmp_path / "suite"
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs.columns) == ["task", "estimator", "seed", "metric", "value", "run_id"]
    assert sorted(zip(runs.estimator, runs.seed, strict=True)) == [
        ("reinforce", 0),
        ("reinforce", 1),
        ("rloo", 0),
        ("rloo", 1),
    ]
    assert set(runs.metric) == {"chrf"}
    board = pd.read_csv(out / "leaderboard.csv")
    # the statistics, then each column's fitted scaling curve (NaN: 2 steps do not fit one)
    assert list(board.columns) == [*LEADERBOARD, "asymptote", "efficiency", "c_mid"]
    scaling = pd.read_csv(out / "scaling.csv")
    assert not scaling.identified.any() and set(scaling.estimator) == {"reinforce", "rloo"}
    # `all` rows appear only where some run beat the starting policy (2 steps may not)
    assert set(board[board.task == "fr_en"].estimator) == {"reinforce", "rloo"}
    assert list(pd.read_csv(out / "pairs.csv").columns) == PAIRS
    assert "## Leaderboard" in (out / "suite.md").read_text()
    tagged = suite_runs(values["tracking.uri"], "t1")
    assert len(tagged) == 4
    assert {r.info.run_id for r in tagged} == set(runs.run_id)
    assert {r.data.tags["pgbench.estimator"] for r in tagged} == {"reinforce", "rloo"}
    assert all(r.info.status == "FINISHED" for r in tagged)
    client = MlflowClient(values["tracking.uri"])
    parent = client.search_runs(
        [client.get_experiment_by_name("pgbench-suites").experiment_id],
        "tags.`pgbench.suite_of` = 't1'",
    )
    assert len(parent) == 1
    artifacts = {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert {"runs.csv", "leaderboard.csv", "pairs.csv", "suite.md"} <= artifacts

    # the same command again: every cell is finished, nothing is trained; with a proxy
    # suite (here a copy of this one), the report compares each pair's verdict with it
    summaries = sorted(out.glob("*-s*/summary.json"))
    mtimes = [p.stat().st_mtime_ns for p in summaries]
    proxy = tmp_path / "proxy"
    proxy.mkdir()
    for name in ("runs.csv", "pairs.csv"):
        shutil.copy(out / name, proxy / name)
    assert main(["suite", *args, f"suite.proxy={proxy}"]) == 0
    transfer = pd.read_csv(out / "transfer.csv")
    assert transfer.pair.tolist() == ["reinforce vs rloo"] and transfer.agree.all()
    assert f"## Transfer from the proxy suite ({proxy})" in (out / "suite.md").read_text()
    assert "0 to run" in capsys.readouterr().out
    assert len(suite_runs(values["tracking.uri"], "t1")) == 4
    assert [p.stat().st_mtime_ns for p in summaries] == mtimes
    assert pd.read_csv(out / "runs.csv").equals(runs)


def test_two_workers_on_the_journal_run_every_cell_once(run_overrides, tmp_path):
    values = fast(run_overrides, tmp_path) | {
        "tasks": "fr_en",
        "estimators": "reinforce,rloo",
        "seeds": "2",
        "suite.id": "t2",
        "suite.workers": "2",
        "threads": "1",
    }
    outcome = run_suite(plan_suite(values))
    assert outcome["runs"] == 4 and not outcome["missing"]
    tagged = suite_runs(values["tracking.uri"], "t2")
    names = sorted((r.data.tags["pgbench.estimator"], r.data.tags["pgbench.seed"]) for r in tagged)
    assert names == [("reinforce", "0"), ("reinforce", "1"), ("rloo", "0"), ("rloo", "1")]


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
    # arith: 12 columns x 4 lr x 2 tuning seeds, then 10 seeds at defaults; fr_en untuned
    tuning = [c for c in plan.cells if c.tuning]
    assert len(tuning) == 12 * 4 * 2 and {c.task for c in tuning} == {"arith"}
    assert {c.seed for c in tuning} == {100, 101} and not any(c.values["eval.test"] for c in tuning)
    assert {c.values["trainer.lr"] for c in tuning} == {3e-5, 1e-4, 3e-4, 1e-3}
    assert plan.id == "cpu" and len(plan.cells) == 96 + (12 + 6) * 10 + 2  # + a variance cell each
    variance = [c for c in plan.cells if c.estimator == "variance"]
    assert [c.task for c in variance] == ["arith", "fr_en"]
    assert variance[0].values["estimators"] == "reinforce,rloo,grpo,reinforce_pp,ppo"
    # a variance cell holds the keys of `pgbench variance`: no eval.*, no kl.*
    assert variance[1].values["trainer.steps"] == 75 and "eval.every" not in variance[1].values
    assert {c.estimator for c in plan.cells if c.task == "fr_en"} == columns
    assert {c.estimator for c in plan.cells if c.task == "arith"} == columns | zoo
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
    assert len(plan_suite({"suite": "gpu"}).cells) == 3 * 5 * 10


def test_a_variant_needs_an_estimator(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[suite]\ntasks = ["arith"]\n[variant.mine]\n"kl.estimator" = "k3"\n')
    with pytest.raises(ConfigError, match=r"\[variant.mine\] needs estimator"):
        plan_suite({"suite": str(path)})


def test_a_killed_suite_requeues_its_running_cell(tmp_path):
    # no training: a trial left RUNNING in the local journal is a killed suite's cell
    plan = plan_suite(
        {"tasks": "fr_en", "estimators": "rloo", "seeds": "2", "output_dir": str(tmp_path)},
    )
    study = optuna.create_study(study_name=f"suite-{plan.id}", storage=open_storage(plan))
    assert queue_cells(plan, study) == 2
    running = study.ask()  # pops cell 0 from the queue, as a worker does
    assert running.suggest_int("cell", 0, 1) == 0
    assert queue_cells(plan, study) == 2  # cell 0 queued again, cell 1 still waiting
    assert study.trials[0].state == TrialState.FAIL
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.system_attrs["fixed_params"]["cell"] for t in waiting) == [0, 1]


def test_a_cell_killed_mid_run_resumes_in_its_mlflow_run(run_overrides, tmp_path):
    values = fast(run_overrides, tmp_path) | {"tasks": "fr_en", "estimators": "rloo"}
    plan = plan_suite(values | {"seeds": "1", "suite.id": "t3"})
    first = run_cell(plan, plan.cells[0])
    summary = tmp_path / "suite" / "fr_en-rloo-s0" / "summary.json"
    summary.unlink()  # as if killed after the last checkpoint, before summary.json
    again = run_cell(plan, plan.cells[0])
    assert again["run_id"] == first["run_id"] and summary.is_file()
    assert len(suite_runs(values["tracking.uri"], "t3")) == 1


def test_a_killed_workers_cell_is_rerun_by_another_on_postgresql(
    run_overrides, postgres_url, tmp_path, kill_worker, retry_of
):
    values = fast(run_overrides, tmp_path) | {
        "tasks": "fr_en",
        "estimators": "rloo",
        "seeds": "2",
        "suite.id": "pg",
        "suite.storage": postgres_url,
        "suite.heartbeat_s": "1",
    }
    slow = values | {"trainer.steps": "400", "output_dir": str(tmp_path / "first")}
    plan = plan_suite(values | {"output_dir": str(tmp_path / "second")})
    killed = kill_worker(
        ["suite", *(f"{k}={v}" for k, v in slow.items())],
        "suite-pg",
        lambda: open_storage(plan),
        # a cell with its run.json is inside its objective, so it has a heartbeat
        lambda t: (tmp_path / "first" / t.user_attrs["cell"] / "run.json").is_file(),
    )

    result = run_suite(plan)  # "another machine": its own run directories, the same study
    assert result["runs"] == 2 and result["missing"] == []
    study = optuna.load_study(study_name="suite-pg", storage=open_storage(plan))
    killed, retry = retry_of(study, killed.number)
    assert retry.user_attrs["cell"] == killed.user_attrs["cell"]
    runs = pd.read_csv(tmp_path / "second" / "runs.csv")
    assert sorted(runs.seed) == [0, 1]


def test_variants_variance_and_findings_in_the_report(run_overrides, tmp_path):
    protocol = tmp_path / "mine.toml"
    protocol.write_text(
        '[suite]\ntasks = ["fr_en"]\nestimators = ["reinforce", "rloo", "grpo"]\nseeds = 2\n'
        'variance = true\n[variant.rloo_k3]\nestimator = "rloo"\n"kl.estimator" = "k3"\n'
        '"kl.placement" = "loss"\n'
    )
    values = fast(run_overrides, tmp_path) | {
        "suite": str(protocol),
        "variance.batches": "2",
        "variance.reference_batches": "1",
    }
    plan = plan_suite(values)
    result = run_suite(plan)
    assert result["runs"] == 8 and result["missing"] == []
    out = tmp_path / "suite"
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs.estimator.unique()) == ["grpo", "reinforce", "rloo", "rloo_k3"]
    tagged = suite_runs(values["tracking.uri"], "mine")
    k3 = [r for r in tagged if r.data.tags["pgbench.estimator"] == "rloo_k3"]
    assert len(k3) == 2 and k3[0].data.params["kl.estimator"] == "k3"
    assert (out / "fr_en-variance-s0" / "variance.csv").is_file()
    found = pd.read_csv(out / "findings.csv")
    assert set(zip(found.a, found.b, strict=True)) == {
        ("rloo", "reinforce"),
        ("rloo", "rloo_k3"),
        ("total_variance", "auc"),
    }
    assert set(found.verdict) <= {"supported", "contradicted", "inconclusive"}
    auc = pd.read_csv(out / "leaderboard_auc.csv")
    assert set(auc[auc.task == "fr_en"].estimator) == set(runs.estimator)
    text = (out / "suite.md").read_text()
    assert "## Findings" in text and "![leaderboard](leaderboard.png)" in text
    for name in ("leaderboard.png", "pairs.png", "fr_en_valid_chrf.png"):
        assert (out / name).stat().st_size > 0
    # the profile needs a run that beat the starting policy (2 steps may not)
    board = pd.read_csv(out / "leaderboard.csv")
    assert (out / "performance_profile.png").is_file() == (board.task == "all").any()
    client = MlflowClient(values["tracking.uri"])
    artifacts = {a.path for a in client.list_artifacts(result["parent_run_id"])}
    assert {
        "findings.csv",
        "suite.html",
        "pairs.png",
        "leaderboard_auc.csv",
        "pairs_auc.csv",
    } <= artifacts


def test_shipped_off_policy_protocol_resolves_every_cell():
    plan = plan_suite({"suite": "cpu_offpolicy"})
    assert plan.id == "cpu_offpolicy" and len(plan.cells) == 23 * 10
    by_column = {c.estimator: c.values for c in plan.cells if c.seed == 0}
    assert {v["estimator"] for v in by_column.values()} == {"grpo"}
    assert {v["trainer.minibatches"] for v in by_column.values()} == {2}
    staleness = {name: v.get("rollout.staleness", 0) for name, v in by_column.items()}
    assert sorted(n for n, k in staleness.items() if k == 0) == [
        "cispo",
        "clip_higher",
        "gmpo",
        "grpo",
        "gspo",
        "lite_ppo",
        "sapo",
    ]
    for k in (2, 4):
        columns = sorted(n.removeprefix(f"stale{k}_") for n, s in staleness.items() if s == k)
        assert columns == ["cispo", "clip_higher", "gmpo", "gspo", "mis", "ppo_clip", "sapo", "tis"]
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
    assert len(plan.all_cells()) == 9 * 3 + 9 * 3 * 6  # each point's test seeds 0-5, if chosen
    lrs = {c.values["trainer.lr"] for c in tuning}
    assert lrs == {1e-4, 3e-4, 1e-3}
    cell = tuning[0].values
    assert (cell["model"], cell["lora.r"], cell["trainer.steps"]) == ("smollm2", 8, 30)
    assert (cell["trainer.prompts_per_step"], cell["rollout.samples_per_prompt"]) == (4, 4)
