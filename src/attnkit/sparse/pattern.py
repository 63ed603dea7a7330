"""What the named patterns share: :class:`SpecPattern` (a pattern whose mask is a composed
spec, ``self.spec``, that every mask question is delegated to) and the masks a few of
them are built from. The pattern protocol itself (:class:`Pattern`, the pieces
``components`` returns) is in :mod:`attnkit.masks.pattern`; execution is in
:mod:`attnkit.kernels.pieces`; each pattern has its own short file.
"""
from __future__ import annotations

import torch

from ..masks import EMPTY, FULL, PARTIAL, MaskSpec, causal, window
from ..masks.pattern import (KeyBlockBefore, OffsetPiece, Pattern, Segments, TiledPiece,
                             band_pairs, residue_order)

__all__ = ["Pattern", "SpecPattern", "TiledPiece", "OffsetPiece", "Segments", "KeyBlockBefore",
           "BlockMatrix", "band_pairs", "residue_order", "STRICT_CAUSAL"]

STRICT_CAUSAL = causal() & ~window(0)  # keys strictly before the query


class SpecPattern(Pattern):
    """A named pattern whose mask is the spec ``make_spec()`` (built once, kept in
    ``_spec``): ``allowed``, tile classes, bounds and validation are that spec's."""

    def make_spec(self) -> MaskSpec:
        raise NotImplementedError(f"{type(self).__name__}.make_spec")

    @property
    def spec(self) -> MaskSpec:
        if "_spec" not in self.__dict__:
            self.__dict__["_spec"] = self.make_spec()   # frozen dataclasses: no setattr
        return self.__dict__["_spec"]

    @property
    def toeplitz(self):
        return self.spec.toeplitz

    @property
    def opaque(self):
        return self.spec.opaque

    def allowed(self, b, h, q, k, offset):
        return self.spec.allowed(b, h, q, k, offset)

    def tile_classes(self, q0, q1, k0, k1, offset):
        return self.spec.tile_classes(q0, q1, k0, k1, offset)

    def extent(self):
        return self.spec.extent()

    def distance_bounds(self):
        return self.spec.distance_bounds()

    def band(self):
        return self.spec.band()

    def validate(self, B, H, Tq, Tk):
        self.check(Tk)
        self.spec.validate(B, H, Tq, Tk)

    def tensors(self):
        return self.spec.tensors()

    def to(self, device):
        """Itself when its spec holds no tensor to move; else the moved spec (a plain
        spec, run in natural order: only such patterns hold tensors)."""
        if not any(t.device != torch.device(device) for t in self.tensors()):
            return self
        return self.spec.to(device)

    def __repr__(self):
        return self.name


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
