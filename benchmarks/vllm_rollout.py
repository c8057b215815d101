"""Rollout tokens/s of pgbench's vLLM backend against vLLM's own offline generation (GPU only).

    pip install -e ".[vllm]"
    python benchmarks/vllm_rollout.py [--model smollm2] [--steps 10] [--warmup 2]
        [--prompts 64] [--samples 8] [--tokens 128]

Trains RLOO on fr_en with `engine.backend=vllm` on the GPU and takes the median of
`train/rollout_tokens_per_s` over the steps after `--warmup` (sampling plus the weight sync
into vLLM, as a training step pays them). Then, on the same `vllm.LLM` engine and the same
prompts (the chat-templated fr_en train prompts), it times plain `LLM.generate` with the same
sampling settings (n = samples, temperature 1, top-p 1, the same token budget and EOS), the
throughput vLLM reaches on its own, and prints both and their ratio (target: pgbench within
1.5x). Needs CUDA and vLLM; without them it says so and exits 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=64, help="prompts per step")
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt")
    parser.add_argument("--tokens", type=int, default=128, help="max new tokens")
    args = parser.parse_args()
    if not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None:
        print("vllm_rollout: needs a CUDA device and vLLM installed", file=sys.stderr)
        return 2
    from vllm import SamplingParams

    from pgbench.config.verbs import resolve
    from pgbench.train.parts import build_parts
    from pgbench.train.tracking import NullTracker
    from pgbench.train.trainer import Trainer

    config = resolve(
        {
            "model": args.model,
            "estimator": "rloo",
            "device": "cuda",
            "engine.backend": "vllm",
            "trainer.steps": str(args.steps + args.warmup),
            "trainer.prompts_per_step": str(args.prompts),
            "rollout.samples_per_prompt": str(args.samples),
            "rollout.max_new_tokens": str(args.tokens),
            "eval.every": "0",
            "checkpoint.every": "0",
            "output_dir": tempfile.mkdtemp(prefix="pgbench-vllm-rollout-"),
        }
    )
    parts = build_parts(config)
    rates: list[float] = []
    Trainer(config, NullTracker(), parts).run(
        on_step_end=lambda step, metrics: rates.append(metrics["train/rollout_tokens_per_s"])
    )
    pgbench_rate = statistics.median(rates[args.warmup :])

    task, tokenizer = config.task, parts.policy.tokenizer
    prompts = [task.prompt(e, tokenizer) for e in task.splits().train[: args.prompts]]
    params = SamplingParams(
        n=args.samples,
        temperature=1.0,
        top_p=1.0,
        max_tokens=args.tokens,
        stop_token_ids=[tokenizer.eos_token_id],
    )
    vllm_rates = []
    for _ in range(args.steps + args.warmup):
        started = time.perf_counter()
        outputs = parts.vllm.llm.generate(prompts, params, use_tqdm=False)
        tokens = sum(len(c.token_ids) for out in outputs for c in out.outputs)
        vllm_rates.append(tokens / (time.perf_counter() - started))
    vllm_rate = statistics.median(vllm_rates[args.warmup :])
    print(
        f"{torch.cuda.get_device_name(0)}, model={args.model}, {args.prompts} prompts x "
        f"{args.samples} samples x {args.tokens} tokens; median of {args.steps} steps\n"
        f"pgbench rollout (sampling + weight sync): {pgbench_rate:,.0f} tokens/s\n"
        f"vLLM LLM.generate alone:                  {vllm_rate:,.0f} tokens/s\n"
        f"vLLM / pgbench: {vllm_rate / pgbench_rate:.2f}x (target <= 1.5x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
