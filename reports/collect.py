"""MLflow -> tidy pandas: the data of a report, kept apart from how it is rendered.

`runs_frame` has one row per run (params, final metrics, tags); `history_frame` has one row
per run x step x metric with the value and the run's estimator and seed.
"""

from __future__ import annotations

import pandas as pd
from mlflow import MlflowClient

from pgbench.errors import ConfigError

# Settings that must agree across the runs of one report (else it compares unlike things).
SAME = (
    "task",
    "task.reward",
    "model",
    "trainer.steps",
    "trainer.prompts_per_step",
    "rollout.samples_per_prompt",
    "rollout.max_new_tokens",
    "task.test_size",
)


def find_runs(client: MlflowClient, comparison: str = "", experiment: str = "") -> list:
    """Finished training runs of one comparison id, or of one experiment."""
    if comparison:
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, f"tags.`pgbench.comparison` = '{comparison}'")
        what = f"comparison={comparison}"
    else:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise ConfigError(f"experiment={experiment} does not exist in this tracking store")
        runs = client.search_runs([found.experiment_id], "attributes.status = 'FINISHED'")
        what = f"experiment={experiment}"
    # training runs only: sweep parents, variance and report runs have no estimator param
    runs = [
        r
        for r in runs
        if r.info.status == "FINISHED" and {"estimator", "trainer.steps"} <= set(r.data.params)
    ]
    if not runs:
        raise ConfigError(f"no finished pgbench runs found for {what}")
    return runs


def runs_frame(runs: list) -> pd.DataFrame:
    """One row per run: run_id, estimator, seed, the SAME settings and final metrics."""
    rows = []
    for run in runs:
        params = run.data.params
        row = {
            "run_id": run.info.run_id,
            "estimator": params["estimator"],
            "seed": int(params["seed"]),
        }
        row |= {key: params.get(key) for key in SAME}
        row |= dict(run.data.metrics)
        rows.append(row)
    frame = pd.DataFrame(rows).sort_values(["estimator", "seed"]).reset_index(drop=True)
    for key in SAME:
        values = frame[key].dropna().unique()
        if len(values) > 1:
            raise ConfigError(
                f"the runs differ in {key} ({', '.join(map(str, values))}); "
                "report runs of one task and one budget together"
            )
    return frame


def history_frame(client: MlflowClient, runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Tidy metric histories: run_id, estimator, seed, metric, step, value."""
    rows = []
    for run in runs.itertuples():
        for metric in metrics:
            for point in client.get_metric_history(run.run_id, metric):
                rows.append(
                    {
                        "run_id": run.run_id,
                        "estimator": run.estimator,
                        "seed": run.seed,
                        "metric": metric,
                        "step": point.step,
                        "value": point.value,
                    }
                )
    return pd.DataFrame(rows, columns=["run_id", "estimator", "seed", "metric", "step", "value"])


def start_score(client: MlflowClient, runs: pd.DataFrame, metric: str) -> float | None:
    """The starting policy's `metric`: the mean over runs of its first logged value.

    Training runs score the test split before the first step and again at the end, so a run
    whose `metric` history has two or more points holds the starting score at its first step.
    None when no run has such a history.
    """
    history = history_frame(client, runs, [metric]).sort_values("step")
    per_run = history.groupby("run_id").value
    first = per_run.first()[per_run.size() >= 2]
    return float(first.mean()) if len(first) else None
