"""Sparse Transformer "fixed" (Child et al. 2019), causal.

Position p sees the earlier keys of its own block of ``s`` and the last ``c`` positions
("summary" keys) of every block::

    mask(p, j) = j <= p  and  (p div s == j div s  or  j mod s >= s - c)
    pairs(n)   ~ n s / 2 + c n^2 / (2 s)

Components: the blocks (natural order, causal) and the summary keys of earlier blocks,
gathered into one contiguous run of keys.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.checks import check_int
from ..masks import EMPTY, PARTIAL, MaskSpec
from ..masks import causal as causal_mask
from .pattern import KeyBlockBefore, SpecPattern, Segments, TiledPiece

__all__ = ["FixedPattern", "fixed"]


class _Fixed(MaskSpec):
    def __init__(self, s: int, c: int):
        self.s, self.c = s, c

    def allowed(self, b, h, q, k, offset):
        qp, s = q + offset, self.s
        same = torch.div(qp, s, rounding_mode="floor") == torch.div(k, s, rounding_mode="floor")
        summary = torch.remainder(k, s) >= s - self.c
        return (k <= qp) & (same | summary)

    def tile_classes(self, q0, q1, k0, k1, offset):
        c = causal_mask().tile_classes(q0, q1, k0, k1, offset)
        return torch.where(c == EMPTY, EMPTY, PARTIAL)

    def distance_bounds(self):
        return 0, float("inf")

    def __repr__(self):
        return f"fixed({self.s}, c={self.c})"


@dataclass(frozen=True, repr=False)
class FixedPattern(SpecPattern):
    s: int
    c: int = 1

    @property
    def name(self):
        return f"fixed({self.s}, c={self.c})"

    def make_spec(self) -> MaskSpec:
        return _Fixed(self.s, self.c)

    def pairs(self, n):
        i = torch.arange(check_int("n", n, 1), dtype=torch.float64)
        same = (i % self.s) + 1                      # causal keys in its own block
        return int((same + self.c * torch.div(i, self.s, rounding_mode="floor")).sum())

    def components(self, n):
        p = torch.arange(n)
        summary = p[p % self.s >= self.s - self.c]
        return [TiledPiece(Segments(torch.arange(0, n, self.s)) & causal_mask()),
                TiledPiece(KeyBlockBefore(summary // self.s, self.s), None, summary)]


def fixed(stride: int, summary: int = 1) -> SpecPattern:
    """Sparse Transformer fixed (causal): keys in the query's block of ``stride``, plus
    the last ``summary`` positions of every block."""
    check_int("stride", stride, 1)
    if check_int("summary", summary, 1) > stride:
        raise ValueError(f"summary: expected 1 <= summary <= stride={stride}, got {summary}")
    return FixedPattern(stride, summary)
