import shutil
import threading
from dataclasses import replace

import optuna
import pandas as pd
from mlflow import MlflowClient
from optuna.trial import TrialState

from pgbench.cli import main
from pgbench.reports.stats import LEADERBOARD, PAIRS
from pgbench.runs import suite
from pgbench.runs.queue import queue_cells
from pgbench.runs.suite import open_storage, plan_suite, run_cell, run_suite


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
    # one verdict for the one pair, judged against fr_en's default margin; 2 seeds decide little
    judged = pd.read_csv(out / "verdicts.csv")
    assert list(judged.columns) == [
        *("task", "a", "b", "verdict", "effect", "ci_low", "ci_high", "margin", "n_seeds"),
        *("p_diff", "p_equiv"),
    ]
    assert len(judged) == 1 and judged.margin[0] == 1.0 and judged.n_seeds[0] == 2
    assert judged.verdict[0] in ("A better", "B better", "equivalent", "undecided")
    assert (out / "verdicts.png").is_file()
    assert "## Verdicts" in (out / "suite.md").read_text()
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


def test_a_second_command_on_a_running_suite_stops_and_no_step_is_logged_twice(
    run_overrides, tmp_path, monkeypatch, capsys
):
    # the README's "rerun the same command to continue", typed while the first still runs
    values = fast(run_overrides, tmp_path) | {
        "tasks": "fr_en",
        "estimators": "rloo",
        "seeds": "1",
        "suite.id": "twice",
    }
    training, refused = threading.Event(), threading.Event()
    real_run_cell = suite.run_cell

    def run_cell_after_the_second_command(plan, cell):
        training.set()  # the first command trains its first cell now...
        refused.wait(60)  # ...until the second command has been answered
        return real_run_cell(plan, cell)

    monkeypatch.setattr(suite, "run_cell", run_cell_after_the_second_command)
    outcome = {}
    first = threading.Thread(target=lambda: outcome.update(run_suite(plan_suite(values))))
    first.start()
    try:
        assert training.wait(60)
        assert main(["suite", *(f"{k}={v}" for k, v in values.items())]) == 2
        error = capsys.readouterr().err.strip()
    finally:
        refused.set()
        first.join()
    assert error.startswith("pgbench suite: error: suite twice is already running: another")
    assert "\n" not in error
    assert outcome["runs"] == 1 and not outcome["missing"]
    plan = plan_suite(values)
    study = optuna.load_study(study_name="suite-twice", storage=open_storage(plan))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]  # not failed, not re-queued
    (run,) = suite_runs(values["tracking.uri"], "twice")  # one MLflow run, one writer:
    history = MlflowClient(values["tracking.uri"]).get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2]  # each of the 2 steps logged once


def test_a_cell_that_always_fails_stops_after_max_attempts_and_is_reported(
    run_overrides, tmp_path, monkeypatch, capsys
):
    values = fast(run_overrides, tmp_path) | {"tasks": "fr_en", "estimators": "rloo"}
    plan = replace(plan_suite(values | {"seeds": "1", "suite.id": "bad"}), max_attempts=2)
    calls = []

    def broken(plan, cell):
        calls.append(cell.name)
        raise RuntimeError("the reward model is gone\n(line two)")

    monkeypatch.setattr(suite, "run_cell", broken)
    first = run_suite(plan)
    assert first["missing"] == ["fr_en-rloo-s0"] and not first["failed"]  # retried next time
    second = run_suite(plan)
    error = "RuntimeError: the reward model is gone\n(line two)"
    assert second["failed"] == {"fr_en-rloo-s0": error}
    assert second["missing"] == []  # given up: not "missing", which a rerun would retry
    assert run_suite(plan)["failed"] == second["failed"]  # a third command does not retry it
    assert calls == ["fr_en-rloo-s0"] * 2
    out = capsys.readouterr().out
    assert "suite bad: fr_en-rloo-s0 failed 2 attempts; last error: RuntimeError: the" in out
    assert "0 to run now" in out
    report = (tmp_path / "suite" / "suite.md").read_text()
    assert "Failed 2 times, not retried (raise suite.max_attempts to retry): fr_en-rloo-s0." in (
        report
    )
    assert "## Failed cells" in report
    assert "| fr_en-rloo-s0 | RuntimeError: the reward model is gone (line two) |" in report
