"""Seconds per RLOO step: pgbench against Hugging Face TRL's RLOOTrainer on the same work.

    pip install -e ".[bench]"
    python benchmarks/vs_trl.py [--steps 20] [--warmup 3] [--variants full,lora,50m] [--rounds 1]

Both sides train the cached `tiny` fr_en policy on the same prompts with the same settings:
8 prompts x 4 samples per step, temperature 1.0, at most 24 new tokens, k1 KL in the reward
with beta 0.05, AdamW lr 1e-4, gradient clipping 1.0, no gradient checkpointing (TRL turns
it on by default), fp32 on the CPU with 2 threads, sentence chrF as the reward, no tracking.
Each side runs in its own process (so peak resident memory is its own) and reports the
median seconds of the steps after `--warmup`; with `--rounds R` the two sides run
alternately R times (pgbench first in odd rounds, TRL first in even ones), so a change in
machine load hits both, and the median is over the timed steps of all rounds. Variants:
`full` (full fine-tuning), `lora` (peft LoRA r=8 on all linear layers) and `50m` (a randomly
initialised ~50M-parameter Llama with the tiny tokenizer, to show how cost grows). Prints a
table and writes `results.json`.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "prompts": 8,
    "samples": 4,
    "max_new_tokens": 24,
    "temperature": 1.0,
    "lr": 1e-4,
    "beta": 0.05,
    "threads": 2,
}


def prompts_and_model(variant: str, out: Path) -> tuple[str, list, object]:
    """The policy folder of a variant, the train examples and the fr_en task."""
    from pgbench import tasks
    from pgbench.tiny import tiny_policy_dir

    task = tasks.get("fr_en")
    folder = tiny_policy_dir(task, Path("~/.cache/pgbench").expanduser())
    if variant == "50m":
        folder = larger_policy(folder, out / "policy-50m")
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


def run_pgbench(variant: str, steps: int, out: Path) -> dict:
    """Train with pgbench's RLOO; per-step times from its own `train/step_time_s`."""
    from pgbench.config import resolve
    from pgbench.tracking import NullTracker
    from pgbench.trainer import train

    folder, _, _ = prompts_and_model(variant, out)
    times: list[float] = []
    tokens: list[float] = []

    def record(step: int, metrics: dict[str, float]) -> None:
        times.append(metrics["train/step_time_s"])
        tokens.append(metrics["train/tokens"])

    config = resolve(
        {
            "model": folder,
            "estimator": "rloo",
            "trainer.steps": str(steps),
            "trainer.lr": str(SETTINGS["lr"]),
            "trainer.prompts_per_step": str(SETTINGS["prompts"]),
            "rollout.samples_per_prompt": str(SETTINGS["samples"]),
            "rollout.max_new_tokens": str(SETTINGS["max_new_tokens"]),
            "rollout.temperature": str(SETTINGS["temperature"]),
            "kl.coef": str(SETTINGS["beta"]),
            "lora.r": "8" if variant == "lora" else "0",
            "task.test_size": "8",
            "eval.every": "0",
            "eval.size": "8",
            "checkpoint.every": "0",
            "device": "cpu",
            "output_dir": tempfile.mkdtemp(prefix=f"pgbench-{variant}-", dir=out),  # fresh
        }
    )
    train(config, tracker=NullTracker(), on_step_end=record)
    generated = [b - a for a, b in zip([0.0, *tokens], tokens, strict=False)]
    return {"step_times": times, "completion_tokens": generated}


def run_trl(variant: str, steps: int, out: Path) -> dict:
    """Train with TRL's RLOOTrainer; per-step times from a callback."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from pgbench.tasks.rewards import sentence_chrf

    folder, train_examples, task = prompts_and_model(variant, out)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    count = SETTINGS["prompts"] * steps
    rows = train_examples[:count]
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

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.times.append(time.perf_counter() - self.started)

    args = RLOOConfig(
        output_dir=str(out / f"trl-{variant}"),
        per_device_train_batch_size=SETTINGS["prompts"] * SETTINGS["samples"],
        num_generations=SETTINGS["samples"],
        max_completion_length=SETTINGS["max_new_tokens"],
        temperature=SETTINGS["temperature"],
        learning_rate=SETTINGS["lr"],
        beta=SETTINGS["beta"],
        max_steps=steps,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    model = AutoModelForCausalLM.from_pretrained(folder)
    timer = StepTimer()
    trainer = RLOOTrainer(
        model=model,
        reward_funcs=chrf,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
        if variant == "lora"
        else None,
        callbacks=[timer],
    )
    trainer.train()
    lengths = [
        log["completions/mean_length"] * SETTINGS["prompts"] * SETTINGS["samples"]
        for log in trainer.state.log_history
        if "completions/mean_length" in log
    ]
    return {"step_times": timer.times, "completion_tokens": lengths}


def worker(side: str, variant: str, steps: int, out: Path) -> None:
    """Run one side in this process and print its measurements as JSON."""
    import torch

    torch.set_num_threads(SETTINGS["threads"])
    torch.manual_seed(0)
    result = (run_pgbench if side == "pgbench" else run_trl)(variant, steps, out)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def summarise(results: list[dict], warmup: int) -> dict:
    """Median step time, tokens/s and peak RSS over the timed steps of every round."""
    times = [t for result in results for t in result["step_times"][warmup:]]
    tokens = [n for result in results for n in result["completion_tokens"][warmup:]]
    return {
        "median_step_s": statistics.median(times),
        "steps_timed": len(times),
        "tokens_per_s": sum(tokens) / sum(times) if tokens else float("nan"),
        "peak_rss_mb": max(result["peak_rss_mb"] for result in results),
    }


def run_worker(side: str, variant: str, args: argparse.Namespace, out: Path) -> dict:
    """Run one side in a fresh process; its measurements."""
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--out",
            str(out),
            "--worker",
            side,
            variant,
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    found = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode or not found:
        sys.exit(f"{side} {variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(found[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--variants", default="full,lora,50m")
    parser.add_argument("--out", default="bench_out")
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs of each side")
    parser.add_argument("--worker", nargs=2, metavar=("SIDE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    total = args.steps + args.warmup
    if args.worker:
        worker(args.worker[0], args.worker[1], total, out)
        return
    results = {
        "settings": SETTINGS | {"steps": args.steps, "warmup": args.warmup, "rounds": args.rounds}
    }
    lines = [f"{'variant':<8}{'side':<9}{'median s/step':>14}{'tokens/s':>10}{'peak RSS MB':>13}"]
    for variant in args.variants.split(","):
        runs: dict[str, list[dict]] = {"pgbench": [], "trl": []}
        for round_ in range(args.rounds):
            for side in ("pgbench", "trl") if round_ % 2 == 0 else ("trl", "pgbench"):
                runs[side].append(run_worker(side, variant, args, out))
        row = {}
        for side in ("pgbench", "trl"):
            row[side] = cells = summarise(runs[side], args.warmup)
            lines.append(
                f"{variant:<8}{side:<9}{cells['median_step_s']:>14.3f}"
                f"{cells['tokens_per_s']:>10.0f}{cells['peak_rss_mb']:>13.0f}"
            )
        row["ratio"] = row["pgbench"]["median_step_s"] / row["trl"]["median_step_s"]
        lines.append(f"{variant:<8}{'ratio':<9}{row['ratio']:>14.2f}  (pgbench / TRL)")
        results[variant] = row
        print(lines[-3], lines[-2], lines[-1], sep="\n", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
