"""Data parallelism for `accelerate launch --num_processes N pgbench run ...` (a no-op alone).

Each process samples a disjoint, contiguous share of the step's P prompts (P / N each, all K
samples of a prompt in one process, so group baselines are unchanged) and back-propagates its
own share of the loss. `combine_gradients_` then makes every process's `.grad` the gradient of
the whole batch: the loss aggregation divides by a count of the local rows (tokens for
`token_mean`, sequences otherwise), so process i's gradient is weighted by count_i / sum count
before the all-reduce sum, which is exactly the single-process normalisation. Every process
then takes the same clipped AdamW step on the same weights (broadcast from process 0 at start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # this process's device when launched with several

    @property
    def main(self) -> bool:
        """The process that logs, evaluates, writes files and checkpoints."""
        return self.rank == 0

    def share(self, items: list[Any]) -> list[Any]:
        """This process's contiguous slice of `items` (len(items) divisible by `world`)."""
        size = len(items) // self.world
        return items[self.rank * size : (self.rank + 1) * size]

    def seed(self, seed: int) -> int:
        """A distinct sampling seed per process (`seed` itself when alone)."""
        return seed * self.world + self.rank

    def sum(self, value: float) -> float:
        """Sum of `value` over the processes."""
        if self.world == 1:
            return value
        total = torch.tensor([float(value)], dtype=torch.float64, device=self.device)  # NCCL: GPU
        dist.all_reduce(total)
        return total.item()

    def mean(self, value: float) -> float:
        """Mean of `value` over the processes."""
        return self.sum(value) / self.world

    def gather(self, tensor: Tensor) -> Tensor:
        """Every process's `tensor` (same shape on each) concatenated along dim 0, in rank order."""
        if self.world == 1:
            return tensor
        local = tensor.to(self.device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local)
        return torch.cat(parts).to(tensor.device)

    def broadcast(self, obj: Any) -> Any:
        """Process 0's `obj` (picklable), on every process."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_parameters(self, params: list[torch.nn.Parameter]) -> None:
        """Copy process 0's parameter values to every process (as DDP does at start)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for param in params:
                dist.broadcast(param.data, src=0)

    def close(self) -> None:
        """Wait for every process, then leave the process group (once, before exiting).

        A process that exits still in the group can abort (SIGABRT, "terminate called without
        an active exception") as gloo's threads outlive the interpreter.
        """
        if self.world > 1:
            dist.barrier()
            dist.destroy_process_group()

    def combine_gradients_(
        self, params: list[torch.nn.Parameter], mask: Tensor, aggregation: str
    ) -> float:
        """Replace each `.grad` by the weighted sum of every process's gradient of its rows.

        `mask` [n, T] marks the loss tokens of this process's rows and `aggregation` is
        `loss.aggregation`: the local loss was divided by the local token count (token_mean)
        or row count (the others). Returns this process's weight count / sum(count), to
        combine statistics aggregated the same way.
        """
        count = mask.sum().item() if aggregation == "token_mean" else mask.shape[0]
        weight = count / max(self.sum(count), 1e-12)
        if self.world == 1:
            return weight
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.flatten() for g in grads]) * weight  # one all-reduce for all
        dist.all_reduce(flat)
        for param, part in zip(params, flat.split([g.numel() for g in grads]), strict=True):
            param.grad = part.view_as(param).clone()
        return weight


def current(device: str) -> Processes:
    """This process's place: several under `accelerate launch` (or torchrun), else alone.

    `device` is the run's `device=` key: processes on CPU talk through gloo, on GPUs NCCL.
    """
    from accelerate import PartialState

    cpu = device == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)  # joins the process group when launched with several
    if state.num_processes == 1:
        return Processes()
    return Processes(state.process_index, state.num_processes, state.device)
