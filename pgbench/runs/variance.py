"""`pgbench variance`: how noisy is each estimator's policy gradient, on the very same samples?

For a fixed policy and a fixed set of prompts, draw `variance.batches` independent rollout
batches (K samples per prompt each). For every estimator, compute its policy gradient on
each of these same batches, flattened over the trainable parameters: g_1 .. g_B. Then

    total_variance      = 1/(B-1) sum_b ||g_b - mean_g||^2     (trace of the covariance)
    mse_to_reference    = 1/B sum_b ||g_b - g_ref||^2           (variance + bias^2)
    cosine_to_reference = 1/B sum_b cos(g_b, g_ref)
    snr                 = ||mean_g||^2 / total_variance
    seconds_per_gradient: mean time of scoring + backward for one batch (sampling excluded)

g_ref is the policy gradient of the expected reward estimated without bias by RLOO averaged
over `variance.reference_batches` further batches; it is the same for every estimator, so
an estimator that rescales or biases the gradient (GRPO's std division) shows it in the MSE.
The policy is the reference model here, so the KL term is exactly zero and is left out; PPO's
value head starts at zero (V = 0), as at its first training step, and only its policy loss
is differentiated. When ReMax is measured, each batch also gets its prompts' greedy completions
(its baseline), decoded and scored with the batch.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from pgbench import estimators
from pgbench.config.compose import output_path
from pgbench.config.sections import VarianceConfig
from pgbench.config.verbs import Config, VarianceArgs, resolve, run_values
from pgbench.engine.sampling import Rollout
from pgbench.estimators import Estimator
from pgbench.hardware import pick_device
from pgbench.models.policy import Policy, load_policy
from pgbench.models.resolve import resolve_model
from pgbench.train.optimise import accumulate_gradients
from pgbench.train.parts import new_value_head
from pgbench.train.pipeline import step_seed
from pgbench.train.rollout import collect_rollout
from pgbench.train.update import prepare

COLUMNS = [
    "estimator",
    "total_variance",
    "mse_to_reference",
    "cosine_to_reference",
    "snr",
    "seconds_per_gradient",
]


@dataclass
class Draw:
    rollout: Rollout
    rewards: torch.Tensor  # [P, K]
    baseline: torch.Tensor | None = None  # [P] greedy completions' rewards (if asked for)
    components: torch.Tensor | None = None  # [C, P, K] the task's reward terms (several)
    component_weights: torch.Tensor | None = None  # [C] their weights


def draw_batches(
    config: Config, policy: Policy, count: int, offset: int, greedy: bool = False
) -> list[Draw]:
    """`count` independent rollout batches of the same prompts, seeded by (seed, offset + b);
    with `greedy`, each also has the greedy baseline (ReMax)."""
    cfg = config
    examples = random.Random(cfg.seed).sample(cfg.task.splits().train, cfg.trainer.prompts_per_step)
    draws = []
    for batch in tqdm(range(count), desc="rollouts", unit="batch", leave=False):
        torch.manual_seed(step_seed(cfg.seed, offset + batch))
        collected = collect_rollout(cfg, policy, examples, policy.model.device, greedy=greedy)
        draws.append(
            Draw(
                collected.rollout,
                collected.rewards,
                collected.baseline,
                collected.components,
                collected.component_weights,
            )
        )
    return draws


def policy_gradient(
    config: Config, estimator: Estimator, policy: Policy, draw: Draw
) -> tuple[torch.Tensor, float]:
    """The estimator's flattened policy gradient on one batch, and the seconds it took."""
    model = policy.model
    value_head = new_value_head(model) if estimator.uses_value_head else None
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    prepared = prepare(
        config,
        estimator,
        model=model,
        rollout=draw.rollout,
        rewards=draw.rewards,
        value_head=value_head,
        baseline=draw.baseline,
        components=draw.components,
        component_weights=draw.component_weights,
    )
    rows = torch.arange(len(draw.rollout.texts), device=model.device)
    accumulate_gradients(
        config, estimator, model, value_head, prepared, rows, with_value_loss=False
    )
    seconds = time.perf_counter() - started
    grad = torch.cat(
        [p.grad.flatten() if p.grad is not None else p.new_zeros(p.numel()) for p in params]
    )
    model.zero_grad(set_to_none=True)
    return grad.cpu(), seconds


def statistics(grads: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Variance statistics of per-batch gradients [B, D] against a reference gradient [D]."""
    mean = grads.mean(dim=0)
    total_variance = ((grads - mean) ** 2).sum(dim=1).sum().item() / (grads.shape[0] - 1)
    cosine = torch.nn.functional.cosine_similarity(grads, reference[None], dim=1)
    return {
        "total_variance": total_variance,
        "mse_to_reference": ((grads - reference) ** 2).sum(dim=1).mean().item(),
        "cosine_to_reference": cosine.mean().item(),
        "snr": (mean**2).sum().item() / max(total_variance, 1e-30),
    }


def measure(
    config: Config, names: list[str], policy: Policy, sizes: VarianceConfig
) -> pd.DataFrame:
    """One row per estimator with the columns of variance.csv (`sizes`: how many batches)."""
    greedy = any(estimators.REGISTRY.get_class(name).needs_greedy for name in names)
    batches = draw_batches(config, policy, sizes.batches, offset=0, greedy=greedy)
    extra = draw_batches(config, policy, sizes.reference_batches, offset=10_000)
    unbiased = estimators.get("rloo")
    reference = torch.stack([policy_gradient(config, unbiased, policy, d)[0] for d in extra])
    reference = reference.mean(dim=0)
    rows = []
    for name in tqdm(names, desc="estimators", unit="estimator"):
        estimator = estimators.get(name)
        results = [policy_gradient(config, estimator, policy, draw) for draw in batches]
        grads = torch.stack([grad for grad, _ in results])
        seconds = sum(s for _, s in results) / len(results)
        rows.append(
            {"estimator": name, **statistics(grads, reference), "seconds_per_gradient": seconds}
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def run_variance(config: VarianceArgs) -> tuple[pd.DataFrame, Path]:
    """Measure, write `<output_dir>/variance.csv`, log to MLflow (`<task>-variance`).

    Rollouts and gradients follow the Config of a run with the same keys (its estimator,
    RLOO, is the reference's); each estimator's gradient is computed with that estimator.
    """
    from pgbench.train.tracking import MLflowTracker, check_reachable

    names = config.estimator_names()  # each with enough samples: checked by VarianceArgs
    run = resolve(run_values(config))
    check_reachable(config.tracking.uri)
    out = output_path(config)
    policy = load_policy(
        resolve_model(config.model, config.task, config.cache_dir),
        config.lora,
        pick_device(config.device),
    )
    table = measure(run, names, policy, config.variance)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "variance.csv"
    table.to_csv(path, index=False)
    experiment = config.tracking.experiment or f"{config.task.name}-variance"
    tracker = MLflowTracker(config.tracking.uri, experiment, run_name=f"variance-{out.name}")
    tracker.log_params(config.to_flat() | {"output_dir": str(out), "model_path": policy.source})
    for row in table.to_dict("records"):
        tracker.log_metrics({f"{row['estimator']}/{k}": row[k] for k in COLUMNS[1:]}, step=0)
    tracker.log_artifact(path)
    tracker.finish()
    return table, path
