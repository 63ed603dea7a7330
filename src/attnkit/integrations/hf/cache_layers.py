"""The transformers cache layers of :mod:`.cache` (this module imports transformers; the
rest of ``attnkit.hf`` imports it only when used)."""
from __future__ import annotations

import sys

import torch
from torch import Tensor
from transformers.cache_utils import DynamicLayer, StaticLayer

from .cache_marks import KEPT, STATE

__all__ = ["SinkWindowLayer", "StaticSinkWindowLayer", "LinearStateLayer", "rope_frequencies",
           "rope_shift"]


class SinkWindowLayer(DynamicLayer):
    """The first ``sinks`` keys and the last ``window`` keys (each query at p reads the sinks
    and p-window..p). The mask is built for the full key range (``get_mask_sizes``); the
    keys returned carry which columns they are (:func:`kept_mask`).

    ``inv_freq`` (the model's RoPE frequencies, :func:`rope_frequencies`): re-positioned
    sinks (StreamingLLM). The keys are stored as the model rotated them (original
    positions); for a query at cache index s past the first G + W + 1 keys, a copy of the
    G sinks is rotated by s - W - G, so that they sit just before the window (distances
    W + G .. W + 1 from the query, as if the kept keys were contiguous)."""

    is_croppable = False

    def __init__(self, sinks: int, window: int, inv_freq: Tensor | None = None, **kwargs):
        super().__init__()
        self.sinks, self.window, self.cumulative_length = int(sinks), int(window), 0
        self.inv_freq = inv_freq                                 # (D/2,) or None

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
        shift = self.cumulative_length - 1 - W - G   # the last query's sinks: s - W - G
        if self.inv_freq is not None and shift > 0:
            if key_states.shape[-2] > 1:
                raise ValueError(
                    f"reposition=True: a chunk of {key_states.shape[-2]} tokens reaching cache "
                    f"index {self.cumulative_length - 1} needs a different sink position per "
                    f"query; expected at most G + W + 1 = {G + W + 1} tokens before decoding "
                    "one token per step")
            keys = torch.cat([rope_shift(keys[:, :, :G], shift, self.inv_freq),
                              keys[:, :, G:]], dim=-2)           # (B, Hkv, G + W + 1, D)
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


class StaticSinkWindowLayer(StaticLayer):
    """The static (compilable) form of :class:`SinkWindowLayer`, following transformers'
    ``StaticSlidingWindowLayer``: fixed tensors (B, Hkv, C, D) of C = min(G + W + 1,
    max_cache_len) slots, written in place: slots 0..G-1 hold the first G keys (they stay),
    slots G..C-1 the last W + 1 keys (a shifted buffer, the newest last; the window of a
    query at p is p-W..p, itself included). Until the buffer fills, slot j is position j and
    the mask covers the C slots (the pattern allows every pair among them); after it, the
    mask is built for the full key range and the keys returned carry which columns they
    are (``KEPT``, read by :func:`.cache.kept_mask`), as :class:`SinkWindowLayer`'s do.
    Keys stay as the model rotated them: original positions, exact vs the full cache.

    ``is_compileable`` is False: the tensors are fixed and written in place, but a decoding
    step is not one graph (its mask covers the full key range, which grows every step), so
    ``generate`` must not auto-compile it on a GPU (recompiling each step); an explicit
    ``torch.compile`` still gives the same logits."""

    is_croppable = False
    is_compileable = False

    def __init__(self, max_cache_len: int, sinks: int, window: int, **kwargs):
        self.sinks, self.window = int(sinks), int(window)
        self.capacity = self.sinks + self.window + 1          # what eviction needs
        super().__init__(max_cache_len=min(self.capacity, int(max_cache_len)))
        self.cumulative_length_int = 0                        # python int: no data-dependent flow
        self.evicted = False

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        Tq, start = key_states.shape[-2], self.cumulative_length_int
        C, G = self.max_cache_len, self.sinks
        fits = not self.evicted and start + Tq <= C
        if not fits and C < self.capacity:
            raise ValueError(f"cache: a static sinks + window cache of max_cache_len={C} is too "
                             f"short: position {start + Tq - 1} evicts keys, which needs G + W + 1 "
                             f"= {self.capacity} slots; expected max_cache_len >= prompt + new "
                             "tokens (as generate sizes it)")
        self.cumulative_length_int += Tq
        if fits:                                                 # every key still fits
            pos = torch.arange(Tq, device=self.device) + self.cumulative_length
            self.keys.index_copy_(2, pos, key_states)           # (B, Hkv, C, D)
            self.values.index_copy_(2, pos, value_states)
            self.cumulative_length.add_(Tq)
            return self.keys, self.values
        if self.evicted and Tq == 1:                             # a decoding step, in place
            win_k, win_v = self.keys[:, :, G:], self.values[:, :, G:]      # (B, Hkv, W+1, D)
            win_k.copy_(torch.cat([win_k[:, :, 1:], key_states], dim=-2))
            win_v.copy_(torch.cat([win_v[:, :, 1:], value_states], dim=-2))
            keys, values = self.keys, self.values
        else:                    # a chunk that reaches past the buffer: kept + new, as theirs
            n = C if self.evicted else start
            keys = torch.cat([self.keys[:, :, :n], key_states], dim=-2)   # (B, Hkv, n + Tq, D)
            values = torch.cat([self.values[:, :, :n], value_states], dim=-2)
            self.keys[:, :, G:].copy_(keys[:, :, -(C - G):])
            self.values[:, :, G:].copy_(values[:, :, -(C - G):])
            if not self.evicted:                                # the first G keys, once
                self.keys[:, :, :G].copy_(keys[:, :, :G])
                self.values[:, :, :G].copy_(values[:, :, :G])
                self.evicted = True
                return keys, values                             # every position 0..start+Tq-1
        setattr(keys, KEPT, (G, self.cumulative_length_int))
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        total = self.cumulative_length_int + query_length
        return (self.max_cache_len if not self.evicted and total <= self.max_cache_len
                else total), 0

    def get_seq_length(self) -> int:
        return self.cumulative_length_int

    def get_max_length(self) -> int:
        return self.max_cache_len

    def reset(self) -> None:
        super().reset()
        self.cumulative_length_int, self.evicted = 0, False
        if self.is_initialized and hasattr(self.keys, KEPT):
            delattr(self.keys, KEPT)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise ValueError("crop: a static sinks + window cache cannot roll back")


def rope_shift(x: Tensor, delta: int, inv_freq: Tensor) -> Tensor:
    """Keys ``x`` (..., D) already rotated by RoPE (transformers' rotate_half layout) moved
    ``delta`` positions further: R(p + delta) = R(delta) R(p); angles in fp64."""
    ang = float(delta) * inv_freq.to(device=x.device, dtype=torch.float64)   # (D/2,)
    cos, sin = torch.cat([ang, ang]).cos(), torch.cat([ang, ang]).sin()      # (D,)
    xf = x.to(torch.float64)
    half = x.shape[-1] // 2
    rot = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rot * sin).to(x.dtype)


_SHIFTABLE = ("default", "linear", "llama3", "yarn")   # frequencies fixed in the length


def rope_frequencies(model) -> Tensor:
    """The RoPE ``inv_freq`` (D/2,) of a transformers decoder, for :func:`rope_shift`;
    ValueError when the model has no standard RoPE (learned positions, ALiBi, frequencies
    that change with the length, per-layer RoPE, another rotation layout)."""
    base = getattr(model, "model", model)
    rot = getattr(base, "rotary_emb", None)
    name = type(model).__name__
    kind = getattr(rot, "rope_type", None)
    if rot is None or not isinstance(getattr(rot, "inv_freq", None), Tensor):
        raise ValueError(f"reposition=True: model {name} has no standard RoPE "
                         "(model.model.rotary_emb with inv_freq); re-positioned sinks need "
                         "rotary positions (use reposition=False: original positions)")
    if kind not in _SHIFTABLE:
        raise ValueError(f"reposition=True: model {name} has rope_type {kind!r}; expected one "
                         f"of {', '.join(_SHIFTABLE)} (frequencies fixed in the length)")
    layers = getattr(base, "layers", None)
    attn = getattr(layers[0], "self_attn", None) if layers is not None and len(layers) else None
    apply = getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None)
    D = 2 * rot.inv_freq.numel()
    if (apply is None or getattr(attn, "head_dim", None) != D
            or not _rotates_as_shift(rot, apply, D)):
        raise ValueError(f"reposition=True: model {name}'s RoPE does not compose as "
                         "rotate_half rotations of the whole head (partial or interleaved "
                         "rotary); re-positioned sinks are not served for it")
    return rot.inv_freq.detach().clone()


def _rotates_as_shift(rot, apply, D: int) -> bool:
    """The model's own RoPE at positions a equals its RoPE at 0 moved by a (:func:`rope_shift`)."""
    g = torch.Generator().manual_seed(0)
    dev = rot.inv_freq.device
    x = torch.randn(1, 1, 3, D, generator=g).to(dev)              # (B, H, T, D)
    at = torch.tensor([[5, 17, 40]], device=dev)
    try:
        y = apply(x, x, *rot(x, at))[1]
        y0 = apply(x, x, *rot(x, torch.zeros_like(at)))[1]
    except (RuntimeError, ValueError, TypeError, IndexError):
        return False
    moved = torch.cat([rope_shift(y0[:, :, i:i + 1], int(a), rot.inv_freq)
                       for i, a in enumerate(at[0].tolist())], dim=2)
    return bool(torch.allclose(moved, y, atol=1e-4, rtol=1e-4))


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
