"""Translation rewards and corpus metrics (sacrebleu), with several references per example,
and the parser of reward specs such as `chrf+0.5*embed`.

Sentence rewards are scaled to [0, 1]; corpus metrics are reported on sacrebleu's 0-100 scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF

from pgbench.errors import ConfigError

REWARD_NAMES = ("chrf", "bleu", "embed", "bertscore", "comet")
MODEL_REWARDS = ("embed", "comet")  # scored by a neural model (tasks/model_rewards.py)

_CHRF = CHRF()
_SENTENCE_BLEU = BLEU(effective_order=True)


def sentence_chrf(hypothesis: str, references: Sequence[str]) -> float:
    """chrF of one hypothesis against its references, in [0, 1]."""
    return _CHRF.sentence_score(hypothesis, list(references)).score / 100.0


def sentence_bleu(hypothesis: str, references: Sequence[str]) -> float:
    """Smoothed sentence BLEU (effective n-gram order), in [0, 1]."""
    return _SENTENCE_BLEU.sentence_score(hypothesis, list(references)).score / 100.0


SENTENCE_REWARDS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "chrf": sentence_chrf,
    "bleu": sentence_bleu,
}


def _reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Transpose per-example reference lists into sacrebleu's streams, padding with None."""
    width = max(len(refs) for refs in references)
    return [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]


def corpus_metrics(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Corpus chrF and BLEU (0-100) of hypotheses against multi-references."""
    streams = _reference_streams(references)
    hyps = list(hypotheses)
    return {
        "chrf": CHRF().corpus_score(hyps, streams).score,
        "bleu": BLEU().corpus_score(hyps, streams).score,
    }


@dataclass(frozen=True)
class RewardTerm:
    """One `weight*name` term of a reward spec."""

    name: str
    weight: float


def parse_reward_spec(spec: str) -> tuple[RewardTerm, ...]:
    """`"chrf+0.5*embed"` -> (chrf x 1.0, embed x 0.5): `[weight*]name` terms joined by `+`.

    Raises ConfigError naming the bad term and the valid names.
    """
    terms: list[RewardTerm] = []
    usage = f"use [weight*]name terms joined by + with names {', '.join(REWARD_NAMES)}"
    for raw in spec.split("+"):
        text = raw.replace(" ", "")
        weight_text, star, name = text.rpartition("*")
        try:
            weight = float(weight_text) if star else 1.0
        except ValueError:
            weight = math.nan
        if name not in REWARD_NAMES or not (math.isfinite(weight) and weight > 0):
            raise ConfigError(
                f"task.reward={spec!r}: bad term {raw.strip()!r}; {usage} and positive weights "
                "(e.g. chrf+0.5*embed)"
            )
        if name in (term.name for term in terms):
            raise ConfigError(f"task.reward={spec!r}: {name} appears twice; give it once")
        terms.append(RewardTerm(name, weight))
    return tuple(terms)
