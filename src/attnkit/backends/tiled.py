"""Tiled online-softmax attention: the FlashAttention algorithm in PyTorch.

Forward: for each query tile, walk the key blocks the mask's block map marks
non-empty (adjacent ones merged into chunks of up to ``max_chunk`` keys), keep a
running max ``m``, normaliser ``l`` and output ``o`` (online softmax), mask only
the PARTIAL blocks, and save the log-sum-exp per row. Backward recomputes the
weights tile by tile from the saved log-sum-exp (FlashAttention-2), so memory is
O(T * D) plus one (tile x chunk) score buffer -- never (Tq, Tk).

GQA/MQA: a query tile of shape (B, H, tq, D) is viewed as (B, Hkv, G*tq, D) and
multiplied with the shared (B, Hkv, tk, D) key chunk: no per-head copy of K/V;
gradients of the G query heads sum into dK/dV through the same product.

Accumulation is in float32 (float64 for float64 inputs); low-precision inputs are
upcast tile by tile. Fully masked rows get output 0 and log-sum-exp +inf, which
makes their recomputed weights exactly 0 in the backward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..masks import EMPTY, FULL, PARTIAL
from .base import AttentionCall, Backend

NEG_INF = float("-inf")


@dataclass(frozen=True)
class TileConfig:
    """Tile sizes. ``block_q`` x ``block_k`` is the block map's granularity (what is
    skipped or masked); ``max_chunk`` caps the keys one matmul handles. Defaults
    chosen by measurement on CPU (see benchmarks/tiles.py)."""
    block_q: int = 128
    block_k: int = 64
    max_chunk: int = 1024

    def __post_init__(self):
        for name in ("block_q", "block_k", "max_chunk"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"TileConfig: {name} must be a positive int, got {v!r}")
        if self.max_chunk < self.block_k:
            raise ValueError(f"TileConfig: max_chunk ({self.max_chunk}) must be >= block_k "
                             f"({self.block_k})")


@dataclass(frozen=True)
class _Chunk:
    k0: int
    k1: int
    partial: tuple[tuple[int, int], ...]  # key ranges (absolute) that need the mask


def plan(call: AttentionCall, cfg: TileConfig) -> list[list[_Chunk]]:
    """For each query tile, the key chunks to visit (empty blocks skipped)."""
    bq, bk, Tq, Tk = cfg.block_q, cfg.block_k, call.Tq, call.Tk
    nq, nk = math.ceil(Tq / bq), math.ceil(Tk / bk)
    per_chunk = max(1, cfg.max_chunk // bk)
    bm = call.block_map(bq, bk)
    bm = [[FULL] * nk] * nq if bm is None else bm.tolist()
    out = []
    for row in bm:
        chunks, j = [], 0
        while j < nk:
            if row[j] == EMPTY:
                j += 1
                continue
            start = j
            while j < nk and row[j] != EMPTY and j - start < per_chunk:
                j += 1
            partial, p = [], start
            while p < j:  # merge consecutive partial blocks into ranges
                if row[p] == PARTIAL:
                    a = p
                    while p < j and row[p] == PARTIAL:
                        p += 1
                    partial.append((a * bk, min(Tk, p * bk)))
                else:
                    p += 1
            chunks.append(_Chunk(start * bk, min(Tk, j * bk), tuple(partial)))
        out.append(chunks)
    return out


def _to5(t: Tensor, Hkv: int, G: int) -> Tensor:
    """(Bb, Hb, tq, w) with Hb in {1, H} -> broadcastable to (B, Hkv, G, tq, w)."""
    if t.shape[1] == 1:
        return t.unsqueeze(2)
    return t.view(t.shape[0], Hkv, G, t.shape[2], t.shape[3])


class _Run:
    """Everything fixed for one call: shapes, plan, dtypes, dropout seed."""

    def __init__(self, call: AttentionCall, cfg: TileConfig):
        self.call, self.cfg = call, cfg
        self.plan = plan(call, cfg)
        self.acc = torch.float64 if call.dtype == torch.float64 else torch.float32
        self.seed = int(torch.randint(0, 2**62, (1,)).item()) if call.dropout_p > 0 else 0

    def q_tiles(self):
        bq = self.cfg.block_q
        for i, chunks in enumerate(self.plan):
            q0 = i * bq
            yield i, q0, min(self.call.Tq, q0 + bq), chunks

    def scores(self, qs: Tensor, k: Tensor, q0: int, q1: int, c: _Chunk):
        """Scores of one tile: (B, Hkv, G*tq, tk), and tanh(raw/cap) if softcapped."""
        call = self.call
        B, Hkv, G, tq = call.B, call.Hkv, call.G, q1 - q0
        s = torch.matmul(qs, k[:, :, c.k0:c.k1].transpose(-1, -2))  # q pre-scaled
        th = None
        if call.softcap is not None:
            th = torch.tanh(s / call.softcap)
            s = th * call.softcap
        s5 = s.view(B, Hkv, G, tq, c.k1 - c.k0)
        if call.bias is not None:
            b = call.bias.tile(q0, q1, c.k0, c.k1, Tq=call.Tq, Tk=call.Tk, device=s.device,
                               dtype=s.dtype)
            s5 += _to5(b, Hkv, G)
        for a, e in c.partial:
            m = call.mask.tile(q0, q1, a, e, Tq=call.Tq, Tk=call.Tk, device=s.device)
            s5[..., a - c.k0:e - c.k0].masked_fill_(~_to5(m, Hkv, G), NEG_INF)
        return s, th

    def keep(self, i: int, j: int, shape, device) -> Tensor:
        """Dropout keep-mask for tile (i, chunk j), scaled by 1/(1-p); reproducible."""
        g = torch.Generator(device=device)
        g.manual_seed((self.seed + 1_000_003 * i + 7_919 * j) % (2**63 - 1))
        p = self.call.dropout_p
        r = torch.rand(shape, generator=g, device=device, dtype=self.acc)
        return (r >= p).to(self.acc) / (1.0 - p)

    def q_tile(self, x: Tensor, q0: int, q1: int) -> Tensor:
        """(B, H, Tq, X) -> tile (B, Hkv, G*tq, X) in the accumulation dtype."""
        c = self.call
        t = x.view(c.B, c.Hkv, c.G, x.shape[2], x.shape[3])[:, :, :, q0:q1]
        return t.to(self.acc).reshape(c.B, c.Hkv, c.G * (q1 - q0), x.shape[3])

    # ------------------------------------------------------------------
    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        c, acc = self.call, self.acc
        B, H, Hkv, G, Tq = c.B, c.H, c.Hkv, c.G, c.Tq
        k, v = k.to(acc), v.to(acc)
        out = torch.zeros(B, H, Tq, c.Dv, dtype=acc, device=q.device)
        lse = torch.full((B, H, Tq), math.inf, dtype=acc, device=q.device)
        out5 = out.view(B, Hkv, G, Tq, c.Dv)
        lse4 = lse.view(B, Hkv, G, Tq)
        for i, q0, q1, chunks in self.q_tiles():
            if not chunks:
                continue
            tq = q1 - q0
            qs = self.q_tile(q, q0, q1) * c.scale                     # (B, Hkv, G*tq, D)
            m = l = o = None
            for j, ch in enumerate(chunks):
                s, _ = self.scores(qs, k, q0, q1, ch)                # (B, Hkv, G*tq, tk)
                m_new = s.amax(-1, keepdim=True)
                if m is not None:
                    m_new = torch.maximum(m, m_new)
                m_safe = torch.where(m_new == NEG_INF, 0.0, m_new)
                p = s.sub_(m_safe).exp_()
                rowsum = p.sum(-1, keepdim=True)
                if c.dropout_p > 0:
                    p = p * self.keep(i, j, p.shape, p.device)
                pv = torch.matmul(p, v[:, :, ch.k0:ch.k1])
                if m is None:
                    l, o = rowsum, pv
                else:
                    alpha = torch.exp(m - m_safe)
                    l = l.mul_(alpha).add_(rowsum)
                    o = o.mul_(alpha).add_(pv)
                m = m_new
            ok = l > 0
            o = o / torch.where(ok, l, 1.0)
            out5[:, :, :, q0:q1] = o.view(B, Hkv, G, tq, c.Dv)
            lse_t = torch.where(ok, torch.where(m == NEG_INF, 0.0, m) + torch.log(l), math.inf)
            lse4[:, :, :, q0:q1] = lse_t.view(B, Hkv, G, tq)
        return out, lse

    def backward(self, dout, q, k, v, out, lse):
        c, acc = self.call, self.acc
        B, H, Hkv, G, Tq, Tk = c.B, c.H, c.Hkv, c.G, c.Tq, c.Tk
        kf, vf = k.to(acc), v.to(acc)
        dq = torch.zeros(B, H, Tq, c.D, dtype=acc, device=q.device)
        dk = torch.zeros(B, Hkv, Tk, c.D, dtype=acc, device=q.device)
        dv = torch.zeros(B, Hkv, Tk, c.Dv, dtype=acc, device=q.device)
        dbias = None
        if any(t.requires_grad for t in c.bias_tensors):
            dbias = torch.zeros(B, H, Tq, Tk, dtype=acc, device=q.device)
        delta = (dout.to(acc) * out.to(acc)).sum(-1, keepdim=True)   # (B, H, Tq, 1)
        dq5 = dq.view(B, Hkv, G, Tq, c.D)
        for i, q0, q1, chunks in self.q_tiles():
            if not chunks:
                continue
            tq = q1 - q0
            qs = self.q_tile(q, q0, q1) * c.scale                     # (B, Hkv, G*tq, D)
            do = self.q_tile(dout, q0, q1)                            # (B, Hkv, G*tq, Dv)
            lse_t = self.q_tile(lse.unsqueeze(-1), q0, q1)            # (B, Hkv, G*tq, 1)
            dl_t = self.q_tile(delta, q0, q1)
            dq_t = torch.zeros_like(qs)
            for j, ch in enumerate(chunks):
                ks, vs = kf[:, :, ch.k0:ch.k1], vf[:, :, ch.k0:ch.k1]
                s, th = self.scores(qs, kf, q0, q1, ch)
                p = s.sub_(lse_t).exp_()                              # weights (B, Hkv, G*tq, tk)
                dp = torch.matmul(do, vs.transpose(-1, -2))
                if c.dropout_p > 0:
                    keep = self.keep(i, j, p.shape, p.device)
                    dv[:, :, ch.k0:ch.k1] += torch.matmul((p * keep).transpose(-1, -2), do)
                    dp.mul_(keep)
                else:
                    dv[:, :, ch.k0:ch.k1] += torch.matmul(p.transpose(-1, -2), do)
                ds = p.mul_(dp.sub_(dl_t))                            # dL/d(score)
                if dbias is not None:
                    dbias[:, :, q0:q1, ch.k0:ch.k1] += ds.view(B, Hkv, G, tq, -1).reshape(
                        B, H, tq, -1)
                if th is not None:
                    ds.mul_(1.0 - th * th)
                dq_t += torch.matmul(ds, ks)
                dk[:, :, ch.k0:ch.k1] += torch.matmul(ds.transpose(-1, -2), qs)
            dq5[:, :, :, q0:q1] = (dq_t * c.scale).view(B, Hkv, G, tq, c.D)
        dbias_parts = []
        for t in c.bias_tensors:
            if dbias is None or not t.requires_grad:
                dbias_parts.append(None)
            else:
                g = dbias.sum(dim=[d for d in range(4) if t.shape[d] == 1], keepdim=True)
                dbias_parts.append(g.to(t.dtype))
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbias_parts


class _TiledFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, run, *bias_tensors):
        out, lse = run.forward(q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.run = run
        ctx.mark_non_differentiable(lse)
        return out.to(q.dtype), lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv, dbias = ctx.run.backward(dout, q, k, v, out, lse)
        return (dq, dk, dv, None, *dbias)


def tiled_attention(call: AttentionCall, cfg: TileConfig | None = None) -> tuple[Tensor, Tensor]:
    """Output (B, H, Tq, Dv) and log-sum-exp (B, H, Tq) (+inf on fully masked rows)."""
    run = _Run(call, cfg or TileConfig())
    return _TiledFunction.apply(call.q, call.k, call.v, run, *call.bias_tensors)


class TiledBackend(Backend):
    name = "tiled"
    description = "attnkit's FlashAttention (online softmax, block-sparse, O(T*D) memory)"

    def __init__(self, config: TileConfig | None = None):
        self.config = config or TileConfig()

    def forward(self, call: AttentionCall) -> Tensor:
        return tiled_attention(call, self.config)[0]
