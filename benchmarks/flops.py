"""FLOPs a training step executes, and the machine's dense matmul peak to compare them with.

Shared by `peak.py` and `vs_trl.py`. FLOPs are counted from weights x positions, attention's
own products left out (small at these lengths), so they are lower bounds: 2 per weight per
position for a forward, 6 for a forward + backward of full fine-tuning and 4 with LoRA (no
weight gradients of the frozen base; the adapters' own small products are left out). The
body (every weight but the embeddings and the vocabulary head) is counted at every position
it runs on, the head only where logits are computed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

PHASES = ("generation", "logprobs", "train")  # no-grad log-probs: old and reference


def matmul_peak(
    shapes: list[tuple[int, int, int]], device: str = "cpu", repeats: int = 10
) -> float:
    """Best dense fp32 matmul throughput (FLOP/s) over `shapes` (m, k, n) on `device`, in
    this process's threads."""
    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        a @ b  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - started))
    return best


def model_peak(config: object, rows: int, device: str = "cpu") -> float:
    """`matmul_peak` over products shaped like the model's MLP (`config` a Hugging Face model
    config) on `rows` positions and square 2048 ones."""
    shapes = [(rows, config.hidden_size, config.intermediate_size), (2048, 2048, 2048)]
    return matmul_peak(shapes, device)


def weights(model: torch.nn.Module) -> tuple[int, int]:
    """(body, head) weight counts: the head is the vocabulary projection; embeddings excluded."""
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    tied = embedding.data_ptr() == head.data_ptr()
    return total - embedding.numel() - (0 if tied else head.numel()), head.numel()


class PositionCounter:
    """Counts the positions the bodies and heads of some models run on, per phase.

    A forward pass is in phase "generation" while `generating` is set, else "train" with
    autograd on and "logprobs" without. `counts[phase]` = [body positions, head positions].
    """

    def __init__(self, *models: torch.nn.Module | None) -> None:
        """Count the forwards of each of `models` (the policy and a reference copy; None is
        skipped)."""
        self.generating = False
        self.counts = {phase: [0, 0] for phase in PHASES}
        for model in filter(None, models):
            model.get_decoder().register_forward_pre_hook(self._body, with_kwargs=True)
            model.get_output_embeddings().register_forward_hook(self._head)

    def phase(self) -> str:
        if self.generating:
            return "generation"
        return "train" if torch.is_grad_enabled() else "logprobs"

    def _body(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"][..., 0]
        self.counts[self.phase()][0] += ids.numel()

    def _head(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.counts[self.phase()][1] += args[0].shape[:-1].numel()

    def take(self) -> dict[str, list[int]]:
        """The counts since the last `take`, and start again from zero."""
        counts, self.counts = self.counts, {phase: [0, 0] for phase in PHASES}
        return counts

    def generation(self, fn: Callable) -> Callable:
        """`fn`, with its forwards counted as generation."""

        def wrapped(*args: object, **kwargs: object) -> object:
            self.generating = True
            try:
                return fn(*args, **kwargs)
            finally:
                self.generating = False

        return wrapped


def phase_flops(counts: dict[str, list[int]], body: int, head: int, lora: bool) -> dict:
    """FLOPs of each phase from its position counts (see the module docstring)."""
    per_weight = {"generation": 2, "logprobs": 2, "train": 4 if lora else 6}
    return {
        phase: per_weight[phase] * (body * positions + head * logits)
        for phase, (positions, logits) in counts.items()
    }
