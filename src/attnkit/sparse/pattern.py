"""What every named pattern is: a :class:`Pattern` (its mask, exact pair count, and a split
into disjoint *components* laid out so their pairs fill whole tiles), the pieces a
component runs as, and the masks pieces use in their own (permuted / gathered)
coordinates. Execution is in :mod:`.execute`; each pattern has its own short file.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ..core.checks import check_int
from ..masks import EMPTY, FULL, PARTIAL, MaskSpec, PerLength, causal, window

__all__ = ["Pattern", "TiledPiece", "OffsetPiece", "Segments", "KeyBlockBefore", "BlockMatrix",
           "band_pairs", "residue_order", "STRICT_CAUSAL"]

STRICT_CAUSAL = causal() & ~window(0)  # keys strictly before the query


class Pattern:
    """A named sparse pattern (frozen): ``at(n)`` its mask spec for n tokens, ``pairs(n)``
    the exact number of attended (query, key) pairs in n-token self-attention (computed
    without an n x n tensor), ``density(n) = pairs(n) / n**2``, and ``components(n)``."""

    length_dependent = False  # True: the mask itself depends on n (BigBird's random blocks)

    @property
    def name(self) -> str:
        raise NotImplementedError

    @cached_property
    def spec(self) -> MaskSpec:
        """The mask spec (patterns whose mask depends on n: use :meth:`at`)."""
        raise NotImplementedError

    def at(self, n: int) -> MaskSpec:
        """The plain mask spec of this pattern for n tokens (composable)."""
        self.check(check_int("n", n, 1))
        return self.spec

    def as_mask_spec(self) -> MaskSpec:
        """What ``attention(mask=pattern)`` and composition with other specs use: the
        pattern resolved per call (``at(Tk)``, which also checks it applies to Tk)."""
        return PerLength(lambda Tq, Tk: self.at(Tk), self.name)

    def check(self, n: int) -> None:
        """Raise ValueError if the pattern cannot apply to n tokens."""

    def pairs(self, n: int) -> int:
        raise NotImplementedError

    def density(self, n: int) -> float:
        """``pairs(n) / n**2``."""
        return self.pairs(n) / float(check_int("n", n, 1)) ** 2

    def components(self, n: int) -> list:
        """Disjoint pieces whose union is the pattern at n tokens."""
        return [TiledPiece(self.at(n))]

    def __repr__(self):
        return self.name


# ---------------------------------------------------------------------------
# pieces: how one disjoint component is computed (data only; see .execute)
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


@dataclass(frozen=True, eq=False)
class OffsetPiece:
    """Query i attends keys i - d for d in ``offsets`` (:mod:`attnkit.kernels.diagonals`)."""
    offsets: tuple[int, ...]
    rows: int = 1024
    empty = False


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


class BlockMatrix(MaskSpec):
    """Block-level mask: aligned position p sees key k iff M[p // block, k // block], on
    positions 0 .. n-1. It serves any Tk <= n as the prefix of those positions, so a
    KV-cached decoder (Tk = t + 1) and a shorter input see the same (p, k) entries as a
    full-length pass; Tk > n is refused."""

    def __init__(self, M: Tensor, block: int, n: int):
        self.M, self.block, self.n = M, block, n
        P = torch.zeros(M.shape[0] + 1, M.shape[1] + 1, dtype=torch.long)
        P[1:, 1:] = M.long().cumsum(0).cumsum(1)
        self._prefix = P  # 2-D prefix sums: the count of True blocks in any rectangle

    def validate(self, B, H, Tq, Tk):
        if Tk > self.n:
            raise ValueError(f"mask: this block pattern was built for n={self.n} positions "
                             f"(it serves Tk <= n), got Tk={Tk}")

    def allowed(self, b, h, q, k, offset):
        M = self.M.to(q.device)
        qb = torch.div((q + offset).clamp(min=0), self.block, rounding_mode="floor")
        return M[qb, torch.div(k, self.block, rounding_mode="floor")]

    def tile_classes(self, q0, q1, k0, k1, offset):
        b, P = self.block, self._prefix
        a, z = (q0 + offset).clamp(min=0) // b, (q1 - 1 + offset).clamp(min=0) // b + 1
        c, e = k0 // b, (k1 - 1) // b + 1
        cnt = P[z, e] - P[a, e] - P[z, c] + P[a, c]
        full, empty = cnt == (z - a) * (e - c), cnt == 0
        return torch.where(full, FULL, torch.where(empty, EMPTY, PARTIAL))

    def __repr__(self):
        return f"block_matrix(n={self.n}, block={self.block})"


# ---------------------------------------------------------------------------
# counting and layout helpers
# ---------------------------------------------------------------------------
def band_pairs(n: int, left: int, right: int) -> int:
    """#{(i, j) in [0, n)^2: -right <= i - j <= left} (self included)."""
    def side(w):  # distances 1..w
        t = torch.arange(1, min(w, n - 1) + 1, dtype=torch.float64)
        return int((n - t).sum())
    return n + side(left) + side(right)


def residue_order(n: int, s: int) -> tuple[Tensor, Tensor]:
    """Positions sorted by (p mod s, p div s), and where each residue's segment starts:
    in that order, positions at a distance that is a multiple of s are contiguous."""
    p = torch.arange(n)
    perm = torch.argsort((p % s) * n + p // s)
    counts = torch.div(n - torch.arange(min(s, n)) + s - 1, s, rounding_mode="floor")
    starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1]])
    return perm, starts
