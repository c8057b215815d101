"""The sampler's KV cache: transformers' DynamicCache with room to spare, so that decoding
one token does not copy the whole cache (the engine's `sampling` and `scoring` use it)."""

from __future__ import annotations

import inspect

from torch import Tensor
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer


def cache_keyword(model: PreTrainedModel) -> str:
    """Name of the KV-cache argument of the model's forward: `cache` in recent transformers,
    `past_key_values` in older ones (a PEFT wrapper passes it on to its base model)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


class SpareRoomLayer(DynamicLayer):
    """A DynamicLayer that writes each decoded token's keys and values into buffers with room
    to spare, where DynamicLayer concatenates (torch.cat copies the whole cache at every token:
    a quarter of the sampling time of a 50M policy on CPU). `keys` / `values` are views of the
    buffers; a row selection or repeat replaces them, and the next update re-buffers them."""

    SPARE = 64  # positions of room added at each (re)allocation

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: object, **kwargs: object
    ) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        end = length + key_states.shape[-2]
        buffers = getattr(self, "buffers", None)
        if buffers is None or self.keys is not self.views[0] or end > buffers[0].shape[-2]:
            pairs = ((self.keys, key_states), (self.values, value_states))
            buffers = self.buffers = [self._room(old, new, end + self.SPARE) for old, new in pairs]
        buffers[0][..., length:end, :] = key_states
        buffers[1][..., length:end, :] = value_states
        self.keys, self.values = self.views = (buffers[0][..., :end, :], buffers[1][..., :end, :])
        return self.keys, self.values

    @staticmethod
    def _room(old: Tensor, new: Tensor, capacity: int) -> Tensor:
        """A buffer [B, H, capacity, D] starting with the `old` cached states."""
        buffer = new.new_empty(*new.shape[:-2], capacity, new.shape[-1])
        if old.numel():
            buffer[..., : old.shape[-2], :] = old
        return buffer


class SamplingCache(DynamicCache):
    """The sampler's KV cache: a DynamicCache of SpareRoomLayers."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=SpareRoomLayer)
