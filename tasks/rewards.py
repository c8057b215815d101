"""Translation rewards and corpus metrics (sacrebleu), with several references per example.

Sentence rewards are scaled to [0, 1]; corpus metrics are reported on sacrebleu's 0-100 scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sacrebleu.metrics import BLEU, CHRF

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
