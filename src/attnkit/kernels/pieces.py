"""A pattern's attention at its pair cost: its disjoint components (pieces) run and merged
by log-sum-exp, so time and memory follow the pattern's pair count, not n^2.

Each piece (:mod:`attnkit.masks.pattern`) is a :class:`TiledPiece` -- the tiled kernel on
gathered/permuted rows and keys -- or an :class:`OffsetPiece` -- the diagonal kernel. The
partial results merge with :func:`attnkit.kernels.merge_partial` (the merge ring attention
uses); the backward gives each piece the merged output and log-sum-exp, so each
accumulates exactly its share of the gradients (FlashAttention-2's recomputation).

:func:`layout` says which pieces a call runs as (once per call: ``auto`` asks it to
choose, the ``tiled`` backend to run); :func:`pieces_attention` runs them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..call import AttentionCall, make_call
from ..masks.pattern import OffsetPiece, Pattern, TiledPiece
from .autograd import first_order_only
from .diagonals import diagonal_backward, diagonal_forward
from .merge import merge_partial
from .reference import acc_dtype
from .tiled import TiledRun, tiled_attention
from .tiles import TileConfig, config_for

__all__ = ["layout", "pieces_attention", "piece_config", "PiecesFunction"]

NEG_INF = float("-inf")


def layout(call: AttentionCall) -> list | None:
    """The pieces the call's mask runs as at its pair cost, or None: natural order (no
    pattern, a pattern whose one piece is itself, or a call the pieces cannot serve --
    Tq != Tk, a bias, dropout or sinks, which need the natural positions or the row
    log-sum-exp as a differentiable output; softcap with diagonal pieces, whose kernel
    has none). Worked out once per call."""
    m = call.mask
    if not isinstance(m, Pattern) or type(m).components is Pattern.components or (
            call.Tq != call.Tk or call.bias is not None or call.dropout_p > 0
            or call.sinks is not None):
        return None  # (the default components: itself in natural order)
    pieces = call.once("pieces", lambda: _pieces(m, call.Tk))
    if pieces and call.softcap is not None and any(isinstance(p, OffsetPiece) for p in pieces):
        return None
    return pieces


def _pieces(pattern: Pattern, n: int) -> list | None:
    pieces = [p for p in pattern.components(n) if not p.empty]  # e.g. no summary keys
    p0 = pieces[0]
    if len(pieces) == 1 and p0.natural and p0.spec is pattern and p0.block is None:
        return None
    return pieces


def piece_config(piece: TiledPiece, call: AttentionCall, cfg: TileConfig | None) -> TileConfig:
    """The tiles of a piece: ``cfg`` if given; else the pattern's blocks, or what the
    call's own mask would get (:func:`config_for`) for a piece in natural order."""
    if cfg is not None:
        return cfg
    if piece.block is not None:  # tiles = the pattern's blocks
        return TileConfig(piece.block, piece.block, max(1024, piece.block))
    return config_for(call) if piece.natural else TileConfig()


def pieces_attention(call: AttentionCall, pieces: list, cfg: TileConfig | None = None) -> Tensor:
    """Differentiable attention of a self-attention call as the union of ``pieces``
    (:func:`layout`); ``cfg`` overrides the tiles of every tiled piece. Output (B, H, n, Dv)
    in q's dtype."""
    p0 = pieces[0]
    if len(pieces) == 1 and isinstance(p0, TiledPiece) and p0.natural:
        return tiled_attention(make_call(call.q, call.k, call.v, mask=p0.spec, scale=call.scale,
                                         softcap=call.softcap),
                               piece_config(p0, call, cfg))[0]
    return PiecesFunction.apply(call.q, call.k, call.v, pieces, call, cfg)


def _pick(t: Tensor, index: Tensor | None) -> Tensor:
    return t if index is None else t.index_select(2, index.to(t.device))


def _piece_run(piece: TiledPiece, call: AttentionCall, cfg: TileConfig | None) -> TiledRun:
    qc, kc, vc = (_pick(t, i) for t, i in ((call.q, piece.q_index), (call.k, piece.k_index),
                                           (call.v, piece.k_index)))
    sub = make_call(qc, kc, vc, mask=piece.spec, scale=call.scale, softcap=call.softcap)
    return TiledRun(sub, piece_config(piece, call, cfg))


class PiecesFunction(torch.autograd.Function):
    """Forward: every piece, merged; backward: every piece's share of dq, dk, dv."""

    @staticmethod
    def forward(ctx, q, k, v, pieces, call, cfg):
        B, H, n, _ = q.shape
        acc = acc_dtype(q.dtype)
        lse = q.new_full((B, H, n), NEG_INF, dtype=acc)
        out = q.new_zeros(B, H, n, v.shape[-1], dtype=acc)
        runs = []  # the tiled pieces' plans, reused by the backward
        for piece in pieces:
            if isinstance(piece, OffsetPiece):
                o, l = diagonal_forward(q, k, v, call.scale, piece.offsets, piece.rows)
                merge_partial(out, lse, o, l)
                runs.append(None)
                continue
            runs.append(_piece_run(piece, call, cfg))
            c = runs[-1].call
            o, l = runs[-1].forward(c.q, c.k, c.v)
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
        ctx.pieces, ctx.runs, ctx.call = pieces, runs, call
        return out.to(q.dtype)

    @staticmethod
    @first_order_only("a sparse pattern's attention (its pieces)")
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        acc = out.dtype
        dout = dout.contiguous().to(acc)
        dq, dk, dv = (torch.zeros(t.shape, dtype=acc, device=t.device) for t in (q, k, v))
        for piece, run in zip(ctx.pieces, ctx.runs):
            if isinstance(piece, OffsetPiece):
                diagonal_backward(q, k, v, ctx.call.scale, piece.offsets, dout, out, lse,
                                  dq, dk, dv, piece.rows)
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
