"""The transformers cache layers of :mod:`.cache` (this module imports transformers; the
rest of ``attnkit.hf`` imports it only when used)."""
from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import DynamicLayer

from .cache_marks import KEPT, STATE

__all__ = ["SinkWindowLayer", "LinearStateLayer"]


class SinkWindowLayer(DynamicLayer):
    """The first ``sinks`` keys and the last ``window`` keys (each query at p reads the sinks
    and p-window..p). The mask is built for the full key range (``get_mask_sizes``); the
    keys returned carry which columns they are (:func:`kept_mask`)."""

    is_croppable = False

    def __init__(self, sinks: int, window: int, **kwargs):
        super().__init__()
        self.sinks, self.window, self.cumulative_length = int(sinks), int(window), 0

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        evicted = self.cumulative_length > (self.keys.shape[-2] if self.keys.dim() == 4 else 0)
        self.cumulative_length += key_states.shape[-2]
        keys = torch.cat([self.keys, key_states], dim=-2)      # (B, Hkv, kept + Tq, D)
        values = torch.cat([self.values, value_states], dim=-2)
        G, W = self.sinks, self.window
        if keys.shape[-2] > G + W:
            self.keys = torch.cat([keys[:, :, :G], keys[:, :, -W:]], dim=-2)
            self.values = torch.cat([values[:, :, :G], values[:, :, -W:]], dim=-2)
        else:
            self.keys, self.values = keys, values
        if evicted:
            setattr(keys, KEPT, (G, self.cumulative_length))
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cumulative_length + query_length, 0

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return self.sinks + self.window

    def reset(self) -> None:
        super().reset()
        self.cumulative_length = 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise ValueError("crop: a sinks+window cache has dropped keys and cannot roll back")


class LinearStateLayer(DynamicLayer):
    """Causal linear attention's recurrent state (:class:`attnkit.linear.LinearAttentionState`:
    S (B, Hkv, F, Dv), z (B, Hkv, F)) instead of keys: ``update`` hands the new keys to the
    attention function, which continues from the state and stores the next one."""

    is_croppable = False

    def __init__(self, **kwargs):
        super().__init__()
        self.state, self.cumulative_length, self.pending = None, 0, False

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.device, self.is_initialized = key_states.device, True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        if self.pending:
            raise RuntimeError("linear attention cache: the attention function never read the "
                               "last keys (the model changes them between its cache and its "
                               "attention call); a recurrent state cannot serve this model")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        self.pending = True
        setattr(key_states, STATE, self)
        return key_states, value_states

    def advance(self, state) -> None:
        """Called by the attention function with the state after the new keys."""
        self.state, self.pending = state, False

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cumulative_length + query_length, 0

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_max_length(self) -> int:
        return -1

    def _map(self, fn) -> None:
        if self.state is not None:
            st = self.state
            self.state = type(st)(fn(st.S), fn(st.z), fn(st.m), st.feature_map, st.eps, st.t)

    def reorder_cache(self, beam_idx: Tensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        self._map(lambda t: t[indices, ...])

    def reset(self) -> None:
        self.state, self.cumulative_length, self.pending = None, 0, False
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise ValueError("crop: a recurrent linear-attention state cannot roll back")
