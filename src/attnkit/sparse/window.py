"""Sliding window (local attention; Longformer's band, Mistral's sliding window).

Position p sees keys ``p - w .. p`` (causal) or ``p - w .. p + w``::

    mask(p, j) = 0 <= p - j <= w            (causal)
                 |p - j| <= w               (bidirectional)
    pairs(n)   ~ n (w + 1)   /   n (2w + 1)

Runs in natural order: the tiled kernel skips the tiles off the band.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ..core.checks import check_int
from ..masks import MaskSpec, window as window_mask
from .pattern import Pattern, band_pairs

__all__ = ["WindowPattern", "window"]


@dataclass(frozen=True, repr=False)
class WindowPattern(Pattern):
    w: int
    causal: bool = True

    @property
    def name(self):
        return f"window({self.w}{'' if self.causal else ', causal=False'})"

    @cached_property
    def spec(self) -> MaskSpec:
        return window_mask(self.w, 0 if self.causal else self.w)

    def pairs(self, n):
        return band_pairs(check_int("n", n, 1), self.w, 0 if self.causal else self.w)


def window(w: int, *, causal: bool = True) -> Pattern:
    """Position p sees p-w .. p (causal) or p-w .. p+w."""
    return WindowPattern(check_int("window", w, 0), bool(causal))
