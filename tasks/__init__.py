"""Tasks: data, prompts and rewards. A task declares; it never trains.

`pgbench.tasks.get(name, **fields)` returns a task instance; `REGISTRY.names()` lists them.
`CATALOG` names every task and the class that is it without importing the task modules
(which import torch); `REGISTRY` and `get` import them all on first use, and each module
registers itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgbench.registry import Catalog
from pgbench.tasks.base import Example, Splits, Task, ToolEnv, register  # noqa: F401

if TYPE_CHECKING:
    from pgbench.tasks.base import REGISTRY, get  # noqa: F401

CATALOG: Catalog[Task] = Catalog(
    "task",
    {
        "arith": "pgbench.tasks.arith:Arith",
        "dataset": "pgbench.tasks.dataset:DatasetTask",
        "fr_en": "pgbench.tasks.fr_en:FrEn",
        "poet": "pgbench.tasks.poet:Poet",
    },
    base="pgbench.tasks.base:Task",
)


def __getattr__(name: str) -> Any:
    """`REGISTRY` and `get`, every task module imported (and so registered) first; a task
    module by its name."""
    return CATALOG.package_attribute(__name__, name, ("REGISTRY", "get"))
