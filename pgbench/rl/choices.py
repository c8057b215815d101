"""The choices of the shared loss knobs, as Literal types, in a module without torch.

The configuration (pgbench.config.sections) types its knobs with them, so that `--help` and a
configuration error need no tensor code; the modules that implement each choice (`losses`,
`policy_losses`, `correction`) name the same values.
"""

from __future__ import annotations

from typing import Literal

KLEstimator = Literal["k1", "k2", "k3", "k1_plus", "k3_plus"]
Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm", "prompt_mean"]
PolicyForm = Literal[
    "ppo_clip",
    "cispo",
    "gmpo",
    "sapo",
    "clip_cov",
    "kl_cov",
    "dppo_tv",
    "dppo_kl",
    "m2po",
    "topr",
    "kimi",
    "vespo",
    "luspo",
]
RatioLevel = Literal["token", "sequence"]
Correction = Literal[
    "none",
    "tis",
    "mis",
    "icepop",
    "seq_mask_tis",
    "reject_token_k1",
    "reject_seq_sum_k1",
    "reject_seq_mean_k3",
]
Level = Literal["token", "sequence"]
