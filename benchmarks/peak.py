"""Where a pgbench step's time goes, and at what fraction of the machine's matmul peak.

    python benchmarks/peak.py [--model smollm2] [--lora 0] [--steps 3] [--threads 2]

One RLOO-shaped step of fr_en on the given policy (default `smollm2`, the converted
SmolLM2-135M-Instruct), split into its phases and timed separately with pgbench's own code:
generation (`engine.sample`, KV-cached), reference log-probs (`Reference.logprobs`, no
gradient) and the training forward + backward (`scoring.token_logprobs` with its graph, then
backward of the policy-gradient loss; with one update pass this is pgbench's only policy
forward of the step). Each phase's FLOPs are those pgbench executes, counted by hooks on the
model's body and vocabulary head (`flops.py`, as `vs_trl.py` counts them): 2 per weight per
position forward, 6 for forward + backward of full fine-tuning and 4 with LoRA (no weight
gradients of the frozen base); attention's own FLOPs are left out (small at these lengths).
The peak is measured in the same process, threads and dtype: the best of dense fp32 matmuls
shaped like the model's ([tokens, hidden] x [hidden, intermediate]) and square 2048 ones.
Writes `<out>/peak.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from flops import PHASES, PositionCounter, model_peak, phase_flops, weights

from pgbench import tasks
from pgbench.config.sections import LoraConfig
from pgbench.engine.sampling import sample
from pgbench.engine.scoring import token_logprobs
from pgbench.hardware import cpu_capability, use_threads
from pgbench.models.policy import Reference, load_policy
from pgbench.models.resolve import resolve_model


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def step_phases(
    policy, reference, counter: PositionCounter, prompts: list[str], args
) -> dict[str, tuple[float, float]]:
    """(seconds, FLOPs) of each phase of one step."""
    counter.take()
    gen_s, rollout = timed(
        counter.generation(
            lambda: sample(policy.model, policy.tokenizer, prompts, args.samples, args.tokens, 1.0)
        )
    )
    rows = len(rollout.texts)
    ref_s, _ = timed(lambda: reference.logprobs(rollout, rows, 1.0))

    def train() -> None:
        scores = token_logprobs(policy.model, rollout, 1.0, with_entropy=True)
        advantages = torch.randn(rows, 1)
        (-(advantages * scores.logprobs) * rollout.policy_mask).sum().backward()
        policy.model.zero_grad(set_to_none=True)

    train_s, _ = timed(train)
    flops = phase_flops(counter.take(), *weights(policy.model), lora=bool(args.lora))
    seconds = {"generation": gen_s, "logprobs": ref_s, "train": train_s}
    return {phase: (seconds[phase], flops[phase]) for phase in PHASES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank (0 = full)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=24, help="max new tokens")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench_out")
    args = parser.parse_args()
    use_threads(args.threads)
    task = tasks.get("fr_en")
    lora = LoraConfig(r=args.lora)
    policy = load_policy(
        resolve_model(args.model, task, "~/.cache/pgbench"), lora, torch.device("cpu")
    )
    reference = Reference(policy)
    prompts = [task.prompt(e, policy.tokenizer) for e in task.splits().train[: args.prompts]]
    peak = model_peak(policy.model.config, args.prompts * args.samples * 64)
    torch.manual_seed(0)
    counter = PositionCounter(policy.model, reference.copy)
    runs = [step_phases(policy, reference, counter, prompts, args) for _ in range(args.steps + 1)]
    runs = runs[1:]
    result = {"model": args.model, "lora": args.lora, "threads": args.threads}
    result |= {"capability": cpu_capability(), "peak_gflops": peak / 1e9, "phases": {}}
    print(
        f"{args.model} lora={args.lora}, {args.threads} threads, {cpu_capability()}, "
        f"matmul peak {peak / 1e9:.0f} GFLOP/s; median of {args.steps} steps"
    )
    print(f"{'phase':<24}{'seconds':>9}{'GFLOP/s':>9}{'of peak':>9}")
    for phase in runs[0]:
        seconds = statistics.median(r[phase][0] for r in runs)
        flops = statistics.median(r[phase][1] for r in runs)
        rate = flops / seconds
        result["phases"][phase] = {"seconds": seconds, "gflops": rate / 1e9, "of_peak": rate / peak}
        print(f"{phase:<24}{seconds:>9.2f}{rate / 1e9:>9.1f}{rate / peak:>9.0%}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "peak.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
