"""The sampler's KV cache (pgbench.engine.kv_cache) against transformers' DynamicCache."""

import torch
from transformers import DynamicCache

from pgbench.engine.kv_cache import SamplingCache, SpareRoomLayer


def test_sampling_cache_holds_what_a_dynamic_cache_holds():
    """Prefill, repeat for K samples, decode past the spare room, drop rows, go on: the same
    keys and values as transformers' concatenating DynamicCache, layer by layer."""
    torch.manual_seed(0)
    caches = [SamplingCache(), DynamicCache()]

    def update(length: int) -> None:
        rows = caches[0].layers[0].keys.shape[0] if caches[0].layers else 2
        for layer in range(2):
            keys, values = torch.randn(rows, 3, length, 4), torch.randn(rows, 3, length, 4)
            out = [cache.update(keys, values, layer) for cache in caches]
            assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])

    update(5)  # the prompts
    for cache in caches:
        cache.batch_repeat_interleave(3)
    for _ in range(SpareRoomLayer.SPARE + 3):
        update(1)
    for cache in caches:
        cache.batch_select_indices(torch.tensor([0, 2, 5]))
    update(1)
    update(2)  # several tokens at once (a tool result)
    assert caches[0].get_seq_length() == caches[1].get_seq_length() == 5 + SpareRoomLayer.SPARE + 6
    for mine, theirs in zip(caches[0].layers, caches[1].layers, strict=True):
        assert isinstance(mine, SpareRoomLayer)
        assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)
