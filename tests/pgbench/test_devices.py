"""Explicit devices: every tensor pgbench creates names its device, so nothing lands on the CPU
by default when the run is on a GPU. Without a GPU a misplaced tensor cannot fail an op, so
the guard watches creation instead: a TorchFunctionMode records each tensor factory called
from pgbench's own source without `device=` while real training steps and a variance
measurement run."""

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import pgbench
import pgbench.estimators
import pgbench.reports
import pgbench.sweeps
import pgbench.tasks
from pgbench import estimators
from pgbench.config.compose import accepts
from pgbench.config.verbs import VarianceArgs, resolve
from pgbench.runs.variance import run_variance
from pgbench.train.tracking import NullTracker
from pgbench.train.trainer import train

SOURCES = [
    Path(module.__file__).resolve().parent
    for module in (pgbench, pgbench.estimators, pgbench.tasks, pgbench.reports, pgbench.sweeps)
]
FACTORIES = {
    torch.tensor,
    torch.zeros,
    torch.ones,
    torch.full,
    torch.empty,
    torch.arange,
    torch.randperm,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.eye,
    torch.linspace,
}


class ImplicitDevices(TorchFunctionMode):
    """Records `file:line` of every factory call from pgbench source that has no `device=`."""

    def __init__(self) -> None:
        super().__init__()
        self.found: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and "device" not in kwargs:
            frame = sys._getframe(1)
            while frame is not None and "/torch/" in frame.f_code.co_filename:
                frame = frame.f_back  # torch's own dispatch frames
            path = Path(frame.f_code.co_filename).resolve() if frame is not None else None
            if path is not None and any(path.is_relative_to(s) for s in SOURCES):
                self.found.add(f"{path.name}:{frame.f_lineno}")
        return func(*args, **kwargs)


def test_the_guard_sees_an_implicit_cpu_tensor_in_pgbench_source():
    code = compile(
        "torch.zeros(3)\ntorch.zeros(3, device='cpu')\n", str(SOURCES[0] / "x.py"), "exec"
    )
    with ImplicitDevices() as guard:
        exec(code, {"torch": torch})
        torch.ones(2)  # this test's own call: not pgbench source
    assert guard.found == {"x.py:1"}


@pytest.mark.parametrize("estimator", estimators.REGISTRY.names())
def test_training_steps_create_every_tensor_on_a_named_device(run_overrides, estimator):
    config = resolve(run_overrides | {"estimator": estimator, "trainer.steps": "2"})
    with ImplicitDevices() as guard:
        train(config, NullTracker())
    assert guard.found == set()


def test_variance_creates_every_tensor_on_a_named_device(run_overrides):
    names = ",".join(estimators.REGISTRY.names())
    keys = {k: v for k, v in run_overrides.items() if accepts(VarianceArgs, k)}
    config = resolve(
        keys | {"estimators": names, "variance.batches": "2", "variance.reference_batches": "1"},
        VarianceArgs,
    )
    with ImplicitDevices() as guard:
        run_variance(config)
    assert guard.found == set()
