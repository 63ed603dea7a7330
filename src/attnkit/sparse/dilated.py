"""Dilated sliding window (Longformer's dilated heads).

Position p sees keys at distance 0, d, 2d, ..., w d (both sides unless causal)::

    mask(p, j) = (p - j) in {0, d, ..., w d}         (causal)
                 |p - j| in {0, d, ..., w d}         (bidirectional)
    pairs(n)   ~ n (w + 1)   /   n (2w + 1)

Runs on positions sorted by (p mod d, p div d): there the pattern is a plain window
inside each residue's segment, so its tiles are full.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from ..core.checks import check_int
from ..masks import MaskSpec
from ..masks import dilated as dilated_mask
from ..masks import window as window_mask
from .pattern import Pattern, Segments, TiledPiece, residue_order

__all__ = ["DilatedPattern", "dilated"]


@dataclass(frozen=True, repr=False)
class DilatedPattern(Pattern):
    w: int
    d: int
    causal: bool = True

    @property
    def name(self):
        return f"dilated({self.w}, {self.d}{'' if self.causal else ', causal=False'})"

    @cached_property
    def spec(self) -> MaskSpec:
        return dilated_mask(self.w, self.d, causal=self.causal)

    def pairs(self, n):
        t = torch.arange(1, self.w + 1, dtype=torch.float64) * self.d
        one_side = int((n - t).clamp(min=0).sum())
        return check_int("n", n, 1) + one_side * (1 if self.causal else 2)

    def components(self, n):
        band = window_mask(self.w, 0 if self.causal else self.w)
        if self.d == 1:
            return [TiledPiece(band)]
        perm, starts = residue_order(n, self.d)
        return [TiledPiece(Segments(starts) & band, perm, perm)]


def dilated(window: int, dilation: int, *, causal: bool = True) -> Pattern:
    """Keys at distance 0, d, 2d, ..., window*d (both sides if not causal)."""
    return DilatedPattern(check_int("window", window, 0), check_int("dilation", dilation, 1),
                          bool(causal))
