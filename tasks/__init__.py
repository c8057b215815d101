"""Tasks: data, prompts and rewards. A task declares; it never trains.

`pgbench.tasks.get(name, **fields)` returns a task instance; `REGISTRY.names()` lists them.
"""

from __future__ import annotations

# each module registers itself
from pgbench.tasks import arith, fr_en, poet  # noqa: F401
from pgbench.tasks.base import (  # noqa: F401
    REGISTRY,
    Example,
    Splits,
    Task,
    ToolEnv,
    get,
    register,
)
