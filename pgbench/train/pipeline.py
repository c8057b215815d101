"""Where each step's rollout comes from: sampled now, or `rollout.staleness` = k steps ahead.

The rollout of step s draws its prompts and samples from `step_seed(seed, s)` whatever the
staleness, so k changes which weights sample it and nothing else. With k = 0 the rollout of
step s is sampled at step s by the policy being trained (on-policy, the default). With k > 0
the queue holds the rollouts of the next k steps: step 0 samples those of steps 0..k with the
starting policy, and every later step t samples step t + k's with its current weights, so step
t trains on data from the policy of step max(0, t - k), a synchronous, deterministic emulation
of an asynchronous pipeline's lag (PipelineRL, verl's one-step-off, AReaL's max staleness).

At sampling time the sampling weights score the completions once more, without gradient:
`Rollout.behaviour`, the behaviour log-probs mu that the loss's ratio (`loss.rollout_correction`)
is taken against. Cost of k > 0: that extra forward per step, and k rollouts held in memory and
in each checkpoint; no copy of the weights.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import torch

from pgbench import hardware
from pgbench.config.verbs import Config
from pgbench.engine.sampling import Rollout
from pgbench.engine.scoring import token_logprobs_chunked
from pgbench.models.policy import Policy
from pgbench.parallel import Processes
from pgbench.tasks import Example
from pgbench.train.rollout import Collected, collect_rollout


def step_seed(seed: int, step: int) -> int:
    """Seed of one step's sampling: resuming at any step replays the same randomness."""
    return seed * 1_000_003 + step


class RolloutQueue:
    """The rollouts of the steps to come, each with the step it was sampled at."""

    def __init__(
        self,
        config: Config,
        policy: Policy,
        train: list[Example],
        processes: Processes,
        device: torch.device,
        vllm: Any = None,
    ) -> None:
        self.config, self.policy, self.train = config, policy, train
        self.processes, self.device, self.vllm = processes, device, vllm
        self.pending: dict[int, tuple[int, Collected]] = {}  # step -> (sampled at, rollout)

    def take(self, step: int) -> tuple[Collected, float, int]:
        """Step `step`'s rollout; the seconds spent syncing vLLM; its lag in updates. Samples
        what the queue lacks first; the rollout's `seconds` are this call's sampling time."""
        ahead = self.config.rollout.staleness
        sync_s, seconds = 0.0, {}
        for target in range(step, step + ahead + 1):
            if target not in self.pending:
                collected, synced = self._sample(target, step)
                sync_s += synced
                for phase, phase_s in collected.seconds.items():
                    seconds[phase] = seconds.get(phase, 0.0) + phase_s
                self.pending[target] = (step, collected)
        sampled_at, collected = self.pending.pop(step)
        return dataclasses.replace(collected, seconds=seconds), sync_s, step - sampled_at

    def _sample(self, target: int, now: int) -> tuple[Collected, float]:
        cfg, processes = self.config, self.processes
        seed = step_seed(cfg.seed, target)
        torch.manual_seed(processes.seed(seed))
        examples = random.Random(seed).sample(self.train, cfg.trainer.prompts_per_step)
        examples = processes.share(examples)
        sync_s = self.vllm.sync_if_due(self.policy.model, now) if self.vllm is not None else 0.0
        autocast = hardware.autocast(self.device, cfg.trainer.precision)
        collected = collect_rollout(
            cfg, self.policy, examples, self.device, self.vllm, processes.seed(seed), autocast
        )
        if cfg.rollout.staleness == 0:  # the trainer's own scores are the behaviour's
            return collected, sync_s
        with hardware.timed(collected.seconds, "behaviour", self.device), autocast:
            scores = token_logprobs_chunked(
                self.policy.model,
                collected.rollout,
                cfg.trainer.micro_batch_size,
                cfg.rollout.temperature,
            )
        rollout = dataclasses.replace(collected.rollout, behaviour=scores.logprobs)
        return dataclasses.replace(collected, rollout=rollout), sync_s

    def state_dict(self) -> list[dict[str, Any]]:
        """The pending rollouts as plain tensors, lists and numbers (for `torch.save`)."""
        return [
            {
                "step": step,
                "sampled_at": sampled_at,
                "rollout": dataclasses.asdict(collected.rollout),
                "rewards": collected.rewards,
                "baseline": collected.baseline,
                "baseline_tokens": collected.baseline_tokens,
                "components": collected.components,
                "component_weights": collected.component_weights,
            }
            for step, (sampled_at, collected) in sorted(self.pending.items())
        ]

    def load_state_dict(self, saved: list[dict[str, Any]]) -> None:
        """Restore the pending rollouts of `state_dict`, on this queue's device."""
        move = self._to_device
        self.pending = {
            item["step"]: (
                item["sampled_at"],
                Collected(
                    Rollout(**{k: move(v) for k, v in item["rollout"].items()}),
                    move(item["rewards"]),
                    {},
                    move(item["baseline"]),
                    item["baseline_tokens"],
                    components=move(item.get("components")),  # absent before issue 43
                    component_weights=move(item.get("component_weights")),
                ),
            )
            for item in saved
        }

    def _to_device(self, value: Any) -> Any:
        return value.to(self.device) if isinstance(value, torch.Tensor) else value
