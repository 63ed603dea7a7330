"""Position predicates: which keys a query sees, by the distance ``d = p - k`` between the
query's aligned position ``p = q + (Tk - Tq)`` and the key ``k``. ``window`` and
``dilated`` are also patterns (:class:`~.pattern.Pattern`: exact pair counts, and
dilated's components for execution at its pair cost); ``attnkit.sparse`` exports the same
two functions.

=============================  ============================================
``full()``                     every pair
``causal()``                   ``d >= 0``
``window(left, right=0)``      ``-right <= d <= left``
``periodic(period)``           ``d mod period == 0`` (both directions)
``dilated(w, dil, causal)``    ``|d|`` (or ``d``) in ``{0, dil, 2 dil, ..., w dil}``
``global_tokens(idx)``         ``p in idx`` or ``k in idx``
=============================  ============================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from ..core.checks import check_int
from .pattern import Pattern, Segments, TiledPiece, band_pairs, residue_order
from .spec import EMPTY, FULL, INF, PARTIAL, MaskSpec

__all__ = ["FullMask", "Window", "Periodic", "Dilated", "GlobalTokens", "full", "causal",
           "window", "periodic", "dilated", "global_tokens"]


@dataclass(frozen=True, repr=False)
class FullMask(MaskSpec):
    """Every query sees every key."""
    toeplitz = True

    def allowed(self, b, h, q, k, offset):
        return torch.ones_like(q + k, dtype=torch.bool)

    def tile_classes(self, q0, q1, k0, k1, offset):
        return torch.full_like(q0 + k0, FULL)

    def band(self):
        return -INF, INF

    def __repr__(self):
        return "full()"


@dataclass(frozen=True, repr=False)
class Window(Pattern):
    """Key k visible from aligned position p iff ``p - left <= k <= p + right``
    (``left = inf, right = 0`` is causal). A pattern run in natural order: the tiled
    kernel skips the tiles off the band."""
    left: float
    right: float
    toeplitz = True

    def allowed(self, b, h, q, k, offset):
        d = (q + offset) - k  # >= 0: key in the past
        out = d == d          # all True, from comparisons only (traceable by FlexAttention)
        if not math.isinf(self.left):
            out = out & (d <= self.left)
        if not math.isinf(self.right):
            out = out & (d >= -self.right)
        return out

    def tile_classes(self, q0, q1, k0, k1, offset):
        dmin = (q0 + offset) - (k1 - 1)   # smallest distance in the tile
        dmax = (q1 - 1 + offset) - k0     # largest
        lo, hi = -self.right, self.left
        full = (dmin >= lo) & (dmax <= hi)
        empty = (dmax < lo) | (dmin > hi)
        return torch.where(full, FULL, torch.where(empty, EMPTY, PARTIAL))

    def distance_bounds(self):
        return -self.right, self.left

    def band(self):
        return -self.right, self.left

    @property
    def is_causal(self):
        return self.left == INF and self.right == 0

    def pairs(self, n):
        return band_pairs(check_int("n", n, 1), self.left, self.right)

    def __repr__(self):
        if self.is_causal:
            return "causal()"
        return f"window({self.left}, {self.right})"


@dataclass(frozen=True, repr=False)
class Periodic(MaskSpec):
    """Keys at a distance that is a multiple of ``period``, in both directions (one of the
    two heads of the Sparse Transformer's strided pattern; for the pattern itself see
    :func:`attnkit.sparse.strided`)."""
    period: int
    toeplitz = True

    def allowed(self, b, h, q, k, offset):
        return torch.remainder((q + offset) - k, self.period) == 0

    def tile_classes(self, q0, q1, k0, k1, offset):
        # the distances in a tile are every integer in [dmin, dmax]: it holds a hit iff
        # that range holds a multiple of the period; it is full only for period 1 (or a
        # single cell that is a hit)
        dmin, dmax = (q0 + offset) - (k1 - 1), (q1 - 1 + offset) - k0
        hit = torch.div(dmax, self.period, rounding_mode="floor") * self.period >= dmin
        full = hit & ((dmin == dmax) | (self.period == 1))
        return torch.where(full, FULL, torch.where(hit, PARTIAL, EMPTY))

    def __repr__(self):
        return f"periodic({self.period})"


@dataclass(frozen=True, repr=False)
class Dilated(Pattern):
    """Dilated window: keys at distance 0, d, 2d, ... up to ``window`` steps back
    (both directions unless causal); Longformer's dilated heads. As a pattern it runs on
    positions sorted by (p mod d, p div d), where it is a plain window inside each
    residue's segment (full tiles)::

        pairs(n) ~ n (w + 1)   /   n (2w + 1)
    """
    window: int
    dilation: int
    causal: bool
    toeplitz = True

    def allowed(self, b, h, q, k, offset):
        d = (q + offset) - k
        dd = d if self.causal else d.abs()
        return ((dd >= 0) & (torch.remainder(dd, self.dilation) == 0)
                & (dd <= self.window * self.dilation))

    def tile_classes(self, q0, q1, k0, k1, offset):
        span = self.window * self.dilation
        outer = Window(span, 0 if self.causal else span).tile_classes(q0, q1, k0, k1, offset)
        if self.dilation == 1:
            return outer
        return torch.where(outer == EMPTY, EMPTY, PARTIAL)

    def distance_bounds(self):
        span = self.window * self.dilation
        return (0 if self.causal else -span), span

    def pairs(self, n):
        t = torch.arange(1, self.window + 1, dtype=torch.float64) * self.dilation
        one_side = int((n - t).clamp(min=0).sum())
        return check_int("n", n, 1) + one_side * (1 if self.causal else 2)

    def components(self, n):
        band = Window(self.window, 0 if self.causal else self.window)
        if self.dilation == 1:
            return [TiledPiece(band)]
        perm, starts = residue_order(n, self.dilation)
        return [TiledPiece(Segments(starts) & band, perm, perm)]

    def __repr__(self):
        return (f"dilated({self.window}, {self.dilation}"
                f"{'' if self.causal else ', causal=False'})")


@dataclass(frozen=True, repr=False, eq=False)
class GlobalTokens(MaskSpec):
    """Global tokens attend to every key and every query attends to them (Longformer)."""
    indices: Tensor = field(repr=False)  # (G,) int64, sorted, positions in key space
    flags: Tensor = field(repr=False)    # (n + 1,) bool, flags[p] = p is global; flags[n] = False

    def validate(self, B, H, Tq, Tk):
        if self.indices.numel() and int(self.indices.max()) >= Tk:
            raise ValueError(f"global_tokens: indices must be < Tk={Tk}, got max index "
                             f"{int(self.indices.max())}")

    def allowed(self, b, h, q, k, offset):
        n = self.flags.numel() - 1  # a constant: no data-dependent control flow (FlexAttention)
        qp = q + offset             # negative when Tq > Tk: before every key, never global
        qp = torch.where((qp < 0) | (qp > n), n, qp)
        kp = torch.where(k > n, n, k)
        return self.flags[qp] | self.flags[kp]

    def tile_classes(self, q0, q1, k0, k1, offset):
        idx = self.indices.cpu()
        if idx.numel() == 0:
            return torch.full_like(q0 + k0, EMPTY)

        def count(a0, a1):  # global indices in [a0, a1)
            return (torch.searchsorted(idx, a1.contiguous())
                    - torch.searchsorted(idx, a0.contiguous()))
        kc, qc = count(k0, k1), count(q0 + offset, q1 + offset)
        # full only if each row is global (all rows) or each column is global (all columns)
        full = (kc == (k1 - k0)) | (qc == (q1 - q0))
        return torch.where(full, FULL, torch.where((kc > 0) | (qc > 0), PARTIAL, EMPTY))

    def tensors(self):
        return [self.indices]

    def to(self, device):
        return GlobalTokens(self.indices.to(device), self.flags.to(device))

    def __repr__(self):
        return f"global_tokens({self.indices.tolist()})"


# ---------------------------------------------------------------------------
# constructors
# ---------------------------------------------------------------------------
def full() -> MaskSpec:
    """No masking (every query sees every key)."""
    return FullMask()


def causal() -> MaskSpec:
    """Query at aligned position p sees keys 0..p (aligned to the end when Tq < Tk)."""
    return Window(INF, 0)


def window(left: int, right: int = 0) -> Window:
    """Sliding window: query at position p sees keys p-left .. p+right (inclusive).

    ``window(w)`` is a causal window of ``w`` keys back (w+1 keys including itself;
    Mistral's sliding window); ``window(w, w)`` is bidirectional (Longformer's local
    attention). Pairs ~ n (left + right + 1).
    """
    return Window(check_int("left", left, minimum=0), check_int("right", right, minimum=0))


def periodic(period: int) -> MaskSpec:
    """Keys whose distance to the query is a multiple of ``period`` (both directions).

    ``causal() & (window(s - 1) | periodic(s))`` is the Sparse Transformer's strided
    pattern, also available by name as :func:`attnkit.sparse.strided`.
    """
    return Periodic(check_int("period", period, minimum=1))


def dilated(window: int, dilation: int, *, causal: bool = True) -> Dilated:
    """Dilated window: keys at distances 0, d, 2d, ..., window*d (both sides if not causal)."""
    return Dilated(check_int("window", window, minimum=0),
                   check_int("dilation", dilation, minimum=1), bool(causal))


def global_tokens(indices: Sequence[int] | Tensor) -> MaskSpec:
    """Tokens (key positions) that attend to all and are attended by all (Longformer).

    Combine with a local pattern: ``window(w, w) | global_tokens([0])``.
    """
    idx = torch.as_tensor(indices, dtype=torch.long).flatten()
    if idx.numel() and int(idx.min()) < 0:
        raise ValueError(f"global_tokens: indices must be >= 0, got {int(idx.min())}")
    idx = torch.unique(idx)
    n = int(idx.max()) + 1 if idx.numel() else 0
    flags = torch.zeros(n + 1, dtype=torch.bool)
    flags[idx] = True
    return GlobalTokens(idx, flags)
