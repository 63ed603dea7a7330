"""BigBird (Zaheer et al. 2020), block-level: each query block sees the ``window_blocks``
blocks either side, the first ``global_blocks`` blocks (which see everything), and
``random_blocks`` key blocks drawn with ``seed``::

    M[a, c]    = |a - c| <= wb  or  a < g  or  c < g  or  c in R[a]   (blocks of b tokens)
    mask(p, j) = M[p div b, j div b]                   (and j <= p if causal)
    pairs(n)   ~ n b (2 wb + 1 + 2 g + r)

The random blocks R depend on n (the number of blocks), so the mask is drawn per length:
``at(n)`` is the plain spec for n tokens (it also serves any Tk <= n as a prefix, for
cached decoding). Runs in natural order with tiles = BigBird blocks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.checks import check_int
from ..masks import MaskSpec, causal as causal_mask
from .pattern import BlockMatrix, SpecPattern, TiledPiece

__all__ = ["BigBirdPattern", "DrawnBlocks", "bigbird"]


@dataclass(frozen=True, repr=False, eq=False)
class BigBirdPattern(SpecPattern):
    block: int = 64
    window_blocks: int = 1
    global_blocks: int = 1
    random_blocks_per_row: int = 2
    seed: int = 0
    causal: bool = False
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    length_dependent = True
    toeplitz = opaque = False  # known without drawing the blocks

    @property
    def name(self):
        return (f"bigbird(block={self.block}, window={self.window_blocks}, "
                f"globals={self.global_blocks}, random={self.random_blocks_per_row}, "
                f"seed={self.seed}{', causal=True' if self.causal else ''})")

    def make_spec(self) -> MaskSpec:
        raise TypeError(f"{self.name}: its mask depends on n (random blocks); use at(n)")

    def resolve(self, Tq, Tk):
        return self.at(Tk)

    def check(self, n):
        g, b = self.global_blocks, self.block
        if g * b > n:
            raise ValueError(f"bigbird: global_blocks * block = {g} * {b} = {g * b} global "
                             f"tokens exceeds n={n} tokens")

    def _base(self, nb: int) -> Tensor:
        """Window and global blocks, (nb, nb) bool (causal: no later key blocks)."""
        i = torch.arange(nb)
        d = i[:, None] - i[None, :]
        g = self.global_blocks
        out = (d.abs() <= self.window_blocks) | (i[:, None] < g) | (i[None, :] < g)
        return out & (d >= 0) if self.causal else out

    def random_blocks(self, n: int) -> Tensor:
        """(nb, random_blocks) key blocks drawn for each query block (-1 = none left):
        uniform without replacement among blocks not in its window or global (causal:
        earlier blocks only), from ``seed``."""
        nb = math.ceil(check_int("n", n, 1) / self.block)
        i = torch.arange(nb)
        taken = self._base(nb) | (i[:, None] < self.global_blocks)   # global rows see all
        if self.causal:
            taken = taken | (i[None, :] > i[:, None])
        gen = torch.Generator().manual_seed(self.seed)
        score = torch.rand(nb, nb, generator=gen, dtype=torch.float64).masked_fill(taken, -1.0)
        top = score.topk(min(self.random_blocks_per_row, nb), dim=1)
        return torch.where(top.values >= 0, top.indices, -1)

    def blocks(self, n: int) -> Tensor:
        """The block-level mask (nb, nb) bool: window | global | random."""
        return self._drawn(n)[0]

    def at(self, n: int) -> MaskSpec:
        """The pattern drawn for n tokens (a plain block mask, composable, whose tiles are
        BigBird's blocks); it also serves Tk < n as the prefix of those positions (cached
        decoding), never Tk > n."""
        return self._drawn(n)[1]

    def _drawn(self, n: int):
        self.check(check_int("n", n, 1))
        if n not in self._cache:
            nb = math.ceil(n / self.block)
            blk = self._base(nb)
            R = self.random_blocks(n)
            rows = torch.arange(nb)[:, None].expand_as(R)
            blk[rows[R >= 0], R[R >= 0]] = True
            spec = BlockMatrix(blk, self.block, n)
            spec = spec & causal_mask() if self.causal else spec
            self._cache[n] = (blk, DrawnBlocks(spec, self.block, f"{self.name} at n={n}", blk,
                                               n, self.causal))
        return self._cache[n]

    def pairs(self, n):
        return block_pairs(self.blocks(n), self.block, n, self.causal)

    def components(self, n):
        return self.at(n).components(n)


def block_pairs(blk: Tensor, block: int, n: int, causal: bool) -> int:
    """Pairs of a block-level mask ``blk (nb, nb)`` over n tokens in blocks of ``block``."""
    blk = blk.double()
    lens = torch.full((blk.shape[0],), float(block), dtype=torch.float64)
    lens[-1] = n - block * (blk.shape[0] - 1)
    full = lens[:, None] * lens[None, :] * blk
    if not causal:
        return int(full.sum())
    # causal: strictly-lower blocks count whole, diagonal blocks a triangle
    return int(full.tril(-1).sum() + (lens * (lens + 1) / 2 * blk.diagonal()).sum())


@dataclass(frozen=True, repr=False, eq=False)
class DrawnBlocks(SpecPattern):
    """A block mask drawn for one length (BigBird at n): run in natural order with tiles
    of its ``block`` size, so every tile is one of its blocks (full or empty)."""
    blocks: MaskSpec
    block: int
    label: str
    M: Tensor = field(repr=False)  # (nb, nb) bool: the drawn block-level mask
    n: int = 0                     # drawn for n tokens: serves any length <= n
    causal: bool = False

    @property
    def name(self):
        return self.label

    def pairs(self, n):
        if check_int("n", n, 1) > self.n:
            raise ValueError(f"n: {self.label} serves at most {self.n} tokens, got n={n}")
        nb = math.ceil(n / self.block)
        return block_pairs(self.M[:nb, :nb], self.block, n, self.causal)

    def make_spec(self) -> MaskSpec:
        return self.blocks

    def components(self, n):
        return [TiledPiece(self.blocks, block=self.block)]


def bigbird(block: int = 64, window_blocks: int = 1, global_blocks: int = 1,
            random_blocks: int = 2, seed: int = 0, *, causal: bool = False) -> SpecPattern:
    """BigBird, block-level (see the module doc). ``causal``: keys after the query are
    masked and random blocks are drawn from earlier blocks."""
    return BigBirdPattern(check_int("block", block, 1), check_int("window_blocks", window_blocks, 0),
                          check_int("global_blocks", global_blocks, 0),
                          check_int("random_blocks", random_blocks, 0), check_int("seed", seed, 0),
                          bool(causal))
