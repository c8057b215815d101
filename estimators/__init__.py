"""Policy-gradient estimators: how a batch of rewards becomes advantages.

`pgbench.estimators.get(name, **fields)` returns an estimator. Sequence-level estimators
map `rewards [P, K]` (P prompts, K samples each) to `advantages [P, K]`; token-level ones
(REINFORCE++, PPO) override `token_advantages`. Estimators are pure: KL, loss aggregation,
sampling and the optimiser are shared knobs of the core.
"""

from __future__ import annotations

# each module registers itself
from pgbench.estimators import (  # noqa: F401
    gpg,
    grpo,
    opo,
    ppo,
    reinforce,
    reinforce_pp,
    reinforce_pp_baseline,
    remax,
    rloo,
)
from pgbench.estimators.base import (  # noqa: F401
    REGISTRY,
    Advantages,
    Batch,
    Estimator,
    get,
    register,
)
