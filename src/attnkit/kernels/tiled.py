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

import functools
import math
import threading

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..call import AttentionCall
from .tiles import Chunk, TileConfig, plan, run_parallel, workers

__all__ = ["TiledRun", "tiled_forward", "tiled_backward", "tiled_attention"]

NEG_INF = float("-inf")
LOG2E = 1.4426950408889634  # 1 / ln 2
LN2 = 0.6931471805599453


def _to5(t: Tensor, Hkv: int, G: int) -> Tensor:
    """(Bb, Hb, tq, w) with Hb in {1, H} -> broadcastable to (B, Hkv, G, tq, w)."""
    if t.shape[1] == 1:
        return t.unsqueeze(2)
    return t.view(t.shape[0], Hkv, G, t.shape[2], t.shape[3])


class TiledRun:
    """Everything fixed for one call: shapes, plan, dtypes, dropout seed."""

    def __init__(self, call: AttentionCall, cfg: TileConfig):
        self.call, self.cfg = call, cfg
        self.plan = plan(call, cfg)
        self._mask_cache: dict = {}
        self.acc = torch.float64 if call.dtype == torch.float64 else torch.float32
        self.seed = int(torch.randint(0, 2**62, (1,)).item()) if call.dropout_p > 0 else 0

    def q_tiles(self):
        bq = self.cfg.block_q
        for i, chunks in enumerate(self.plan):
            q0 = i * bq
            yield i, q0, min(self.call.Tq, q0 + bq), chunks

    def scores(self, qs: Tensor, k: Tensor, q0: int, q1: int, c: Chunk):
        """Scores of one tile in base 2 (natural scores * log2 e, so exp2 gives the weights):
        (B, Hkv, G*tq, tk), and tanh(raw/cap) if softcapped. ``qs`` is q * scale, times
        log2 e unless softcapped (see ``q_scaled``)."""
        call = self.call
        B, Hkv, G, tq = call.B, call.Hkv, call.G, q1 - q0
        kc = k[:, :, c.k0:c.k1].transpose(-1, -2)
        th = None
        if call.softcap is None:
            s = torch.matmul(qs, kc)
        else:
            th = torch.tanh(torch.matmul(qs, kc).div_(call.softcap))
            s = th * (call.softcap * LOG2E)
        s5 = s.view(B, Hkv, G, tq, c.k1 - c.k0)
        if call.bias is not None:
            s5 += self.bias_tile(q0, q1, c.k0, c.k1, s.device, s.dtype)
        for a, e in c.partial:
            s5[..., a - c.k0:e - c.k0] += self.mask_bias(q0, q1, a, e, s.device, s.dtype)
        return s, th

    def bias_tile(self, q0, q1, k0, k1, device, dtype) -> Tensor:
        """The bias of a tile times log2 e, broadcastable to (B, Hkv, G, tq, tk)."""
        call = self.call
        key = ("b", q0 - k0, q1 - q0, k1 - k0) if getattr(call.bias, "toeplitz", False) else None
        hit = self._mask_cache.get(key) if key else None
        if hit is not None:
            return hit
        b = call.bias.tile(q0, q1, k0, k1, Tq=call.Tq, Tk=call.Tk, device=device, dtype=dtype)
        out = _to5(b * LOG2E, call.Hkv, call.G)
        if key:
            self._mask_cache[key] = out
        return out

    def mask_bias(self, q0, q1, k0, k1, device, dtype) -> Tensor:
        """The mask of a tile as an additive 0/-inf tensor broadcastable to
        (B, Hkv, G, tq, tk) (adding is far cheaper than a broadcast masked_fill on CPU).
        Translation-invariant specs repeat along diagonals: those tiles are cached."""
        call = self.call
        key = (q0 - k0, q1 - q0, k1 - k0) if call.mask.toeplitz else None
        hit = self._mask_cache.get(key) if key else None
        if hit is not None:
            return hit
        m = call.mask.tile(q0, q1, k0, k1, Tq=call.Tq, Tk=call.Tk, device=device)
        out = torch.zeros(m.shape, dtype=dtype, device=device).masked_fill_(~m, NEG_INF)
        out = _to5(out, call.Hkv, call.G)
        if key:
            self._mask_cache[key] = out
        return out

    def keep(self, i: int, j: int, shape, device) -> Tensor:
        """Dropout keep-mask for tile (i, chunk j), scaled by 1/(1-p); reproducible."""
        g = torch.Generator(device=device)
        g.manual_seed((self.seed + 1_000_003 * i + 7_919 * j) % (2**63 - 1))
        p = self.call.dropout_p
        r = torch.rand(shape, generator=g, device=device, dtype=self.acc)
        return (r >= p).to(self.acc) / (1.0 - p)

    def bounded_scores(self, q: Tensor, k: Tensor) -> bool:
        """True when every base-2 score provably lies in [-64, 64] (no bias; softcap, or
        max|q| * max|k| * scale small): exp2 then neither overflows nor underflows to 0,
        so the running-max shift (amax, subtract, rescale) can be skipped exactly."""
        c = self.call
        if c.bias is not None:
            return False
        if c.softcap is not None:
            return c.softcap * LOG2E <= 64.0
        qn = torch.linalg.vector_norm(q.to(self.acc), dim=-1).amax()
        kn = torch.linalg.vector_norm(k.to(self.acc), dim=-1).amax()
        return float(qn * kn) * c.scale * LOG2E <= 64.0

    def q_tile(self, x5: Tensor, q0: int, q1: int) -> Tensor:
        """(B, Hkv, G, Tq, X) -> tile (B, Hkv, G*tq, X) (a view when G == 1)."""
        B, Hkv, G, _, X = x5.shape
        return x5[:, :, :, q0:q1].reshape(B, Hkv, G * (q1 - q0), X)

    def q_scaled(self, q: Tensor) -> tuple[Tensor, float]:
        """q * scale (* log2 e when scores go straight to exp2) as (B, Hkv, G, Tq, D),
        and the factor applied."""
        c = self.call
        qmul = c.scale * (LOG2E if c.softcap is None else 1.0)
        return (q.to(self.acc) * qmul).view(c.B, c.Hkv, c.G, c.Tq, c.D), qmul

    def flops(self) -> float:
        """Matmul FLOPs of the planned tiles (the work a forward does)."""
        c, bq = self.call, self.cfg.block_q
        cols = sum((min(c.Tq, (i + 1) * bq) - i * bq) * (ch.k1 - ch.k0)
                   for i, chunks in enumerate(self.plan) for ch in chunks)
        return 2.0 * c.B * c.H * (c.D + c.Dv) * cols

    def _workers(self, flops: float) -> int:
        """How many threads share the tiles (1: inline; see ``tiles.run_parallel``)."""
        return min(workers(flops), len(self.plan)) or 1

    # ------------------------------------------------------------------
    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        c, acc = self.call, self.acc
        B, H, Hkv, G, Tq, D, Dv = c.B, c.H, c.Hkv, c.G, c.Tq, c.D, c.Dv
        BH, dev = B * Hkv, q.device
        k3, v3 = k.to(acc).reshape(BH, c.Tk, D), v.to(acc).reshape(BH, c.Tk, Dv)
        q5 = q.view(B, Hkv, G, Tq, D)
        qmul = c.scale * (LOG2E if c.softcap is None else 1.0)  # see q_scaled
        lowest = torch.finfo(acc).min  # running max stays finite: exp2(-inf - lowest) = 0
        tiny = torch.finfo(acc).tiny   # l is 0 (the row sees no key) or >= 2^-64
        fixed = self.bounded_scores(q, k)
        out = torch.empty(B, H, Tq, Dv, dtype=acc, device=dev)  # every tile written
        m_all = torch.full((B, H, Tq), 0.0 if fixed else lowest, dtype=acc, device=dev)
        l_all = torch.zeros(B, H, Tq, dtype=acc, device=dev)
        out5 = out.view(B, Hkv, G, Tq, Dv)
        m5, l5 = m_all.view(B, Hkv, G, Tq), l_all.view(B, Hkv, G, Tq)
        rows = G * self.cfg.block_q
        width = max((ch.k1 - ch.k0 for chunks in self.plan for ch in chunks), default=0)

        tiles, lock = iter(list(self.q_tiles())), threading.Lock()

        def next_tile():
            with lock:
                return next(tiles, None)

        def work():
            # one buffer each for the scaled query tile, the scores and the output, reused
            # by every tile: no allocation (nor page faults) per tile, and they stay in cache
            q_buf = torch.empty(BH * rows * D, dtype=acc, device=dev)
            s_buf = torch.empty(BH * rows * width, dtype=acc, device=dev)
            o_buf = torch.empty(BH * rows * Dv, dtype=acc, device=dev)
            l_buf = torch.empty(BH * rows, dtype=acc, device=dev)
            while (tile := next_tile()) is not None:  # dynamic: a stalled worker holds one
                i, q0, q1, chunks = tile
                if not chunks:  # no visible key: output 0, lse +inf
                    out5[:, :, :, q0:q1] = 0.0
                    continue
                tq = q1 - q0
                n = G * tq
                qs = q_buf[:BH * n * D].view(B, Hkv, G, tq, D)
                qs = qs.copy_(q5[:, :, :, q0:q1]).mul_(qmul).view(BH, n, D)  # (B*Hkv, G*tq, D)
                o = o_buf[:BH * n * Dv].view(BH, n, Dv)
                l = l_buf[:BH * n].view(BH, n, 1)
                m = None
                for j, ch in enumerate(chunks):
                    w = ch.k1 - ch.k0
                    s = s_buf[:BH * n * w].view(BH, n, w)
                    self.scores_into(s, qs, k3, q0, q1, ch)          # (B*Hkv, G*tq, tk)
                    if not fixed:  # when fixed, |s| <= 64: exp2 needs no shift
                        m_new = s.amax(-1, keepdim=True).clamp_min_(lowest)
                        if m is not None:
                            m_new = torch.maximum(m, m_new)
                        s.sub_(m_new)
                    p = s.exp2_()
                    if j == 0:
                        torch.sum(p, -1, keepdim=True, out=l)
                    else:
                        rowsum = p.sum(-1, keepdim=True)
                        if not fixed:
                            alpha = torch.exp2(m - m_new)
                            l.mul_(alpha)
                            o.mul_(alpha)
                        l.add_(rowsum)
                    if c.dropout_p > 0:
                        p = p * self.keep(i, j, (B, Hkv, n, w), dev).view(BH, n, w)
                    if j == 0:
                        torch.bmm(p, v3[:, ch.k0:ch.k1], out=o)
                    else:
                        o.baddbmm_(p, v3[:, ch.k0:ch.k1])
                    m = None if fixed else m_new
                out5[:, :, :, q0:q1] = o.div_(l.clamp_min(tiny)).view(B, Hkv, G, tq, Dv)
                if not fixed:
                    m5[:, :, :, q0:q1] = m.view(B, Hkv, G, tq)
                l5[:, :, :, q0:q1] = l.view(B, Hkv, G, tq)

        # each tile writes only its own query rows of out, m, l
        run_parallel([work] * self._workers(self.flops()))
        ok = l_all > 0
        lse = torch.where(ok, (m_all + torch.log2(l_all)) * LN2, math.inf)
        return out, lse

    def scores_into(self, s: Tensor, qs: Tensor, k3: Tensor, q0: int, q1: int, c: Chunk):
        """The base-2 scores of one tile written into ``s`` (B*Hkv, G*tq, tk) (see
        ``scores``); ``qs`` (B*Hkv, G*tq, D), ``k3`` (B*Hkv, Tk, D)."""
        call = self.call
        torch.bmm(qs, k3[:, c.k0:c.k1].transpose(1, 2), out=s)
        if call.softcap is not None:
            s.div_(call.softcap).tanh_().mul_(call.softcap * LOG2E)
        s5 = s.view(call.B, call.Hkv, call.G, q1 - q0, c.k1 - c.k0)
        if call.bias is not None:
            s5 += self.bias_tile(q0, q1, c.k0, c.k1, s.device, s.dtype)
        for a, e in c.partial:
            s5[..., a - c.k0:e - c.k0] += self.mask_bias(q0, q1, a, e, s.device, s.dtype)

    def backward(self, dout, q, k, v, out, lse):
        c, acc = self.call, self.acc
        B, H, Hkv, G, Tq, Tk = c.B, c.H, c.Hkv, c.G, c.Tq, c.Tk
        kf, vf = k.to(acc), v.to(acc)
        qs5, qmul = self.q_scaled(q)
        dq = torch.zeros(B, H, Tq, c.D, dtype=acc, device=q.device)
        dbias = None
        if any(t.requires_grad for t in c.bias_tensors):
            dbias = torch.zeros(B, H, Tq, Tk, dtype=acc, device=q.device)
        shape5 = (B, Hkv, G, Tq, -1)
        do5 = dout.to(acc).reshape(shape5)
        delta5 = (do5 * out.to(acc).view(shape5)).sum(-1, keepdim=True)  # (B, Hkv, G, Tq, 1)
        lse5 = (lse.to(acc) * LOG2E).view(shape5)                         # base 2
        dq5 = dq.view(shape5)
        n = self._workers(2.0 * self.flops())
        tiles = list(self.q_tiles())
        parts = [tiles[w::n] for w in range(n)]  # static, interleaved: balanced for causal
        # dq and dbias rows belong to one query tile (one worker); dk and dv sum over query
        # tiles: one accumulator per worker, added in a fixed order (deterministic)
        dks = [torch.zeros(B, Hkv, Tk, c.D, dtype=acc, device=q.device) for _ in parts]
        dvs = [torch.zeros(B, Hkv, Tk, c.Dv, dtype=acc, device=q.device) for _ in parts]

        def work(tiles, dk, dv):
            for i, q0, q1, chunks in tiles:
                if not chunks:
                    continue
                tq = q1 - q0
                qs = self.q_tile(qs5, q0, q1)                         # (B, Hkv, G*tq, D)
                do = self.q_tile(do5, q0, q1)                         # (B, Hkv, G*tq, Dv)
                lse_t, dl_t = self.q_tile(lse5, q0, q1), self.q_tile(delta5, q0, q1)
                dq_t = None
                for j, ch in enumerate(chunks):
                    ks, vs = kf[:, :, ch.k0:ch.k1], vf[:, :, ch.k0:ch.k1]
                    s, th = self.scores(qs, kf, q0, q1, ch)
                    p = s.sub_(lse_t).exp2_()                         # (B, Hkv, G*tq, tk)
                    dp = torch.matmul(do, vs.transpose(-1, -2))
                    if c.dropout_p > 0:
                        keep = self.keep(i, j, p.shape, p.device)
                        dv[:, :, ch.k0:ch.k1] += torch.matmul((p * keep).transpose(-1, -2), do)
                        dp.mul_(keep)
                    else:
                        dv[:, :, ch.k0:ch.k1] += torch.matmul(p.transpose(-1, -2), do)
                    ds = p.mul_(dp.sub_(dl_t))                        # dL/d(score)
                    if dbias is not None:
                        dbias[:, :, q0:q1, ch.k0:ch.k1] += ds.view(B, Hkv, G, tq, -1).reshape(
                            B, H, tq, -1)
                    if th is not None:
                        ds.mul_(1.0 - th * th)
                    g = torch.matmul(ds, ks)
                    dq_t = g if dq_t is None else dq_t.add_(g)
                    dk[:, :, ch.k0:ch.k1] += torch.matmul(ds.transpose(-1, -2), qs)
                dq5[:, :, :, q0:q1] = dq_t.view(B, Hkv, G, tq, c.D)

        run_parallel([functools.partial(work, *a) for a in zip(parts, dks, dvs)])
        dk, dv = dks[0], dvs[0]
        for a, b in zip(dks[1:], dvs[1:]):
            dk.add_(a)
            dv.add_(b)
        dq.mul_(c.scale)
        dk.mul_(c.scale / qmul)  # qs carried qmul; dS/dk needs q * scale
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
    @once_differentiable  # double backward: one clear RuntimeError, never a wrong gradient
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv, dbias = ctx.run.backward(dout, q, k, v, out, lse)
        return (dq, dk, dv, None, *dbias)


def tiled_forward(call: AttentionCall, cfg: TileConfig | None = None) -> tuple[Tensor, Tensor]:
    """The forward pass, no autograd: ``out (B, H, Tq, Dv)`` in the accumulation dtype
    (float32; float64 for float64 inputs) and ``lse (B, H, Tq)`` (natural log; +inf on
    fully masked rows, whose output is 0)."""
    return TiledRun(call, cfg or TileConfig()).forward(call.q, call.k, call.v)


def tiled_backward(call: AttentionCall, dout: Tensor, out: Tensor, lse: Tensor,
                   cfg: TileConfig | None = None):
    """Gradients from a forward's ``out`` and ``lse`` (FlashAttention-2: weights recomputed
    tile by tile): ``dq, dk, dv`` in the input dtypes and one gradient (or None) per bias
    tensor of the call. ``out``/``lse`` may be those of a larger problem this call is a
    part of (ring attention, sparse components): the result is this part's share."""
    return TiledRun(call, cfg or TileConfig()).backward(dout, call.q, call.k, call.v, out, lse)


def tiled_attention(call: AttentionCall, cfg: TileConfig | None = None) -> tuple[Tensor, Tensor]:
    """Differentiable tiled attention: output (B, H, Tq, Dv) in q's dtype and log-sum-exp
    (B, H, Tq) (+inf on fully masked rows; not differentiable)."""
    run = TiledRun(call, cfg or TileConfig())
    return _TiledFunction.apply(call.q, call.k, call.v, run, *call.bias_tensors)
