"""Longformer (Beltagy et al. 2020): a sliding window plus global tokens.

Position p sees keys within ``w`` on either side; global tokens attend to every key and
every query attends to them (with ``causal``: all of this restricted to j <= p)::

    mask(p, j) = |p - j| <= w  or  p in G  or  j in G     (and j <= p if causal)
    pairs(n)   ~ n (2w + 1) + 2 |G| n

Runs in natural order (global rows and columns, the band).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from ..core.checks import check_int
from ..masks import MaskSpec, causal, global_tokens
from ..masks import window as window_mask
from .pattern import SpecPattern

__all__ = ["LongformerPattern", "longformer"]


@dataclass(frozen=True, repr=False, eq=False)
class LongformerPattern(SpecPattern):
    w: int
    idx: Tensor = field(repr=False)   # (G,) sorted global positions
    label: str = ""
    causal: bool = False

    @property
    def name(self):
        return f"longformer({self.w}, globals={self.label}{', causal=True' if self.causal else ''})"

    def make_spec(self) -> MaskSpec:
        band = window_mask(self.w, 0 if self.causal else self.w) | global_tokens(self.idx)
        return band & causal() if self.causal else band

    def check(self, n):
        if self.idx.numel() > n or (self.idx.numel() and int(self.idx.max()) >= n):
            raise ValueError(f"longformer: globals must be positions < n={n} (at most n "
                             f"tokens), got {self.idx.numel()} with max "
                             f"{int(self.idx.max())}")

    def pairs(self, n):
        self.check(check_int("n", n, 1))
        i, G = torch.arange(n), self.idx
        lo = (i - self.w).clamp(min=0)
        hi = i if self.causal else (i + self.w).clamp(max=n - 1)
        outside = torch.searchsorted(G, lo)                         # globals left of the band
        if not self.causal:
            outside = outside + G.numel() - torch.searchsorted(G, hi, right=True)
        row = hi - lo + 1 + outside                                 # a non-global row
        is_g = torch.zeros(n, dtype=torch.bool)
        is_g[G] = True
        everything = i + 1 if self.causal else torch.full_like(i, n)
        return int(torch.where(is_g, everything, row).sum())


def longformer(window: int, globals: int | Sequence[int] = 1, *, causal: bool = False) -> SpecPattern:
    """Longformer: window plus global tokens (attend to and attended by all; with
    ``causal``, all earlier). ``globals`` is a count (the first tokens) or positions."""
    check_int("window", window, 0)
    if isinstance(globals, int) and not isinstance(globals, bool):
        idx, label = torch.arange(check_int("globals", globals, 0)), str(globals)
    else:
        idx = torch.as_tensor(list(globals), dtype=torch.long)
        if idx.numel() and int(idx.min()) < 0:
            raise ValueError(f"globals: positions must be >= 0, got {int(idx.min())}")
        idx, label = torch.unique(idx), str(list(globals))
    return LongformerPattern(window, idx, label, bool(causal))
