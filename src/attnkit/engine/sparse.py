"""``sparse_attention``: a pattern's components run and merged by log-sum-exp, so time and
memory follow the pattern's pair count, not n^2.

Each component is a piece (:mod:`attnkit.sparse.pattern`): a :class:`TiledPiece` runs the tiled kernel
on gathered/permuted rows and keys, an :class:`OffsetPiece` the diagonal kernel. The
partial results merge with :func:`attnkit.kernels.merge_partial` (the merge ring attention
uses); the backward gives each piece the merged output and log-sum-exp, so each
accumulates exactly its share of the gradients (FlashAttention-2's recomputation).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..call import make_call
from ..kernels import (TileConfig, TiledRun, acc_dtype, diagonal_backward, diagonal_forward,
                       merge_partial, tiled_attention)
from ..kernels.autograd import first_order_only
from ..masks import MaskSpec, as_mask
from ..sparse.pattern import OffsetPiece, Pattern, TiledPiece

__all__ = ["sparse_attention", "SparseFunction"]

NEG_INF = float("-inf")


def _cfg(piece: TiledPiece, cfg: TileConfig | None) -> TileConfig:
    if cfg is not None:
        return cfg
    if piece.block is not None:  # tiles = the pattern's blocks
        return TileConfig(piece.block, piece.block, max(1024, piece.block))
    return TileConfig()


def _pick(t: Tensor, index: Tensor | None) -> Tensor:
    return t if index is None else t.index_select(2, index.to(t.device))


def _piece_call(piece: TiledPiece, q, k, v, scale):
    qc, kc, vc = _pick(q, piece.q_index), _pick(k, piece.k_index), _pick(v, piece.k_index)
    return make_call(qc, kc, vc, mask=piece.spec, scale=scale)


class SparseFunction(torch.autograd.Function):
    """Forward: every piece, merged; backward: every piece's share of dq, dk, dv."""

    @staticmethod
    def forward(ctx, q, k, v, pieces, scale, cfg):
        B, H, n, _ = q.shape
        acc = acc_dtype(q.dtype)
        lse = q.new_full((B, H, n), NEG_INF, dtype=acc)
        out = q.new_zeros(B, H, n, v.shape[-1], dtype=acc)
        runs = []  # the tiled pieces' plans, reused by the backward
        for piece in pieces:
            if isinstance(piece, OffsetPiece):
                o, l = diagonal_forward(q, k, v, scale, piece.offsets, piece.rows)
                merge_partial(out, lse, o, l)
                runs.append(None)
                continue
            call = _piece_call(piece, q, k, v, scale)
            runs.append(TiledRun(call, _cfg(piece, cfg)))
            o, l = runs[-1].forward(call.q, call.k, call.v)
            rows = piece.q_index
            if rows is None:
                merge_partial(out, lse, o, l)
            else:                                  # gather, merge, scatter back
                rows = rows.to(out.device)
                sub_o, sub_l = out.index_select(2, rows), lse.index_select(2, rows)
                merge_partial(sub_o, sub_l, o, l)
                out.index_copy_(2, rows, sub_o)
                lse.index_copy_(2, rows, sub_l)
        lse = torch.where(lse == NEG_INF, math.inf, lse)         # the kernels' convention
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.pieces, ctx.runs, ctx.scale = pieces, runs, scale
        return out.to(q.dtype)

    @staticmethod
    @first_order_only("a sparse pattern's attention (sparse_attention)")
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        acc = out.dtype
        dout = dout.contiguous().to(acc)
        dq, dk, dv = (torch.zeros(t.shape, dtype=acc, device=t.device) for t in (q, k, v))
        for piece, run in zip(ctx.pieces, ctx.runs):
            if isinstance(piece, OffsetPiece):
                diagonal_backward(q, k, v, ctx.scale, piece.offsets, dout, out, lse, dq, dk, dv,
                                  piece.rows)
                continue
            qi, ki = piece.q_index, piece.k_index
            c = run.call
            gq, gk, gv, _ = run.backward(_pick(dout, qi), c.q, c.k, c.v, _pick(out, qi),
                                         _pick(lse, qi))
            for total, g, i in ((dq, gq, qi), (dk, gk, ki), (dv, gv, ki)):
                if i is None:
                    total += g
                else:
                    total.index_add_(2, i.to(total.device), g.to(total.dtype))
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


def sparse_attention(q: Tensor, k: Tensor, v: Tensor, pattern, *, scale: float | None = None,
                     cfg: TileConfig | None = None) -> Tensor:
    """Self-attention restricted to ``pattern`` in time and memory that follow its pairs.

    q (B, H, n, D), k (B, Hkv, n, D), v (B, Hkv, n, Dv) -> (B, H, n, Dv); GQA allowed.
    ``pattern``: a :class:`Pattern` (run by its components) or any mask spec (run by the
    tiled kernel in natural order). ``cfg`` overrides the tile sizes of every piece.
    Exact: equals ``attention(q, k, v, mask=pattern)``; differentiable (custom backward).
    For decoding (Tq < Tk) use ``attention(..., mask=pattern)``.
    """
    if not isinstance(pattern, (Pattern, MaskSpec)):
        raise TypeError(f"pattern: expected a Pattern or MaskSpec, got {type(pattern).__name__}")
    call = make_call(q, k, v, mask=pattern, scale=scale)  # validates shapes and the pattern
    if call.Tq != call.Tk:
        raise ValueError(f"q, k: sparse_attention is self-attention and expects Tq == Tk, got "
                         f"Tq={call.Tq}, Tk={call.Tk} (use attnkit.attention for decoding)")
    n = call.Tk
    pieces = pattern.components(n) if isinstance(pattern, Pattern) else [
        TiledPiece(as_mask(pattern).resolve(n, n))]
    pieces = [p for p in pieces if not p.empty]  # e.g. no summary keys
    p0 = pieces[0]
    if len(pieces) == 1 and isinstance(p0, TiledPiece) and p0.q_index is None and (
            p0.k_index is None):
        return tiled_attention(make_call(q, k, v, mask=p0.spec, scale=call.scale),
                               _cfg(p0, cfg))[0]
    return SparseFunction.apply(q, k, v, pieces, call.scale, cfg)
