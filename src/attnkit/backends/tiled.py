"""The ``tiled`` backend: attnkit's FlashAttention (:mod:`attnkit.kernels.tiled`) --
online softmax over key tiles, block-sparse by the mask's block map, O(T*D) memory -- and
the sparse backend: a sparse pattern (:class:`attnkit.masks.Pattern`) runs at its pair
cost, as its disjoint components (:mod:`attnkit.kernels.pieces`), whenever the call allows
it (self-attention without bias, dropout or sinks); otherwise in natural order.

What ``auto`` works out for a call here (the tile sizes, a pattern's pieces, the block
map) is kept on the call (:meth:`AttentionCall.once`), so ``forward`` does not redo it."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..call import AttentionCall
from ..kernels.merge import with_sinks
from ..kernels.pieces import layout, pieces_attention
from ..kernels.tiled import tiled_attention
from ..kernels.tiles import TileConfig, config_for, single_threaded_caller
from ..masks import EMPTY
from .base import Backend, auto_priority
from .sdpa import DENSE_MASK_BUDGET

__all__ = ["TiledBackend", "TileConfig", "tiled_attention", "SPARSE_DENSITY", "band_density",
           "mask_density"]

SPARSE_DENSITY = 0.5  # block-map fill below which 'auto' prefers tiled


def band_density(band: tuple[float, float], Tq: int, Tk: int, block_q: int,
                 block_k: int) -> float:
    """Fraction of non-empty tiles of the block map of a band mask ``lo <= (q + Tk - Tq) - k
    <= hi`` (causal, windows, their ``&``), from Python integers alone: no tensor is built,
    so ``auto`` decides without a host sync (``torch.compile`` traces it without a graph
    break). Equals ``(spec.block_map(...) != EMPTY).mean()`` (tested)."""
    lo, hi = band
    nq, nk = -(-Tq // block_q), -(-Tk // block_k)
    if nq == 0 or nk == 0:
        return 1.0  # nothing to skip
    if lo > hi:
        return 0.0
    off, visible = Tk - Tq, 0
    for i in range(nq):
        q0 = i * block_q
        q1 = min(Tq, q0 + block_q)
        # key block j is non-empty iff its largest distance >= lo and its smallest <= hi:
        # j * block_k <= q1 - 1 + off - lo  and  min(Tk, (j + 1) * block_k) - 1 >= q0 + off - hi
        top = nk - 1 if lo == -math.inf else min(nk - 1, math.floor((q1 - 1 + off - lo) / block_k)
                                                  if q1 - 1 + off - lo >= 0 else -1)
        start = q0 + off - hi            # the smallest distance must reach hi
        if start > Tk - 1:
            continue
        first = 0 if start == -math.inf else max(0, math.floor(start / block_k))
        visible += max(0, top - first + 1)
    return visible / (nq * nk)


def mask_density(call: AttentionCall, block_q: int, block_k: int) -> float:
    """Fraction of the tiles of the call's (non-None) mask that are not EMPTY. Band masks
    (causal, windows) are counted in Python (:func:`band_density`); any other mask builds
    its block map, whose reduction is a host sync (a graph break under torch.compile)."""
    band = call.mask.band()
    if band is not None:
        return band_density(band, call.Tq, call.Tk, block_q, block_k)
    with single_threaded_caller():
        bm = call.block_map(block_q, block_k)
    return float((bm != EMPTY).float().mean()) if bm.numel() else 1.0


def _num(x, spec: str) -> str:
    """``format(x, spec)``; under torch.compile sizes may be symbolic: then a placeholder."""
    return "?" if torch.compiler.is_compiling() else format(x, spec)


class TiledBackend(Backend):
    name = "tiled"
    description = "attnkit's FlashAttention (online softmax, block-sparse, O(T*D) memory)"

    def __init__(self, config: TileConfig | None = None):
        self.config = config  # None: per call, kernels.tiles.config_for

    def auto_preference(self, call: AttentionCall):
        nbytes = call.dense_bytes()
        if torch.compiler.is_compiling() and nbytes <= DENSE_MASK_BUDGET:
            return None  # it plans tiles in Python (a graph break): sdpa/reference trace
        if call.softcap is not None:
            return auto_priority("tiled:skip"), "softcap: SDPA cannot apply it"
        pieces = layout(call)
        if pieces is not None and not all(p.natural for p in pieces):
            density = call.mask.density(call.Tk)
            if density < SPARSE_DENSITY:
                return auto_priority("tiled:skip"), (
                    f"sparse pattern {call.mask.name} ({_num(density, '.0%')} of pairs): tiled "
                    f"runs it at its pair cost, as {len(pieces)} piece(s)")
        if call.mask is not None:
            cfg = self.config or config_for(call)
            density = mask_density(call, cfg.block_q, cfg.block_k)
            if density < SPARSE_DENSITY:
                return auto_priority("tiled:skip"), (
                    f"sparse mask ({_num(density, '.0%')} of tiles non-empty): tiled skips "
                    "the rest")
        if (call.mask is not None or call.bias is not None) and nbytes > DENSE_MASK_BUDGET:
            return auto_priority("tiled:large"), (
                f"a dense mask would need {_num(nbytes / 2**30, '.2f')} GiB; tiled needs O(T*D)")
        return auto_priority("tiled"), "online softmax over key tiles, O(T*D) memory"

    serves_sinks = True  # its log-sum-exp is differentiable (kernels.merge.with_sinks)

    def forward(self, call: AttentionCall) -> Tensor:
        pieces = layout(call)
        if pieces is not None:
            return pieces_attention(call, pieces, self.config)
        out, lse = tiled_attention(call, self.config)
        return out if call.sinks is None else with_sinks(out, lse, call.sinks)
