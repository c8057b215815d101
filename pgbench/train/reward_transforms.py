"""Reward transforms (`reward.*` probes): known changes of the training reward, the same for
every estimator, that show what an estimator is sensitive to (issue 41).

Applied to training rewards only, never to evaluation, in this order:
    1. flip:    r -> 1 - r with probability `flip` (0/1 rewards only)
    2. noise:   r -> r + N(0, noise_std^2)
    3. permute: the step's P*K rewards shuffled across prompts (a negative control: the
       reward no longer says which completion earned it)
    4. affine:  r -> scale * r + offset

ReMax's greedy baseline b [P] is a reward like the others, so it goes through the same steps:
flipped and noised as a sampled reward would be (a noisy grader scores the greedy completion
too), shuffled among the P prompts (with permuted rewards it no longer belongs to its prompt
either), then scaled and offset, so that A = r - b is the same function of the transformed
rewards as of the true ones and an offset cancels in it.

Randomness comes from a generator on the rewards' device seeded from the rollout's seed (the
run seed and the step), so a resumed run draws the same flips, noise and permutations; the
sampled rewards draw first, so their draws do not depend on whether a baseline is asked for.
With several processes each permutes its own share of the batch.
"""

from __future__ import annotations

import torch

from pgbench.config.sections import RewardConfig
from pgbench.errors import ConfigError

# set apart from the seed of the step's sampling, which uses the same run seed and step
STREAM = 0x5245_5741_5244  # "REWARD" in ASCII


def is_identity(cfg: RewardConfig) -> bool:
    """Whether the transforms leave every reward as it is (the defaults)."""
    corrupted = cfg.flip > 0 or cfg.noise_std > 0 or cfg.permute
    return not corrupted and cfg.scale == 1.0 and cfg.offset == 0.0


def generator(seed: int, device: torch.device) -> torch.Generator:
    """The transforms' random stream for one rollout, on `device`."""
    return torch.Generator(device=device).manual_seed((seed + STREAM) % 2**63)


def check_binary(rewards: torch.Tensor, cfg: RewardConfig, reward: str) -> None:
    """Raise ConfigError if `reward.flip` is on and a finite reward is not 0 or 1 (a NaN
    reward is left for the trainer, which skips the step)."""
    finite = rewards[rewards.isfinite()]
    graded = finite[(finite != 0) & (finite != 1)]
    if cfg.flip > 0 and graded.numel():
        raise ConfigError(
            f"reward.flip={cfg.flip} flips 0/1 rewards, but {reward} gave {graded[0].item():g}; "
            "use reward.noise_std for graded rewards"
        )


def transform(
    rewards: torch.Tensor, cfg: RewardConfig, stream: torch.Generator, reward: str = "the task"
) -> torch.Tensor:
    """`rewards` (any shape, e.g. [P, K] or [P]) after the transforms of `cfg`, drawing from
    `stream` (on the rewards' device); `reward` names the reward in an error."""
    check_binary(rewards, cfg, reward)
    device = rewards.device
    if cfg.flip > 0:
        flipped = torch.rand(rewards.shape, generator=stream, device=device) < cfg.flip
        rewards = torch.where(flipped, 1 - rewards, rewards)
    if cfg.noise_std > 0:
        noise = torch.randn(rewards.shape, generator=stream, device=device)
        rewards = rewards + cfg.noise_std * noise
    if cfg.permute:
        order = torch.randperm(rewards.numel(), generator=stream, device=device)
        rewards = rewards.flatten()[order].view(rewards.shape)
    return cfg.scale * rewards + cfg.offset


def transform_rollout(
    rewards: torch.Tensor,
    baseline: torch.Tensor | None,
    cfg: RewardConfig,
    seed: int,
    reward: str = "the task",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The training rewards [P, K] and greedy baseline [P] (or None) of one rollout, seeded by
    the rollout's `seed`; unchanged (the same tensors) with the default knobs."""
    if is_identity(cfg):
        return rewards, baseline
    stream = generator(seed, rewards.device)
    rewards = transform(rewards, cfg, stream, reward)
    if baseline is not None:
        baseline = transform(baseline, cfg, stream, reward)
    return rewards, baseline
