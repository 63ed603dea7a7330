"""Key/value caches for autoregressive decoding, one per attention layer.

At step ``t`` a decoder needs the keys and values of every earlier token. A
:class:`KVCache` stores them as ``k, v (B, Hkv, T, D)`` -- per *KV* head, so a
GQA/MQA model with ``Hkv < H`` stores ``H / Hkv`` times less (e.g. 32 query heads
sharing 8 KV heads: 4x smaller; :attr:`nbytes` reports the size).

:class:`SlidingWindowCache` keeps only the last ``window`` positions: memory stays
O(window) however long the generation, which is exact for models whose attention
pattern never looks further back (``window(w - 1)`` or narrower, Mistral-style).
:class:`~attnkit.modules.MultiHeadAttention` checks this on every call: a pattern
that could see a dropped position raises instead of silently changing the output.

:class:`SinkWindowCache` keeps the first ``sinks`` positions and the last ``window``
(StreamingLLM's attention sinks, Xiao et al. 2023): exact for a causal window with the
first G tokens global (``longformer(w, G, causal=True)``, ``window(w) |
global_tokens(range(G))``). Keys keep their original positions (RoPE is applied before
caching); attention masks the kept keys with the columns of the full mask at their
absolute positions (sinks 0..G-1, then the window).

:class:`LinearStateCache` holds causal linear attention's recurrent state instead of
keys (:class:`attnkit.linear.LinearAttentionState`: S = sum phi(k) v^T (B, Hkv, F, Dv),
z = sum phi(k) (B, Hkv, F)): a decoding step costs O(1) in the context.

:func:`kept_keys` reads from a pattern's structure which keys it can read (sinks, reach
back); ``GPT.new_cache(bounded=True)`` picks the cache from it.

Cross-attention caches are filled once (the encoder output does not change while
decoding) and then reused as they are.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from ..linear import linear_attention
from ..masks import AndMask, GlobalTokens, MaskSpec, OrMask

__all__ = ["KVCache", "SlidingWindowCache", "SinkWindowCache", "LinearStateCache",
           "cache_nbytes", "kept_keys"]


class KVCache:
    """Grows by ``update(k, v)``; ``k, v (B, Hkv, T_new, D)``.

    Attributes: ``k``, ``v`` (the stored tensors or None), ``seen`` (positions
    ever added, i.e. the absolute position of the next token), ``dropped``
    (positions evicted; 0 for this class).
    """

    def __init__(self):
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.seen = 0
        self.cross = False  # filled once by set() (cross-attention)

    @property
    def dropped(self) -> int:
        return self.seen - len(self)

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``k, v (B, Hkv, T_new, D)``; return every key/value to attend to
        (the stored ones followed by the new ones)."""
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, Tensor) or t.dim() != 4:
                raise ValueError(f"{name}: expected a 4-D tensor (B, Hkv, T, D), got "
                                 f"{getattr(t, 'shape', type(t).__name__)}")
        if k.shape[:3] != v.shape[:3]:
            raise ValueError(f"v: expected (B, Hkv, T) = {tuple(k.shape[:3])} (from k), got "
                             f"{tuple(v.shape)}")
        if self.k is not None and (self.k.shape[:2] != k.shape[:2] or self.k.shape[3] != k.shape[3]
                                   or self.v.shape[3] != v.shape[3]):
            raise ValueError(f"k: expected (B, Hkv, *, D) = ({self.k.shape[0]}, {self.k.shape[1]}"
                             f", *, {self.k.shape[3]}) like the cached keys, got {tuple(k.shape)}")
        if self.k is None:
            k_all, v_all = k, v
        else:
            k_all, v_all = torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2)
        self.seen += k.shape[2]
        self._store(k_all, v_all)
        return k_all, v_all

    def _store(self, k: Tensor, v: Tensor) -> None:
        self.k, self.v = k, v

    def set(self, k: Tensor, v: Tensor) -> None:
        """Store ``k, v`` as the whole content (cross-attention caches)."""
        self.k, self.v, self.seen, self.cross = k, v, k.shape[2], True

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (beam search: keep the surviving beams)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)

    def reset(self) -> None:
        self.k = self.v = None
        self.seen, self.cross = 0, False

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored keys and values."""
        if self.k is None:
            return 0
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    def __repr__(self):
        shape = None if self.k is None else tuple(self.k.shape)
        return f"{type(self).__name__}(k={shape}, seen={self.seen}, nbytes={self.nbytes})"


class SlidingWindowCache(KVCache):
    """Keeps only the last ``window`` positions (``update`` still returns the stored
    ones plus the new ones, so a prefill longer than the window sees itself whole)."""

    def __init__(self, window: int):
        super().__init__()
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window: expected an int >= 1, got {window!r}")
        self.window = window

    def _store(self, k, v):
        if k.shape[2] > self.window:  # copy, so the evicted part is freed
            k, v = k[:, :, -self.window:].clone(), v[:, :, -self.window:].clone()
        self.k, self.v = k, v

    def __repr__(self):
        return super().__repr__()[:-1] + f", window={self.window})"


class SinkWindowCache(KVCache):
    """Keeps the first ``sinks`` positions and the last ``window`` (``k (B, Hkv, sinks +
    window, D)``, sinks first). ``update`` returns the stored keys plus the new ones, so
    they are at positions 0..sinks-1, then a contiguous run ending at ``seen - 1``."""

    def __init__(self, sinks: int, window: int):
        super().__init__()
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window: expected an int >= 1, got {window!r}")
        if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
            raise ValueError(f"sinks: expected an int >= 0, got {sinks!r}")
        if sinks > window:
            raise ValueError(f"sinks: expected <= window={window} (a few sink tokens and a "
                             f"longer window), got {sinks}")
        self.sinks, self.window = sinks, window

    def _store(self, k, v):
        G, w = self.sinks, self.window
        if k.shape[2] > G + w:  # a new tensor, so the evicted part is freed
            k = torch.cat((k[:, :, :G], k[:, :, -w:]), dim=2)
            v = torch.cat((v[:, :, :G], v[:, :, -w:]), dim=2)
        self.k, self.v = k, v

    def __repr__(self):
        return super().__repr__()[:-1] + f", sinks={self.sinks}, window={self.window})"


class LinearStateCache(KVCache):
    """Causal linear attention's recurrent state instead of keys: :meth:`attend` runs
    :func:`attnkit.linear_attention` from the state and keeps the next one. ``state``:
    a :class:`~attnkit.linear.LinearAttentionState` or None (nothing seen); ``seen``
    counts the tokens folded in. Holds no keys (``k``, ``v`` stay None)."""

    def __init__(self):
        super().__init__()
        self.state = None

    def update(self, k, v):
        raise TypeError("cache: a LinearStateCache holds no keys (linear attention's "
                        "recurrent state); MultiHeadAttention with linear= calls attend()")

    def set(self, k, v):
        raise ValueError("cache: a LinearStateCache serves causal self-attention only; "
                         "cross-attention needs a KVCache")

    def attend(self, q: Tensor, k: Tensor, v: Tensor, feature_map) -> Tensor:
        """``q (B, H, T, D)``, the new ``k (B, Hkv, T, D)``, ``v (B, Hkv, T, Dv)`` ->
        ``out (B, H, T, Dv)``, causal over every token seen; the state advances."""
        out, self.state = linear_attention(q, k, v, feature_map, causal=True,
                                           state=self.state, return_state=True)
        self.seen += k.shape[2]
        return out

    def reorder(self, index: Tensor) -> None:
        st = self.state
        if st is not None:
            self.state = replace(st, S=st.S.index_select(0, index),
                                 z=st.z.index_select(0, index), m=st.m.index_select(0, index))

    def reset(self) -> None:
        super().reset()
        self.state = None

    @property
    def nbytes(self) -> int:
        """Bytes of the state (S, z and the stabiliser m), independent of ``seen``."""
        st = self.state
        return 0 if st is None else sum(t.numel() * t.element_size() for t in (st.S, st.z, st.m))

    def __repr__(self):
        shape = None if self.state is None else tuple(self.state.S.shape)
        return f"LinearStateCache(S={shape}, seen={self.seen}, nbytes={self.nbytes})"


def kept_keys(spec: MaskSpec | None) -> tuple[int, float]:
    """``(G, w)``: a query at p >= G reads only keys k < G (sinks) or p - w <= k, read
    from the spec's structure (``&``, ``|``, windows, global tokens, named patterns' specs;
    any other spec by its ``distance_bounds``); ``w = inf``: no bound. Queries p < G (a
    global row) see no dropped key: a cache drops nothing before G + w tokens."""
    if spec is None:
        return 0, math.inf
    if isinstance(spec, AndMask):   # each side bounds it: the smaller cache
        return min((kept_keys(p) for p in spec.parts), key=lambda r: r[0] + r[1])
    if isinstance(spec, OrMask):
        (a, b), (c, d) = (kept_keys(p) for p in spec.parts)
        return max(a, c), max(b, d)
    if isinstance(spec, GlobalTokens):
        idx = spec.indices
        return (int(idx.max()) + 1 if idx.numel() else 0), -math.inf
    inner = getattr(spec, "spec", None)          # a named pattern: its composed spec
    if isinstance(inner, MaskSpec) and inner is not spec:
        return kept_keys(inner)
    return 0, spec.distance_bounds()[1]


def cache_nbytes(caches) -> int:
    """Total bytes of an iterable of caches (e.g. a model's per-layer list)."""
    return sum(c.nbytes for c in caches)
