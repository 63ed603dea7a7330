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

Cross-attention caches are filled once (the encoder output does not change while
decoding) and then reused as they are.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KVCache", "SlidingWindowCache", "cache_nbytes"]


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


def cache_nbytes(caches) -> int:
    """Total bytes of an iterable of caches (e.g. a model's per-layer list)."""
    return sum(c.nbytes for c in caches)
