"""Seconds per RLOO step: pgbench against Hugging Face TRL's RLOOTrainer on the same work.

    pip install -e ".[bench]"
    python benchmarks/vs_trl.py [--steps 20] [--warmup 3] [--rounds 1]
        [--variants full,lora,50m,smollm2,smollm2-lora] [--device cpu]

Both sides train an fr_en policy on the same prompts with the same settings: 8 prompts x 4
samples per step (4 x 4 for the smollm2 variants), temperature 1.0, at most 24 new tokens,
k1 KL in the reward with beta 0.05, AdamW lr 1e-4, gradient clipping 1.0, no gradient
checkpointing (TRL turns it on by default), fp32 with 2 CPU threads, sentence chrF as the
reward, no tracking. Each side runs in its own process (so peak resident memory is its own)
and reports the median seconds of the steps after `--warmup`; with `--rounds R` the two
sides run alternately R times (pgbench first in odd rounds, TRL first in even ones), so a
change in machine load hits both, and the median is over the timed steps of all rounds.
Variants: `full` (the cached tiny policy, full fine-tuning), `lora` (peft LoRA r=8 on all
linear layers), `50m` (a randomly initialised ~50M-parameter Llama with the tiny tokenizer),
`smollm2` and `smollm2-lora` (the converted SmolLM2-135M-Instruct, `model=smollm2`).

Where the time goes, per side: generation, no-grad log-probs (rollout-time and reference)
and training (the forward with autograd, backward, clipping and the AdamW step), each with
its FLOPs (counted by hooks on the model's body and head, see `flops.py`) as a share of the
dense matmul peak measured in the same process; "other" is the rest of the step (rewards,
advantages, bookkeeping). pgbench's phases come from its `timing/*_s` metrics, TRL's from
timers around `_generate_single_turn`, `_get_per_token_logps_and_entropies`, the backward
and the optimizer step. Prints a table and writes `results.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flops import PHASES, PositionCounter, model_peak, phase_flops, weights

SETTINGS = {
    "prompts": 8,
    "samples": 4,
    "max_new_tokens": 24,
    "temperature": 1.0,
    "lr": 1e-4,
    "beta": 0.05,
    "threads": 2,
}
VARIANTS = ("full", "lora", "50m", "smollm2", "smollm2-lora")


def prompts_per_step(variant: str) -> int:
    return 4 if variant.startswith("smollm2") else SETTINGS["prompts"]


def prompts_and_model(variant: str, out: Path) -> tuple[str, list, object]:
    """The policy folder of a variant, the train examples and the fr_en task."""
    from pgbench import tasks
    from pgbench.models.resolve import resolve_model

    task = tasks.get("fr_en")
    name = "smollm2" if variant.startswith("smollm2") else "tiny"
    folder = resolve_model(name, task, "~/.cache/pgbench")
    if variant == "50m":
        folder = larger_policy(Path(folder), out / "policy-50m")
    return str(folder), task.splits().train, task


def larger_policy(tiny: Path, target: Path) -> Path:
    """A randomly initialised ~50M-parameter Llama with the tiny tokenizer (built once)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (target / "config.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = LlamaConfig.from_pretrained(tiny)
    config.hidden_size, config.num_hidden_layers, config.intermediate_size = 768, 6, 2048
    config.num_attention_heads = config.num_key_value_heads = 12
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def run_pgbench(variant: str, steps: int, out: Path, device: str) -> dict:
    """Train with pgbench's RLOO; per-step times from its `train/step_time_s` and
    `timing/*_s` metrics."""
    from pgbench.config.verbs import resolve
    from pgbench.train import rollout
    from pgbench.train.parts import build_parts
    from pgbench.train.tracking import NullTracker
    from pgbench.train.trainer import Trainer

    folder, _, _ = prompts_and_model(variant, out)
    config = resolve(
        {
            "model": folder,
            "estimator": "rloo",
            "trainer.steps": str(steps),
            "trainer.lr": str(SETTINGS["lr"]),
            "trainer.prompts_per_step": str(prompts_per_step(variant)),
            "rollout.samples_per_prompt": str(SETTINGS["samples"]),
            "rollout.max_new_tokens": str(SETTINGS["max_new_tokens"]),
            "rollout.temperature": str(SETTINGS["temperature"]),
            "kl.coef": str(SETTINGS["beta"]),
            "lora.r": "8" if variant.endswith("lora") else "0",
            "task.test_size": "8",
            "eval.every": "0",
            "eval.size": "8",
            "checkpoint.every": "0",
            "device": device,
            "output_dir": tempfile.mkdtemp(prefix=f"pgbench-{variant}-", dir=out),  # fresh
        }
    )
    parts = build_parts(config)
    counter = PositionCounter(parts.policy.model, parts.reference and parts.reference.copy)
    rollout.decode = counter.generation(rollout.decode)  # count the sampler's forwards
    result = new_result(parts.policy.model, variant)
    last_tokens = 0.0

    def record(step: int, metrics: dict[str, float]) -> None:
        nonlocal last_tokens
        seconds = {
            "generation": metrics["timing/generate_s"],
            "logprobs": metrics["timing/old_logprobs_s"] + metrics["timing/reference_s"],
            "train": metrics["timing/update_s"],
            "optimizer": metrics["timing/optimizer_s"],
        }
        add_step(result, metrics["train/step_time_s"], seconds, counter.take())
        result["completion_tokens"].append(metrics["train/tokens"] - last_tokens)
        last_tokens = metrics["train/tokens"]

    Trainer(config, NullTracker(), parts).run(on_step_end=record)
    return result


def new_result(model, variant: str) -> dict:  # noqa: ANN001
    body, head = weights(model)
    lists = ("step_times", "completion_tokens", "phase_seconds", "phase_flops")
    return {"body": body, "head": head, "lora": variant.endswith("lora")} | {k: [] for k in lists}


def add_step(result: dict, step_s: float, seconds: dict, counts: dict) -> None:
    result["step_times"].append(step_s)
    result["phase_seconds"].append(seconds)
    flops = phase_flops(counts, result["body"], result["head"], result["lora"])
    result["phase_flops"].append(flops)


def run_trl(variant: str, steps: int, out: Path, device: str) -> dict:
    """Train with TRL's RLOOTrainer; step and phase times from a callback and timers."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from pgbench.hardware import timed
    from pgbench.tasks.rewards import sentence_chrf

    folder, train_examples, task = prompts_and_model(variant, out)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = prompts_per_step(variant)
    rows = train_examples[: prompts * steps]
    dataset = Dataset.from_dict(
        {
            "prompt": [task.prompt(example, tokenizer) for example in rows],
            "references": [list(example.references) for example in rows],
        }
    )

    def chrf(completions: list[str], references: list[list[str]], **_: object) -> list[float]:
        return [
            sentence_chrf(c.strip(), refs) for c, refs in zip(completions, references, strict=True)
        ]

    seconds: dict[str, float] = {}
    counter: PositionCounter | None = None
    where = torch.device(device)

    class Timed(RLOOTrainer):
        def _generate_single_turn(self, *args, **kwargs):  # noqa: ANN002, ANN003
            with timed(seconds, "generation", where):
                return counter.generation(super()._generate_single_turn)(*args, **kwargs)

        def _get_per_token_logps_and_entropies(self, model, ids, mask, keep, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            phase = "train" if torch.is_grad_enabled() else "logprobs"
            # TRL's fused head (add_fused_lm_head) bypasses the head module: it scores every
            # position but the last, or, on CUDA/XPU with Triton, the completion tokens only
            if where.type == "cuda":
                counter.counts[phase][1] += int(mask[:, -keep:].sum())
            else:
                counter.counts[phase][1] += ids.shape[0] * (ids.shape[1] - 1)
            with timed(seconds, phase, where):
                return super()._get_per_token_logps_and_entropies(
                    model, ids, mask, keep, *args, **kwargs
                )

    class StepTimer(TrainerCallback):
        started = backward_ended = 0.0

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            seconds.clear()
            counter.take()
            self.started = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            seconds["optimizer"] = time.perf_counter() - self.backward_ended  # clip + AdamW

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            step_s = time.perf_counter() - self.started
            spent = {p: seconds.get(p, 0.0) for p in (*PHASES, "optimizer")}
            add_step(result, step_s, spent, counter.take())

    timer = StepTimer()
    args = RLOOConfig(
        output_dir=str(out / f"trl-{variant}"),
        per_device_train_batch_size=prompts * SETTINGS["samples"],
        num_generations=SETTINGS["samples"],
        max_completion_length=SETTINGS["max_new_tokens"],
        temperature=SETTINGS["temperature"],
        learning_rate=SETTINGS["lr"],
        beta=SETTINGS["beta"],
        max_steps=steps,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=device == "cpu",
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    trainer = Timed(
        model=AutoModelForCausalLM.from_pretrained(folder),
        reward_funcs=chrf,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
        if variant.endswith("lora")
        else None,
        callbacks=[timer],
    )
    counter = PositionCounter(trainer.model, trainer.ref_model)
    result = new_result(trainer.model, variant)
    backward = trainer.accelerator.backward

    def timed_backward(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        with timed(seconds, "train", where):
            backward(*args, **kwargs)
        timer.backward_ended = time.perf_counter()

    trainer.accelerator.backward = timed_backward
    trainer.train()
    result["completion_tokens"] = [
        log["completions/mean_length"] * prompts * SETTINGS["samples"]
        for log in trainer.state.log_history
        if "completions/mean_length" in log
    ]
    return result


def worker(side: str, variant: str, steps: int, out: Path, device: str) -> None:
    """Run one side in this process and print its measurements as JSON."""
    import torch
    from transformers import AutoConfig

    from pgbench.hardware import cpu_capability

    torch.set_num_threads(SETTINGS["threads"])
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(prompts_and_model(variant, out)[0])
    rows = prompts_per_step(variant) * SETTINGS["samples"] * 64
    peak = model_peak(config, rows, device)
    result = (run_pgbench if side == "pgbench" else run_trl)(variant, steps, out, device)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result |= {"peak_flops": peak, "capability": cpu_capability()}
    print("RESULT " + json.dumps(result))


def summarise(results: list[dict], warmup: int) -> dict:
    """Median step time, tokens/s and peak RSS over the timed steps of every round; the median
    seconds of each phase, its FLOP rate as a share of the matmul peak, and the rest."""
    times = [t for result in results for t in result["step_times"][warmup:]]
    tokens = [n for result in results for n in result["completion_tokens"][warmup:]]
    spent = [s for result in results for s in result["phase_seconds"][warmup:]]
    flops = [f for result in results for f in result["phase_flops"][warmup:]]
    peak = statistics.median(result["peak_flops"] for result in results)
    phases = {}
    for phase in (*PHASES, "optimizer"):
        seconds = [s[phase] for s in spent]
        phases[phase] = {"seconds": statistics.median(seconds)}
        if phase in PHASES and sum(seconds):
            phases[phase]["of_peak"] = sum(f[phase] for f in flops) / sum(seconds) / peak
    rest = [step - sum(s.values()) for step, s in zip(times, spent, strict=True)]
    return {
        "median_step_s": statistics.median(times),
        "steps_timed": len(times),
        "tokens_per_s": sum(tokens) / sum(times) if tokens else float("nan"),
        "peak_rss_mb": max(result["peak_rss_mb"] for result in results),
        "peak_gflops": peak / 1e9,
        "capability": results[0]["capability"],
        "phases": phases | {"other": {"seconds": statistics.median(rest)}},
    }


def run_worker(side: str, variant: str, args: argparse.Namespace, out: Path) -> dict:
    """Run one side in a fresh process; its measurements."""
    command = [sys.executable, __file__, "--out", str(out), "--worker", side, variant]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    done = subprocess.run(
        [*command, "--device", args.device], capture_output=True, text=True, check=False
    )
    found = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode or not found:
        sys.exit(f"{side} {variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(found[-1].removeprefix("RESULT "))


HEADER = (
    f"{'variant':<13}{'side':<8}{'s/step':>8}{'tok/s':>7}{'RSS MB':>8}"
    f"{'generation':>13}{'log-probs':>13}{'fwd+bwd':>13}{'optim':>7}{'other':>7}"
)


def row_line(variant: str, side: str, cells: dict) -> str:
    """One table row: step, tokens/s, memory, and each phase's seconds (share of peak)."""
    phases = cells["phases"]
    shares = "".join(
        f"{phases[p]['seconds']:>7.2f} {phases[p].get('of_peak', math.nan):>4.0%}" for p in PHASES
    )
    return (
        f"{variant:<13}{side:<8}{cells['median_step_s']:>8.3f}{cells['tokens_per_s']:>7.0f}"
        f"{cells['peak_rss_mb']:>8.0f}{shares}{phases['optimizer']['seconds']:>7.2f}"
        f"{phases['other']['seconds']:>7.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--variants", default="full,lora,50m", help=", ".join(VARIANTS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default="bench_out")
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs of each side")
    parser.add_argument("--worker", nargs=2, metavar=("SIDE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker(*args.worker, args.steps + args.warmup, out, args.device)
        return
    import torch

    if args.device not in ("cpu", "cuda") or (
        args.device == "cuda" and not torch.cuda.is_available()
    ):
        parser.error(f"--device {args.device}: use cpu, or cuda on a machine with a CUDA GPU")
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; valid: {', '.join(VARIANTS)}")
    settings = SETTINGS | {"steps": args.steps, "warmup": args.warmup, "rounds": args.rounds}
    results: dict = {"settings": settings | {"device": args.device}}
    lines = [HEADER]
    print(HEADER, flush=True)
    for variant in args.variants.split(","):
        runs: dict[str, list[dict]] = {"pgbench": [], "trl": []}
        for round_ in range(args.rounds):
            for side in ("pgbench", "trl") if round_ % 2 == 0 else ("trl", "pgbench"):
                runs[side].append(run_worker(side, variant, args, out))
        row = {side: summarise(runs[side], args.warmup) for side in runs}
        row["ratio"] = row["pgbench"]["median_step_s"] / row["trl"]["median_step_s"]
        lines += [row_line(variant, side, row[side]) for side in runs]
        lines.append(f"{variant:<13}{'ratio':<8}{row['ratio']:>8.2f}  (pgbench / TRL)")
        results[variant] = row
        print(*lines[-3:], sep="\n", flush=True)
    peak = row["pgbench"]
    lines.append(
        f"s/step: median; phases: median seconds and FLOPs / time as a share of the measured "
        f"matmul peak ({peak['peak_gflops']:.0f} GFLOP/s, {args.device}, "
        f"{SETTINGS['threads']} threads, torch capability {peak['capability']})"
    )
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
