"""Patterns: masks with a block structure (:class:`Pattern`), the pieces a pattern's
attention runs as, and the masks those pieces use in their own (permuted / gathered)
coordinates.

A pattern *is* a mask spec: ``attention(q, k, v, mask=p)`` takes it like any spec, and it
composes with ``&``, ``|``, ``~`` (the result is a plain spec, run in natural order). On
top of the spec protocol (:mod:`.spec`) it knows its exact pair count for n-token
self-attention (``pairs(n)``, without an n x n tensor) and a split into disjoint
*components* laid out so their pairs fill whole tiles (``components(n)``): the ``tiled``
backend runs those (:mod:`attnkit.kernels.pieces`), so time follows the pairs. The
position patterns ``window`` and ``dilated`` are in :mod:`.position`, the named ones
(strided, fixed, longformer, bigbird, log_sparse) in :mod:`attnkit.sparse`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.checks import check_int
from .spec import EMPTY, FULL, PARTIAL, MaskSpec

__all__ = ["Pattern", "TiledPiece", "OffsetPiece", "Segments", "KeyBlockBefore",
           "band_pairs", "residue_order"]


class Pattern(MaskSpec):
    """A mask spec with a block structure: ``pairs(n)`` the exact number of attended
    (query, key) pairs in n-token self-attention, ``density(n) = pairs(n) / n**2``,
    ``components(n)`` its disjoint pieces (default: one piece, itself in natural order),
    ``at(n)`` the spec for n tokens (``resolve(n, n)``; checks the pattern applies)."""

    length_dependent = False  # True: the mask itself depends on n (BigBird's random blocks)

    @property
    def name(self) -> str:
        return repr(self)

    def at(self, n: int) -> MaskSpec:
        """The spec of this pattern for n tokens (itself unless it depends on n)."""
        self.check(check_int("n", n, 1))
        return self.resolve(n, n)

    def check(self, n: int) -> None:
        """Raise ValueError if the pattern cannot apply to n tokens."""

    def validate(self, B, H, Tq, Tk):
        self.check(Tk)

    def pairs(self, n: int) -> int:
        raise NotImplementedError(f"{type(self).__name__}.pairs")

    def density(self, n: int) -> float:
        """``pairs(n) / n**2``."""
        return self.pairs(n) / float(check_int("n", n, 1)) ** 2

    def components(self, n: int) -> list:
        """Disjoint pieces whose union is the pattern at n tokens (self-attention)."""
        return [TiledPiece(self.at(n))]


# ---------------------------------------------------------------------------
# pieces: how one disjoint component is computed (data only; run by kernels.pieces)
# ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TiledPiece:
    """The tiled kernel on q[q_index], k/v[k_index] (None = all, natural order) with
    ``spec`` in those coordinates; ``block``: tile size matching the pattern's blocks."""
    spec: MaskSpec
    q_index: Tensor | None = None  # (Tq',) int64
    k_index: Tensor | None = None  # (Tk',) int64
    block: int | None = None

    @property
    def empty(self) -> bool:
        return any(i is not None and i.numel() == 0 for i in (self.q_index, self.k_index))

    @property
    def natural(self) -> bool:
        """All queries and keys in natural order (no gather, no permutation)."""
        return self.q_index is None and self.k_index is None


@dataclass(frozen=True, eq=False)
class OffsetPiece:
    """Query i attends keys i - d for d in ``offsets`` (:mod:`attnkit.kernels.diagonals`)."""
    offsets: tuple[int, ...]
    rows: int = 1024
    empty = False
    natural = False


# ---------------------------------------------------------------------------
# masks in a piece's own coordinates
# ---------------------------------------------------------------------------
class Segments(MaskSpec):
    """Query and key in the same contiguous segment; ``starts`` sorted, ``starts[0] = 0``."""

    def __init__(self, starts: Tensor):
        self.starts = starts

    def _seg(self, p: Tensor) -> Tensor:
        return torch.searchsorted(self.starts.to(p.device), p.contiguous(), right=True) - 1

    def allowed(self, b, h, q, k, offset):
        return self._seg(q + offset) == self._seg(k)

    def tile_classes(self, q0, q1, k0, k1, offset):
        a, z = self._seg(q0 + offset), self._seg(q1 - 1 + offset)  # (nq, 1)
        c, e = self._seg(k0), self._seg(k1 - 1)                    # (1, nk)
        full = (a == z) & (c == e) & (a == c)
        empty = (z < c) | (e < a)
        return torch.where(full, FULL, torch.where(empty, EMPTY, PARTIAL))

    def to(self, device):
        return Segments(self.starts.to(device))

    def __repr__(self):
        return f"segments({self.starts.numel()})"


class KeyBlockBefore(MaskSpec):
    """Gathered summary keys: key u (in block ``kblock[u]``, nondecreasing) is visible from
    query q (raw index, in block q // size) iff kblock[u] < q // size."""

    def __init__(self, kblock: Tensor, size: int):
        self.kblock, self.size = kblock, size

    def allowed(self, b, h, q, k, offset):
        return self.kblock.to(k.device)[k] < torch.div(q, self.size, rounding_mode="floor")

    def tile_classes(self, q0, q1, k0, k1, offset):
        kb = self.kblock.cpu()
        full = kb[k1 - 1] < q0 // self.size
        empty = kb[k0] >= (q1 - 1) // self.size
        return torch.where(full, FULL, torch.where(empty, EMPTY, PARTIAL))

    def to(self, device):
        return KeyBlockBefore(self.kblock.to(device), self.size)

    def __repr__(self):
        return f"key_block_before(size={self.size})"


# ---------------------------------------------------------------------------
# counting and layout helpers
# ---------------------------------------------------------------------------
def band_pairs(n: int, left: float, right: float) -> int:
    """#{(i, j) in [0, n)^2: -right <= i - j <= left} (self included when the band holds
    distance 0), from one term per distance: O(n), no n x n tensor."""
    lo, hi = max(-right, 1 - n), min(left, n - 1)
    if lo > hi:
        return 0
    d = torch.arange(int(math.ceil(lo)), int(math.floor(hi)) + 1, dtype=torch.float64)
    return int((n - d.abs()).sum())


def residue_order(n: int, s: int) -> tuple[Tensor, Tensor]:
    """Positions sorted by (p mod s, p div s), and where each residue's segment starts:
    in that order, positions at a distance that is a multiple of s are contiguous."""
    p = torch.arange(n)
    perm = torch.argsort((p % s) * n + p // s)
    counts = torch.div(n - torch.arange(min(s, n)) + s - 1, s, rounding_mode="floor")
    starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1]])
    return perm, starts
