"""`pgbench sweep`: tune one estimator with Optuna; every trial is a nested MLflow run.

The objective is the task's metric (chrF for fr_en) on the valid split at the step budget,
maximised. Valid evaluations during training are reported to Optuna and a median pruner
stops trials that fall behind. The study is stored by name, so running the same command
again resumes it; `sweep.workers=N` runs N processes on this machine and
`sweep.storage=postgresql://...` lets workers on several machines share one study.

Storage (Optuna's FAQ: never share one SQLite file between parallel workers):
  - default, one worker: `<sweep dir>/optuna.db` (SQLite, with heartbeats);
  - default, several workers: `<sweep dir>/optuna.journal` (JournalFileBackend);
  - `sqlite:///`, `postgresql://`, `mysql://` URLs: RDB storage with heartbeats, so a trial
    whose worker died (even by SIGKILL) is marked FAIL and re-queued once per retry.
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
import shlex
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from tqdm.auto import tqdm

from pgbench.config.compose import output_path
from pgbench.config.urls import check_database, redact, redact_values
from pgbench.config.verbs import SweepArgs, resolve, run_values
from pgbench.errors import ConfigError
from pgbench.hardware import use_threads
from pgbench.sweeps import spaces
from pgbench.train.rundir import run_dir_busy
from pgbench.train.tracking import MLflowTracker, check_reachable, write_json

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
PARENT_ATTR = "mlflow_parent_run_id"
MAX_RETRY = 2  # re-runs of a trial whose worker stopped sending heartbeats


def study_name(config: SweepArgs) -> str:
    return config.sweep.name or f"{config.task.name}-{config.estimator.name}"


def sweep_dir(config: SweepArgs) -> Path:
    return output_path(config, study=study_name(config))


def storage_url(config: SweepArgs) -> str:
    """The storage the study lives in (see the module docstring for the defaults)."""
    if config.sweep.storage:
        return config.sweep.storage
    folder = sweep_dir(config).resolve()
    if config.sweep.workers > 1:
        return str(folder / "optuna.journal")
    return f"sqlite:///{folder / 'optuna.db'}"


def open_storage(config: SweepArgs) -> optuna.storages.BaseStorage:
    return connect(storage_url(config), config.sweep.heartbeat_s, "sweep.storage")


def connect(url: str, heartbeat_s: int, key: str) -> optuna.storages.BaseStorage:
    """The Optuna storage at `url` (a .journal path or a database URL given as `key`); a
    database is probed first, so a missing driver or server is a one-line error."""
    if url.endswith(".journal"):
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    if "://" not in url:
        raise ConfigError(
            f"{key}={redact(url)}: use sqlite:///<file>.db, postgresql://..., mysql://... "
            "or a <file>.journal path"
        )
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    check_database(key, url)
    try:
        return _database(url, heartbeat_s)
    except Exception as err:  # sqlalchemy raises many types for a bad URL or server
        reason = err.__cause__ or err  # optuna wraps the driver's error
        raise ConfigError(
            f"{key}={redact(url)}: cannot open ({type(reason).__name__}: "
            f"{redact(str(reason).strip().splitlines()[0])})"
        ) from None


class SteadyStorage(RDBStorage):
    """Optuna's RDB storage, whose heartbeats outlive a failed write and whose stale trials are
    failed only when no process holds their run directory.

    Optuna's heartbeat thread stops for good at the first exception of `record_heartbeat` (a
    restarted server, a dropped connection): here a failed beat is a warning, and the next beat
    tries again. A trial whose heartbeat is stale but whose run directory (user attr `run_dir`)
    is still locked (pgbench.train.rundir.run_dir_lock) has a live worker, e.g. a suspended SLURM
    job or one cut off from the database: it stays RUNNING and is not queued again.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as err:
            warnings.warn(
                f"heartbeat of trial {trial_id} not recorded ({type(err).__name__}); "
                "trying again at the next beat",
                stacklevel=1,
            )

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        return [
            t for t in stale if not run_dir_busy(self.get_trial(t).user_attrs.get("run_dir", ""))
        ]


@functools.cache
def _database(url: str, heartbeat_s: int) -> RDBStorage:
    """One RDBStorage per database and process: each holds a connection pool, and a caller
    that polls the study (a waiting launcher, a test) would otherwise open a new pool each time
    and exhaust the server's connections before the old ones are garbage collected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SteadyStorage(
            url,
            engine_kwargs={"pool_pre_ping": True},  # a restarted server's dead connections
            heartbeat_interval=heartbeat_s,
            grace_period=2 * heartbeat_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(MAX_RETRY),
        )


def load_space(config: SweepArgs) -> spaces.Space:
    """The search space, checked against the config keys before any work."""
    space = (
        spaces.load(config.sweep.space)
        if config.sweep.space
        else spaces.builtin(config.estimator.name)
    )
    base = run_values(config)
    for key, spec in space.items():
        probe = spec["choices"][0] if spec["type"] == "categorical" else spec["low"]
        try:
            resolve(base | {key: probe})
        except ConfigError as err:
            raise ConfigError(f"search space key {key}: {err}") from None
    return space


def _mark(tracker: MLflowTracker, state: str, reason: str, status: str) -> None:
    tags = {"pgbench.trial_state": state}
    if reason:
        tags["pgbench.fail_reason"] = reason[:5000]
    tracker.set_tags(tags)
    tracker.finish(status)


def make_objective(config: SweepArgs, space: spaces.Space, parent_run_id: str, label: str = ""):
    """The Optuna objective: train one configuration as a nested MLflow run; `label` names the
    worker (a SLURM job id) in each trial's user attrs."""
    from pgbench.train.trainer import train

    base, folder, metric = run_values(config), sweep_dir(config), config.task.metric
    name = study_name(config)

    def objective(trial: optuna.Trial) -> float:
        params = spaces.suggest(trial, space)
        run_dir = folder / f"trial-{trial.number:04d}"
        trial_config = resolve(base | params | {"output_dir": str(run_dir)})
        tracker = MLflowTracker(
            config.tracking.uri,
            config.mlflow_experiment,
            run_name=f"{name}-trial-{trial.number}",
            tags={
                "mlflow.parentRunId": parent_run_id,
                "pgbench.sweep": name,
                "pgbench.trial": str(trial.number),
            },
        )
        trial.set_user_attr("mlflow_run_id", tracker.run_id)
        if label:
            trial.set_user_attr("worker", label)

        def report(step: int, metrics: dict[str, float]) -> None:
            trial.report(metrics[metric], step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"valid {metric} {metrics[metric]:.2f} at step {step}")

        try:
            summary = train(trial_config, tracker, on_eval=report)
        except optuna.TrialPruned as err:
            _mark(tracker, "PRUNED", f"pruned: {err}", "KILLED")
            raise
        except Exception as err:
            _mark(tracker, "FAIL", f"{type(err).__name__}: {err}", "FAILED")
            raise
        value = summary["eval_valid"][metric]
        if not math.isfinite(value):
            _mark(tracker, "FAIL", f"objective {metric} is {value}", "FAILED")
        else:
            _mark(tracker, "COMPLETE", "", "FINISHED")
        return value

    return objective


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def work(values: dict[str, Any], worker: int, progress: bool = False, label: str = "") -> None:
    """One worker (`worker` offsets its sampler's seed; `label` names it in its trials): run
    trials until the study has `sweep.n_trials` finished ones."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar reports trials
    config = resolve(values, SweepArgs)
    use_threads(config.threads, config.sweep.workers)  # the workers share this machine's cores
    study = optuna.load_study(
        study_name=study_name(config),
        storage=open_storage(config),
        sampler=optuna.samplers.TPESampler(seed=config.seed + worker),
        pruner=_pruner(config),
    )
    objective = make_objective(config, load_space(config), study.user_attrs[PARENT_ATTR], label)
    callbacks = [optuna.study.MaxTrialsCallback(config.sweep.n_trials, states=FINISHED)]
    if progress:
        bar = tqdm(
            total=config.sweep.n_trials, initial=_finished(study), desc="trials", unit="trial"
        )

        def update(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            bar.n = min(_finished(study), config.sweep.n_trials)
            bar.refresh()

        callbacks.append(update)
    if _finished(study) < config.sweep.n_trials:
        study.optimize(objective, callbacks=callbacks, catch=(Exception,), gc_after_trial=True)
    if progress:
        bar.close()


def _pruner(config: SweepArgs) -> optuna.pruners.BasePruner:
    if config.sweep.pruner == "none":
        return optuna.pruners.NopPruner()
    # step 0 is the untrained policy, the same for every trial: never prune on it
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)


def open_study(config: SweepArgs) -> tuple[optuna.Study, MLflowTracker]:
    """Check tracking and the search space, create (or load) the study and its parent run."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar reports trials
    check_reachable(config.tracking.uri)
    load_space(config)
    name = study_name(config)
    sweep_dir(config).mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=name, storage=open_storage(config), direction="maximize", load_if_exists=True
    )
    parent_id = study.user_attrs.get(PARENT_ATTR, "")
    parent = MLflowTracker(
        config.tracking.uri,
        config.mlflow_experiment,
        run_id=parent_id,
        run_name=f"sweep-{name}",
        tags={"pgbench.sweep": name},
    )
    if not parent_id:
        study.set_user_attr(PARENT_ATTR, parent.run_id)
        study.set_user_attr("metric", f"valid {config.task.metric}")
        parent.log_params(
            config.to_flat() | {"sweep.metric": config.task.metric, "sweep.direction": "maximize"}
        )
    return study, parent


def run_sweep(config: SweepArgs) -> dict[str, Any]:
    """Create or resume the study, run the workers, log the outcome; returns the best trial."""
    _, parent = open_study(config)
    values = config.to_flat()
    context = multiprocessing.get_context("spawn")
    helpers = [
        context.Process(target=work, args=(values, worker))
        for worker in range(1, config.sweep.workers)
    ]
    for process in helpers:
        process.start()
    try:
        work(values, 0, progress=True)
    finally:
        for process in helpers:
            process.join()
    return conclude(config, load(config), parent)


def load(config: SweepArgs) -> optuna.Study:
    """The study as the workers left it, freshly read from its storage."""
    return optuna.load_study(study_name=study_name(config), storage=open_storage(config))


def conclude(config: SweepArgs, study: optuna.Study, parent: MLflowTracker) -> dict[str, Any]:
    """Log trial counts and the best trial to the parent run; write best.json."""
    _close_dead_trials(study, parent)
    counts = {state.name: len(study.get_trials(states=(state,))) for state in FINISHED}
    result: dict[str, Any] = {
        "study": study.study_name,
        "storage": storage_url(config),
        "trials": counts,
        "parent_run_id": parent.run_id,
    }
    parent.log_metrics({f"sweep/{state.lower()}_trials": n for state, n in counts.items()}, 0)
    if counts["COMPLETE"]:
        best = study.best_trial
        command = ["pgbench", "run"] + [
            f"{k}={v}" for k, v in (_overrides(config) | best.params).items()
        ]
        result |= {
            "best_value": best.value,
            "best_params": best.params,
            "best_trial": best.number,
            "command": shlex.join(command),
        }
        parent.log_metrics({"sweep/best_value": best.value}, 0)
        parent.set_tags({"pgbench.best_params": json.dumps(best.params)})
    write_json(sweep_dir(config) / "best.json", result)
    parent.log_artifact(sweep_dir(config) / "best.json")
    parent.finish("FINISHED")
    return redact_values(result)  # what is printed: the command holds tracking.uri


def _close_dead_trials(study: optuna.Study, parent: MLflowTracker) -> None:
    """Mark MLflow runs of trials whose worker died (still RUNNING there) as failed."""
    for trial in study.get_trials(states=(TrialState.FAIL,)):
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            reason = "worker stopped (stale heartbeat)"
            parent.fail_if_running(
                run_id, {"pgbench.trial_state": "FAIL", "pgbench.fail_reason": reason}
            )


def _overrides(config: SweepArgs) -> dict[str, Any]:
    """The run keys whose values differ from the defaults (to print a short command)."""
    names = {"task": config.task.name, "estimator": config.estimator.name}
    defaults = run_values(resolve(names, SweepArgs))
    return {
        k: v
        for k, v in run_values(config).items()
        if k in ("task", "estimator") or defaults.get(k) != v
    }
