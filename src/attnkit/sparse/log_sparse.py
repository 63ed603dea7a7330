"""LogSparse (Li et al. 2019), causal: position p sees itself and the keys at distance
1, 2, 4, 8, ...::

    mask(p, j) = p - j == 0  or  p - j is a power of two
    pairs(n)   ~ n (log2 n + 1)

Runs one diagonal per offset (:mod:`attnkit.kernels.diagonals`), no tiles.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.checks import check_int
from ..masks import EMPTY, PARTIAL, MaskSpec
from .pattern import OffsetPiece, SpecPattern

__all__ = ["LogSparsePattern", "log_sparse"]


class _LogSparse(MaskSpec):
    toeplitz = True

    def allowed(self, b, h, q, k, offset):
        d = q + offset - k
        return (d == 0) | ((d > 0) & (torch.bitwise_and(d, d - 1) == 0))

    def tile_classes(self, q0, q1, k0, k1, offset):
        dmin, dmax = (q0 + offset) - (k1 - 1), (q1 - 1 + offset) - k0
        lo = dmin.clamp(min=1).double()
        top = torch.exp2(torch.floor(torch.log2(dmax.clamp(min=1).double())))  # 2^k <= dmax
        hit = ((dmin <= 0) & (dmax >= 0)) | ((dmax >= 1) & (top >= lo))
        return torch.where(hit, PARTIAL, EMPTY)

    def distance_bounds(self):
        return 0, float("inf")

    def __repr__(self):
        return "log_sparse()"


@dataclass(frozen=True, repr=False)
class LogSparsePattern(SpecPattern):
    @property
    def name(self):
        return "log_sparse()"

    def make_spec(self) -> MaskSpec:
        return _LogSparse()

    def offsets(self, n: int) -> tuple[int, ...]:
        return (0,) + tuple(2 ** j for j in range(max(n - 1, 1).bit_length()) if 2 ** j < n)

    def pairs(self, n):
        return sum(n - d for d in self.offsets(check_int("n", n, 1)))

    def components(self, n):
        return [OffsetPiece(self.offsets(n))]


def log_sparse() -> SpecPattern:
    """LogSparse (causal): itself and the keys at distance 1, 2, 4, 8, ..."""
    return LogSparsePattern()
