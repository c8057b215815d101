"""What one training step logs: rewards, advantages, loss terms, KL, entropy, lengths."""

from __future__ import annotations

import torch

from pgbench.parallel import Processes
from pgbench.train.update import Prepared

# computed on each process's share of the rollout; several processes log their mean
PER_PROCESS_METRICS = (
    "train/advantage_mean",
    "train/advantage_std",
    "train/clip_fraction",
    "train/approx_kl",
    "train/kl",
    "train/entropy",
    "train/completion_len",
    "train/peak_memory_mb",
    "train/abs_log_rho",
    "train/correction_kept",
)


def step_metrics(
    prepared: Prepared, updates: list[dict[str, float]], rewards: torch.Tensor
) -> dict[str, float]:
    """What a step's rollout, advantages and updates say: rewards [P, K] of every process,
    advantages, loss terms (mean over the optimiser steps), KL, entropy, completion length."""
    policy_mask = prepared.rollout.policy_mask
    advantages = prepared.advantages[policy_mask.bool()]
    mean = {key: sum(u[key] for u in updates) / len(updates) for key in updates[0]}
    value_head = {}
    if prepared.returns is not None:  # CleanRL's explained variance of the rollout's values
        valid = policy_mask.bool()
        returns, values = prepared.returns[valid], prepared.old_values[valid]
        explained = 1 - (returns - values).var() / returns.var()
        value_head = {"train/explained_variance": explained.item()}
    return value_head | {
        "train/reward_mean": rewards.mean().item(),
        "train/reward_std": rewards.std().item(),
        "train/advantage_mean": advantages.mean().item(),
        "train/advantage_std": advantages.std().item(),
        "train/loss": mean["loss"],
        "train/value_loss": mean["value_loss"],
        "train/clip_fraction": mean["clip_fraction"],
        "train/approx_kl": mean["approx_kl"],
        "train/kl": prepared.seq_kl.mean().item(),
        "train/uniform_groups": prepared.uniform_groups,
        "train/entropy": updates[0]["entropy"],
        "train/completion_len": policy_mask.sum(1).float().mean().item(),
        "train/abs_log_rho": prepared.drift,
        "train/correction_kept": prepared.mask.sum().item() / max(int(policy_mask.sum()), 1),
        "train/grad_norm": mean["grad_norm"],
    }


def per_process_means(metrics: dict[str, float], processes: Processes) -> dict[str, float]:
    """With several processes, each metric computed on one process's share is the mean of
    theirs (alone, the identity)."""
    return metrics | {key: processes.mean(metrics[key]) for key in PER_PROCESS_METRICS}
