import pytest
from mlflow import MlflowClient

from pgbench.errors import ConfigError
from pgbench.reports.collect import find_runs, history_frame, runs_frame, start_score

BUDGET = {"task": "fr_en", "trainer.steps": "5", "model": "tiny"}


@pytest.fixture
def store(client, log_run) -> MlflowClient:
    """The runs of comparisons c1 and c2, a sweep parent and a failed run."""
    experiment = client.create_experiment("fr_en")

    def run(comparison, params, status="FINISHED", chrf=()):
        tags = {"pgbench.comparison": comparison}
        log_run(experiment, params, {"eval/chrf": list(chrf)}, tags, status)

    run("c1", BUDGET | {"estimator": "rloo", "seed": "1"}, chrf=[(0, 40.0), (10, 45.0)])
    run("c1", BUDGET | {"estimator": "grpo", "seed": "0"}, chrf=[(10, 44.0)])
    run("c1", {"sweep.n_trials": "3"})  # a sweep parent: not a training run
    run("c1", BUDGET | {"estimator": "rloo", "seed": "0"}, status="FAILED")
    run("c2", BUDGET | {"estimator": "rloo", "seed": "0", "trainer.steps": "9"})
    return client


def test_finished_training_runs_of_a_comparison_or_an_experiment(store):
    runs = runs_frame(find_runs(store, comparison="c1"))
    assert runs[["estimator", "seed"]].values.tolist() == [["grpo", 0], ["rloo", 1]]
    assert runs["eval/chrf"].tolist() == [44.0, 45.0]  # the last value logged
    assert len(find_runs(store, experiment="fr_en")) == 3
    with pytest.raises(ConfigError, match="no finished pgbench runs found for comparison=c3"):
        find_runs(store, comparison="c3")
    with pytest.raises(ConfigError, match="experiment=de_en does not exist"):
        find_runs(store, experiment="de_en")


def test_runs_of_different_budgets_are_refused(store):
    with pytest.raises(ConfigError, match=r"the runs differ in trainer.steps \(5, 9\)"):
        runs_frame(find_runs(store, experiment="fr_en"))


def test_histories_and_the_start_score(store):
    runs = runs_frame(find_runs(store, comparison="c1"))
    history = history_frame(store, runs, ["eval/chrf"])
    assert history[["estimator", "step", "value"]].values.tolist() == [
        ["grpo", 10, 44.0],
        ["rloo", 0, 40.0],
        ["rloo", 10, 45.0],
    ]
    assert start_score(store, runs, "eval/chrf") == 40.0  # only rloo's history has a start
    assert start_score(store, runs.iloc[:1], "eval/chrf") is None
