"""The training loop shared by every estimator.

One step: sample K completions for each of P prompts -> rewards [P, K] -> (KL in reward)
-> estimator advantages [P, K] -> policy loss (+ KL in loss), aggregated over tokens ->
backward over micro-batches -> clip, AdamW step, cosine schedule. Every N steps: greedy
evaluation on the valid split and an atomic checkpoint. The test split is scored before
and after training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from tqdm.auto import tqdm

import pgbench
from pgbench import hardware, parallel
from pgbench.config.verbs import Config
from pgbench.engine.evaluate import evaluate
from pgbench.errors import TrainingError
from pgbench.models.policy import peak_memory_mb
from pgbench.models.shipped import policy_params
from pgbench.tasks import Example
from pgbench.train import checkpoint
from pgbench.train.metrics import per_process_means, step_metrics
from pgbench.train.optimise import NonFinite, optimise
from pgbench.train.parts import Parts, build_optimizer, build_parts
from pgbench.train.pipeline import RolloutQueue, step_seed
from pgbench.train.rundir import (
    append_samples,
    check_run_dir_free,
    default_output_dir,
    drop_samples_after,
    git_commit,
    run_dir_lock,
)
from pgbench.train.start_eval import evaluate_start
from pgbench.train.tracking import (
    SPOOL,
    MLflowTracker,
    NullTracker,
    Tracker,
    check_reachable,
    write_json,
)
from pgbench.train.update import advantages, score

StepCallback = Callable[[int, dict[str, float]], None]
SAMPLES_PER_EVAL = 8  # valid completions kept per evaluation in samples.csv


@dataclass
class LoopState:
    """What the loop carries between steps (and into checkpoints)."""

    step: int = 0
    tokens: int = 0
    wall_clock_s: float = 0.0
    estimator: dict[str, Any] = field(default_factory=dict)
    eval_before: dict[str, float] = field(default_factory=dict)
    last_train: dict[str, float] = field(default_factory=dict)
    eval_valid: dict[str, float] = field(default_factory=dict)  # last valid-split metrics
    skipped_steps: int = 0  # steps skipped for a non-finite reward, loss or gradient
    consecutive_skips: int = 0


class Trainer:
    """Trains one policy with one estimator; everything else comes from the shared config."""

    def __init__(
        self, config: Config, tracker: Tracker | None = None, parts: Parts | None = None
    ) -> None:
        """`parts` default to `build_parts(config)`; `tracker` to an MLflow run of the config."""
        self.config = config
        self.run_dir = Path(config.output_dir)
        self.task = config.task
        self.splits = self.task.splits()
        self.parts = parts = parts or build_parts(config)
        self.device, self.processes, self.policy = parts.device, parts.processes, parts.policy
        self.reference, self.value_head, self.vllm = parts.reference, parts.value_head, parts.vllm
        self.modules = {"policy": self.policy.model, "value_head": self.value_head}
        modules = [m for m in self.modules.values() if m is not None]
        self.params = [p for m in modules for p in m.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = build_optimizer(config, self.params, self.device)
        self.state = LoopState()
        self.queue = RolloutQueue(
            config, self.policy, self.splits.train, self.processes, self.device, self.vllm
        )
        self.on_eval: StepCallback | None = None
        run_info = self.run_dir / "run.json"
        run_id = json.loads(run_info.read_text())["run_id"] if run_info.is_file() else ""
        latest = checkpoint.resume_point(self.run_dir / "checkpoints") if config.resume else None
        if latest is not None:
            self._restore(latest)
        self.processes.broadcast_parameters(self.params)  # every process starts from rank 0's
        if not self.processes.main:  # only the main process logs, evaluates and writes files
            self.tracker: Tracker = NullTracker()
            return
        if tracker is None:
            check_reachable(config.tracking.uri)
            tracker = MLflowTracker(
                config.tracking.uri,
                config.mlflow_experiment,
                run_id=run_id,
                run_name=self.run_dir.name,
                spool=self.run_dir / SPOOL,
                once_per_step=True,
            )
        self.tracker = tracker
        # created only now: bad data, model or tracking leave no run directory behind
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_info, {"run_id": tracker.run_id, "tracking_uri": config.tracking.uri})

    def _restore(self, path: Path) -> None:
        saved = checkpoint.load(path, self.modules)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = LoopState(**saved["loop"])
        self.queue.load_state_dict(saved.get("pending", []))
        if self.processes.main:
            drop_samples_after(self.run_dir, self.state.step)  # those steps are replayed

    def _save(self) -> None:
        loop = self.state.__dict__
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loop": loop,
            "pending": self.queue.state_dict(),
            "run_id": self.tracker.run_id,
        }
        checkpoint.save(self.run_dir / "checkpoints", self.state.step, self.modules, state)

    # -- evaluation -------------------------------------------------------------------------
    def _evaluate(self, examples: list[Example], prefix: str) -> dict[str, float]:
        cfg = self.config
        settings = {"max_new_tokens": cfg.eval.max_new_tokens, "batch_size": cfg.eval.batch_size}
        if self.state.step == 0:  # the starting policy: the same for every run that uses it
            models = ("model", "device", "batch_size")  # not the training-only transforms
            settings["reward"] = {
                k: v for k, v in dataclasses.asdict(cfg.reward).items() if k in models
            }
            cache = Path(cfg.cache_dir).expanduser()
            metrics, texts = evaluate_start(self.policy, self.task, examples, settings, cache)
        else:
            metrics, texts = evaluate(
                self.policy.model, self.policy.tokenizer, self.task, examples, **settings
            )
        self.tracker.log_metrics({f"{prefix}/{k}": v for k, v in metrics.items()}, self.state.step)
        kept = slice(SAMPLES_PER_EVAL)
        append_samples(self.run_dir, self.state.step, prefix, examples[kept], texts[kept])
        return metrics

    # -- one training step ------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One step, in its phases: rollout, reward, shape, advantages, policy loss and
        optimiser step, then the step's metrics."""
        cfg, state, processes = self.config, self.state, self.processes
        started = time.perf_counter()
        # 1. rollout: this step's completions (sampled ahead by up to rollout.staleness steps)
        collected, sync_s, lag = self.queue.take(state.step)
        tokens = int(processes.sum(collected.rollout.tokens + collected.baseline_tokens))
        # 2. reward: the task's rewards [P, K] (and remax's greedy baseline [P]), all processes
        rewards = processes.gather(collected.rewards)
        greedy = rewards if collected.baseline is None else collected.baseline
        if not (rewards.isfinite().all() and greedy.isfinite().all()):
            return self._skip("reward", tokens, started)
        with hardware.autocast(self.device, cfg.trainer.precision):
            # 3. shape: overlong penalty, uniform groups, rollout-time and reference log-probs
            scored = score(
                cfg,
                model=self.policy.model,
                reference=self.reference,
                value_head=self.value_head,
                rollout=collected.rollout,
                rewards=collected.rewards,
                baseline=collected.baseline,
                components=collected.components,
                component_weights=collected.component_weights,
            )
            # 4. advantages: the KL penalty folded in, then the only place estimators differ
            prepared = advantages(cfg, cfg.estimator, scored, state.estimator)
        # 5-6. policy loss and optimiser step: epochs x minibatches of clipped AdamW steps
        try:
            updates = optimise(
                cfg,
                prepared,
                step_seed(cfg.seed, state.step),
                parts=self.parts,
                params=self.params,
                optimizer=self.optimizer,
            )
        except NonFinite as err:
            return self._skip(str(err), tokens, started)
        # 7. schedule and metrics
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        step_s = self._advance(tokens, started)
        seconds = collected.seconds | prepared.seconds
        state.consecutive_skips = 0
        metrics = step_metrics(prepared, updates, rewards) | {
            "train/lr": lr,
            "train/tokens": state.tokens,
            "train/step_time_s": step_s,
            # every process's tokens over this one's sampling time
            "train/rollout_tokens_per_s": tokens / max(sync_s + seconds["generate"], 1e-9),
            "train/wall_clock_s": state.wall_clock_s,
            "train/peak_memory_mb": peak_memory_mb(self.device),
            "train/skipped_steps": state.skipped_steps,
            "train/staleness": lag,
        }
        return self._with_phases(metrics | collected.reward_metrics, seconds, sync_s)

    def _with_phases(
        self, metrics: dict[str, float], seconds: dict[str, float], sync_s: float
    ) -> dict[str, float]:
        """A step's metrics with its phase times and weight syncs; several processes log the
        mean of their per-process metrics."""
        metrics |= {f"timing/{phase}_s": phase_s for phase, phase_s in seconds.items()}
        if self.vllm is not None:
            metrics["train/weight_sync_s"] = sync_s
            metrics["train/weight_syncs"] = self.vllm.syncs
        return per_process_means(metrics, self.processes)

    def _advance(self, tokens: int, started: float) -> float:
        """Count a finished (or skipped) step's tokens and time; returns the step time."""
        step_s = time.perf_counter() - started
        self.state.tokens += tokens
        self.state.wall_clock_s += step_s
        return step_s

    def _skip(self, cause: str, tokens: int, started: float) -> dict[str, float]:
        """Skip the rest of a step whose `cause` is NaN/inf; stop after too many in a row.

        The weights keep their last finite update (a later minibatch of a several-pass
        estimator may be dropped after earlier ones were applied), the schedule moves on.
        """
        state, limit = self.state, self.config.trainer.max_skipped
        state.skipped_steps += 1
        state.consecutive_skips += 1
        with warnings.catch_warnings():  # a skipped first step moves the schedule on by design
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.scheduler.step()
        if state.consecutive_skips >= limit:
            kept = checkpoint.latest(self.run_dir / "checkpoints")
            raise TrainingError(
                f"step {state.step + 1}: non-finite {cause}, {limit} steps in a row "
                f"(trainer.max_skipped={limit}); stopped. Last good checkpoint: "
                f"{kept or 'none yet'}"
            )
        print(f"pgbench: step {state.step + 1} skipped: non-finite {cause}", file=sys.stderr)
        step_s = self._advance(tokens, started)
        return {
            "train/skipped_steps": state.skipped_steps,
            "train/tokens": state.tokens,
            "train/step_time_s": step_s,
            "train/wall_clock_s": state.wall_clock_s,
        }

    # -- the loop ---------------------------------------------------------------------------
    def run(
        self,
        on_step_end: StepCallback | None = None,
        on_eval: StepCallback | None = None,
    ) -> dict[str, Any]:
        """Train to `trainer.steps` (from the last checkpoint if resuming); returns the summary.

        `on_step_end(step, train metrics)` and `on_eval(step, valid metrics)` may raise to stop
        the run (a sweep prunes a trial that way); the run is then marked FAILED in MLflow.
        """
        cfg, state, main = self.config, self.state, self.processes.main
        self.on_eval = on_eval
        try:
            if state.step == 0 and main:
                self._start()
            bar = tqdm(
                total=cfg.trainer.steps,
                initial=state.step,
                desc="train",
                unit="step",
                leave=True,
                disable=not main,
            )
            while state.step < cfg.trainer.steps:
                metrics = self.train_step()
                state.step += 1
                state.last_train = metrics
                self.tracker.log_metrics(metrics, state.step)
                bar.update(1)
                bar.set_postfix(
                    reward=f"{metrics.get('train/reward_mean', math.nan):.3f}",
                    kl=f"{metrics.get('train/kl', math.nan):.3f}",
                    step_s=f"{metrics['train/step_time_s']:.2f}",
                )
                if not main:  # the other processes go on to the next step's all-reduce
                    continue
                if cfg.eval.every and state.step % cfg.eval.every == 0:
                    self._evaluate_valid()
                if state.step == cfg.trainer.steps or (
                    cfg.checkpoint.every and state.step % cfg.checkpoint.every == 0
                ):
                    self._save()
                if on_step_end is not None:
                    on_step_end(state.step, metrics)
            bar.close()
            summary = self.processes.broadcast(self._finish() if main else None)
        except KeyboardInterrupt:
            self.tracker.finish("KILLED")
            raise
        except BaseException:
            self.tracker.finish("FAILED")
            raise
        self.tracker.finish("FINISHED")
        return summary

    def _start(self) -> None:
        """Log the configuration and score the starting policy (test and valid splits)."""
        cfg = self.config
        # `resume` is how this process started, not the run's configuration: a run resumed
        # before its first checkpoint logs its params again, and MLflow refuses a changed value
        flat = {key: value for key, value in cfg.to_flat().items() if key != "resume"}
        write_json(self.run_dir / "config.json", flat)
        sizes = self.splits.sizes()
        self.tracker.log_params(
            flat
            | {f"data.{name}_size": size for name, size in sizes.items()}
            | {"pgbench_version": pgbench.__version__, "git_commit": git_commit()}
            | {"model_path": self.policy.source}
            | hardware.describe(self.device)
            | policy_params(self.policy.source)
        )
        self.tracker.log_artifact(self.run_dir / "config.json")
        if cfg.eval.test:
            self.state.eval_before = self._evaluate(self.splits.test, "test")
        if cfg.eval.every:
            self._evaluate_valid()

    def _evaluate_valid(self) -> None:
        metrics = self._evaluate(self.splits.valid[: self.config.eval.size], "eval")
        self.state.eval_valid = metrics
        if self.on_eval is not None:
            self.on_eval(self.state.step, metrics)

    def _finish(self) -> dict[str, Any]:
        """Score the final policy (valid; test unless eval.test=false), save it, summarise."""
        cfg, state = self.config, self.state
        if not (cfg.eval.every and state.step % cfg.eval.every == 0):
            self._evaluate_valid()
        eval_after = self._evaluate(self.splits.test, "test") if cfg.eval.test else {}
        final = self.run_dir / "final"
        self.policy.model.save_pretrained(final)
        self.policy.tokenizer.save_pretrained(final)
        if self.value_head is not None:
            save_file(self.value_head.state_dict(), str(final / "value_head.safetensors"))
        summary = {
            "run_id": self.tracker.run_id,
            "tracking_uri": cfg.tracking.uri,
            "experiment": cfg.mlflow_experiment,
            "model_path": self.policy.source,
            "model_sha256": policy_params(self.policy.source).get("model_sha256", ""),
            "output_dir": str(self.run_dir),
            "steps": state.step,
            "train": state.last_train,
            "eval_before": state.eval_before,
            "eval_after": eval_after,
            "eval_valid": state.eval_valid,
        }
        write_json(self.run_dir / "summary.json", summary)
        for name in ("summary.json", "samples.csv"):
            self.tracker.log_artifact(self.run_dir / name)
        self.tracker.log_artifact(final, "final")
        return summary


def train(
    config: Config,
    tracker: Tracker | None = None,
    on_step_end: StepCallback | None = None,
    on_eval: StepCallback | None = None,
) -> dict[str, Any]:
    """Run (or resume) training as configured; returns the contents of summary.json."""
    processes = parallel.current(config.device)
    if not config.resume:
        # one directory for all processes: the main process's timestamp
        out = processes.broadcast(default_output_dir(config))
        config = dataclasses.replace(config, output_dir=out)
        if processes.main:
            check_run_dir_free(config)
    if not processes.main:
        return Trainer(config, tracker).run(on_step_end, on_eval)
    with run_dir_lock(Path(config.output_dir)):  # one writer: a second process is refused
        return Trainer(config, tracker).run(on_step_end, on_eval)
