"""Sparse Transformer "strided" (Child et al. 2019), causal.

Position p sees the last ``s`` keys and every ``s``-th key before them::

    mask(p, j) = j <= p  and  (p - j < s  or  (p - j) mod s == 0)
    pairs(n)   ~ n s + n^2 / (2 s)          (~ n^1.5 with s = sqrt(n))

Components: the band ``p - j < s`` in natural order, and the strictly-earlier keys at a
multiple of ``s`` on positions sorted by (p mod s, p div s), where they are contiguous
segments (so their tiles are full, not scattered).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.checks import check_int
from ..masks import MaskSpec, causal, periodic, window
from .pattern import STRICT_CAUSAL, SpecPattern, Segments, TiledPiece, residue_order

__all__ = ["StridedPattern", "strided"]


@dataclass(frozen=True, repr=False)
class StridedPattern(SpecPattern):
    s: int

    @property
    def name(self):
        return f"strided({self.s})"

    def make_spec(self) -> MaskSpec:
        return causal() & (window(self.s - 1) | periodic(self.s))

    def pairs(self, n):
        d = torch.arange(check_int("n", n, 1), dtype=torch.float64)
        keep = (d < self.s) | (d % self.s == 0)
        return int(((n - d) * keep).sum())

    def components(self, n):
        perm, starts = residue_order(n, self.s)
        return [TiledPiece(window(self.s - 1)),                                   # the band
                TiledPiece(Segments(starts) & STRICT_CAUSAL, perm, perm)]


def strided(stride: int) -> SpecPattern:
    """Sparse Transformer strided (causal): the last ``stride`` keys and every
    ``stride``-th one before. ~ n^1.5 pairs with ``stride = math.isqrt(n)``."""
    return StridedPattern(check_int("stride", stride, 1))
