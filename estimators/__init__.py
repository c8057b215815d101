"""Policy-gradient estimators: how a batch of rewards becomes advantages.

`pgbench.estimators.get(name, **fields)` returns an estimator. Sequence-level estimators
map `rewards [P, K]` (P prompts, K samples each) to `advantages [P, K]`; token-level ones
(REINFORCE++, PPO) override `token_advantages`. Estimators are pure: KL, loss aggregation,
sampling and the optimiser are shared knobs of the core.

`CATALOG` names every estimator and the class that is it, without importing torch (the
command line checks names and prints help from it); `REGISTRY`, `get` and the base classes
import every estimator module on first use, and each module registers itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgbench.registry import Catalog

if TYPE_CHECKING:
    from pgbench.estimators.base import (  # noqa: F401
        REGISTRY,
        Advantages,
        Batch,
        Estimator,
        get,
        register,
    )

CATALOG: Catalog[Estimator] = Catalog(
    "estimator",
    {
        "gdpo": "pgbench.estimators.gdpo:GDPO",
        "gpg": "pgbench.estimators.gpg:GPG",
        "grpo": "pgbench.estimators.grpo:GRPO",
        "grpo_passk": "pgbench.estimators.grpo_passk:GRPOPassK",
        "maxrl": "pgbench.estimators.maxrl:MaxRL",
        "opo": "pgbench.estimators.opo:OPO",
        "otb": "pgbench.estimators.otb:OTB",
        "ppo": "pgbench.estimators.ppo:PPO",
        "reinforce": "pgbench.estimators.reinforce:Reinforce",
        "reinforce_pp": "pgbench.estimators.reinforce_pp:ReinforcePP",
        "reinforce_pp_baseline": "pgbench.estimators.reinforce_pp_baseline:ReinforcePPBaseline",
        "remax": "pgbench.estimators.remax:ReMax",
        "rloo": "pgbench.estimators.rloo:RLOO",
    },
    base="pgbench.estimators.base:Estimator",
)
BASE = ("REGISTRY", "Advantages", "Batch", "Estimator", "get", "register")


def __getattr__(name: str) -> Any:
    """`REGISTRY`, `get` and the base classes, every estimator module imported (and so
    registered) first; an estimator module by its name."""
    return CATALOG.package_attribute(__name__, name, BASE)
