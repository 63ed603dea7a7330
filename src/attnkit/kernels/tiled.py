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

from ..call import AttentionCall
from .autograd import first_order_only
from .tiles import (Chunk, TileConfig, config_for, plan, run_parallel, single_threaded_caller,
                    workers)

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

    def bounded_scores(self, q: Tensor, k: Tensor, n: int = 1) -> bool:
        """True when every base-2 score provably lies in [-64, 64] (no bias; softcap, or
        max|q| * max|k| * scale small): exp2 then neither overflows nor underflows to 0,
        so the running-max shift (amax, subtract, rescale) can be skipped exactly. The
        row norms are taken by ``n`` workers, each over a slice of the tokens."""
        c = self.call
        if c.bias is not None:
            return False
        if c.softcap is not None:
            return c.softcap * LOG2E <= 64.0
        peaks = [0.0] * (2 * n)

        def norms(w):
            for j, t in enumerate((q, k)):
                a, b = t.shape[2] * w // n, t.shape[2] * (w + 1) // n
                if b > a:
                    x = t[:, :, a:b].to(self.acc)
                    peaks[2 * w + j] = float(torch.linalg.vector_norm(x, dim=-1).amax())
        run_parallel([functools.partial(norms, w) for w in range(n)])
        return max(peaks[0::2]) * max(peaks[1::2]) * c.scale * LOG2E <= 64.0

    @property
    def qmul(self) -> float:
        """The factor the query tiles carry: scale, times log2 e when scores go straight
        to exp2 (no softcap: the tanh needs the natural scores)."""
        c = self.call
        return c.scale * (LOG2E if c.softcap is None else 1.0)

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
        """``out (B, H, Tq, Dv)`` in the accumulation dtype and ``lse (B, H, Tq)``."""
        n = self._workers(self.flops())
        with single_threaded_caller():  # its own ops stay off OpenMP barriers too
            return self._forward(q, k, v, n)

    def _forward(self, q: Tensor, k: Tensor, v: Tensor, n_workers: int):
        c, acc = self.call, self.acc
        B, H, Hkv, G, Tq, D, Dv = c.B, c.H, c.Hkv, c.G, c.Tq, c.D, c.Dv
        BH, dev = B * Hkv, q.device
        k3, v3 = k.to(acc).reshape(BH, c.Tk, D), v.to(acc).reshape(BH, c.Tk, Dv)
        q5 = q.view(B, Hkv, G, Tq, D)
        qmul = self.qmul
        lowest = torch.finfo(acc).min  # running max stays finite: exp2(-inf - lowest) = 0
        tiny = torch.finfo(acc).tiny   # l is 0 (the row sees no key) or >= 2^-64
        fixed = self.bounded_scores(q, k, n_workers)
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
        run_parallel([work] * n_workers)
        ok = l_all > 0
        lse = torch.where(ok, (m_all + torch.log2(l_all)) * LN2, math.inf)
        return out, lse

    def scores_into(self, s: Tensor, qs: Tensor, k3: Tensor, q0: int, q1: int, c: Chunk,
                    th: Tensor | None = None):
        """The base-2 scores of one tile written into ``s`` (B*Hkv, G*tq, tk): natural
        scores * log2 e (``qs`` (B*Hkv, G*tq, D) is q * scale, times log2 e unless
        softcapped), or ``tanh(raw / cap) * cap * log2 e`` (then ``th``, if given,
        receives ``tanh(raw / cap)``), plus bias and mask; ``k3`` (B*Hkv, Tk, D)."""
        call = self.call
        kt = k3[:, c.k0:c.k1].transpose(1, 2)
        if call.softcap is None:
            torch.bmm(qs, kt, out=s)
        elif th is None:
            torch.bmm(qs, kt, out=s).div_(call.softcap).tanh_().mul_(call.softcap * LOG2E)
        else:
            torch.bmm(qs, kt, out=th).div_(call.softcap).tanh_()
            torch.mul(th, call.softcap * LOG2E, out=s)
        s5 = s.view(call.B, call.Hkv, call.G, q1 - q0, c.k1 - c.k0)
        if call.bias is not None:
            s5 += self.bias_tile(q0, q1, c.k0, c.k1, s.device, s.dtype)
        for a, e in c.partial:
            s5[..., a - c.k0:e - c.k0] += self.mask_bias(q0, q1, a, e, s.device, s.dtype)

    def backward(self, dout, q, k, v, out, lse, dlse=None):
        """``dq, dk, dv`` (input dtypes) and one gradient (or None) per bias tensor;
        ``dlse (B, H, Tq)``: a gradient reaching the log-sum-exp too (sinks use it)."""
        n = self._workers(2.0 * self.flops())
        with single_threaded_caller():
            return self._backward(dout, q, k, v, out, lse, n, dlse)

    def _backward(self, dout, q, k, v, out, lse, n_workers, dlse=None):
        c, acc = self.call, self.acc
        B, H, Hkv, G, Tq, Tk, D, Dv = c.B, c.H, c.Hkv, c.G, c.Tq, c.Tk, c.D, c.Dv
        BH, dev = B * Hkv, q.device
        k3, v3 = k.to(acc).reshape(BH, Tk, D), v.to(acc).reshape(BH, Tk, Dv)
        q5, do5 = q.view(B, Hkv, G, Tq, D), dout.view(B, Hkv, G, Tq, Dv)
        out5, lse5 = out.view(B, Hkv, G, Tq, Dv), lse.view(B, Hkv, G, Tq, 1)
        # d lse / d score = weight: a gradient g on the lse moves delta to delta - g
        dlse5 = None if dlse is None else dlse.to(acc).reshape(B, Hkv, G, Tq, 1)
        qmul = self.qmul
        dq = torch.empty(B, H, Tq, D, dtype=acc, device=dev)  # every tile written
        dq5 = dq.view(B, Hkv, G, Tq, D)
        dbias = None
        if any(t.requires_grad for t in c.bias_tensors):
            dbias = torch.zeros(B, H, Tq, Tk, dtype=acc, device=dev)
        tiles = list(self.q_tiles())
        parts = [tiles[w::n_workers] for w in range(n_workers)]  # static: deterministic sums
        # dq and dbias rows belong to one query tile (one worker); dk and dv sum over query
        # tiles: one accumulator per worker (zeroed by it), added in a fixed order
        dks, dvs = [None] * n_workers, [None] * n_workers
        rows = G * self.cfg.block_q
        width = max((ch.k1 - ch.k0 for chunks in self.plan for ch in chunks), default=0)
        dk_scale = c.scale / qmul  # qs carries qmul; dS/dk needs q * scale

        def work(w):
            dk = dks[w] = torch.zeros(BH, Tk, D, dtype=acc, device=dev)
            dv = dvs[w] = torch.zeros(BH, Tk, Dv, dtype=acc, device=dev)
            buf = lambda m: torch.empty(BH * m, dtype=acc, device=dev)  # noqa: E731
            q_buf, do_buf, dq_buf = buf(rows * D), buf(rows * Dv), buf(rows * D)
            st_buf, dl_buf = buf(rows), buf(rows)
            s_buf, dp_buf = buf(rows * width), buf(rows * width)
            th_buf = buf(rows * width) if c.softcap is not None else None
            for i, q0, q1, chunks in parts[w]:
                if not chunks:
                    dq5[:, :, :, q0:q1] = 0.0
                    continue
                tq = q1 - q0
                n = G * tq
                tile = lambda b, x: b[:BH * n * x].view(B, Hkv, G, tq, x)  # noqa: E731
                qs = tile(q_buf, D).copy_(q5[:, :, :, q0:q1]).mul_(qmul).view(BH, n, D)
                do = tile(do_buf, Dv).copy_(do5[:, :, :, q0:q1]).view(BH, n, Dv)
                lse_t = tile(st_buf, 1).copy_(lse5[:, :, :, q0:q1]).mul_(LOG2E).view(BH, n, 1)
                dl_t = tile(dl_buf, 1)                                # delta = rowsum(dO * O)
                torch.sum(do.view(B, Hkv, G, tq, Dv) * out5[:, :, :, q0:q1], -1,
                          keepdim=True, out=dl_t)
                if dlse5 is not None:
                    dl_t.sub_(dlse5[:, :, :, q0:q1])
                dl_t = dl_t.view(BH, n, 1)
                dq_t = dq_buf[:BH * n * D].view(BH, n, D)
                for j, ch in enumerate(chunks):
                    w = ch.k1 - ch.k0
                    s, dp = s_buf[:BH * n * w].view(BH, n, w), dp_buf[:BH * n * w].view(BH, n, w)
                    th = None if th_buf is None else th_buf[:BH * n * w].view(BH, n, w)
                    self.scores_into(s, qs, k3, q0, q1, ch, th)
                    p = s.sub_(lse_t).exp2_()                         # weights (B*Hkv, G*tq, tk)
                    torch.bmm(do, v3[:, ch.k0:ch.k1].transpose(1, 2), out=dp)
                    if c.dropout_p > 0:
                        keep = self.keep(i, j, (B, Hkv, n, w), dev).view(BH, n, w)
                        dv[:, ch.k0:ch.k1].baddbmm_((p * keep).transpose(1, 2), do)
                        dp.mul_(keep)
                    else:
                        dv[:, ch.k0:ch.k1].baddbmm_(p.transpose(1, 2), do)
                    ds = p.mul_(dp.sub_(dl_t))                        # dL/d(score)
                    if dbias is not None:
                        dbias[:, :, q0:q1, ch.k0:ch.k1] += ds.view(B, Hkv, G, tq, w).reshape(
                            B, H, tq, w)
                    if th is not None:
                        ds.mul_(th.mul_(th).neg_().add_(1.0))         # * (1 - tanh^2)
                    if j == 0:  # dq = scale * dS k, dk = scale * dS^T q
                        torch.baddbmm(dq_t, ds, k3[:, ch.k0:ch.k1], beta=0.0, alpha=c.scale,
                                      out=dq_t)
                    else:
                        dq_t.baddbmm_(ds, k3[:, ch.k0:ch.k1], alpha=c.scale)
                    dk[:, ch.k0:ch.k1].baddbmm_(ds.transpose(1, 2), qs, alpha=dk_scale)
                dq5[:, :, :, q0:q1] = dq_t.view(B, Hkv, G, tq, D)

        run_parallel([functools.partial(work, w) for w in range(n_workers)])
        dk, dv = dks[0], dvs[0]

        def add_up(w):  # the workers' accumulators into the first, a slice of keys each
            a, b = Tk * w // n_workers, Tk * (w + 1) // n_workers
            for x, y in zip(dks[1:], dvs[1:]):
                dk[:, a:b] += x[:, a:b]
                dv[:, a:b] += y[:, a:b]
        if n_workers > 1:
            run_parallel([functools.partial(add_up, w) for w in range(n_workers)])
        dbias_parts = []
        for t in c.bias_tensors:
            if dbias is None or not t.requires_grad:
                dbias_parts.append(None)
            else:
                dims = [d for d in range(4) if t.shape[d] == 1]  # broadcast dims of t
                g = dbias.sum(dim=dims, keepdim=True) if dims else dbias  # dim=[]: all!
                dbias_parts.append(g.to(t.dtype))
        return (dq.to(q.dtype), dk.view(B, Hkv, Tk, D).to(k.dtype),
                dv.view(B, Hkv, Tk, Dv).to(v.dtype), dbias_parts)


class _TiledFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, run, *bias_tensors):
        out, lse = run.forward(q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.run = run
        ctx.set_materialize_grads(False)
        return out.to(q.dtype), lse

    @staticmethod
    @first_order_only("the 'tiled' backend")  # double backward: one clear RuntimeError
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv, dbias = ctx.run.backward(dout, q, k, v, out, lse, dlse)
        return (dq, dk, dv, None, *dbias)


def tiled_forward(call: AttentionCall, cfg: TileConfig | None = None) -> tuple[Tensor, Tensor]:
    """The forward pass, no autograd: ``out (B, H, Tq, Dv)`` in the accumulation dtype
    (float32; float64 for float64 inputs) and ``lse (B, H, Tq)`` (natural log; +inf on
    fully masked rows, whose output is 0)."""
    return TiledRun(call, cfg or config_for(call)).forward(call.q, call.k, call.v)


def tiled_backward(call: AttentionCall, dout: Tensor, out: Tensor, lse: Tensor,
                   cfg: TileConfig | None = None):
    """Gradients from a forward's ``out`` and ``lse`` (FlashAttention-2: weights recomputed
    tile by tile): ``dq, dk, dv`` in the input dtypes and one gradient (or None) per bias
    tensor of the call. ``out``/``lse`` may be those of a larger problem this call is a
    part of (ring attention, sparse components): the result is this part's share."""
    return TiledRun(call, cfg or config_for(call)).backward(dout, call.q, call.k, call.v, out, lse)


def tiled_attention(call: AttentionCall, cfg: TileConfig | None = None) -> tuple[Tensor, Tensor]:
    """Differentiable tiled attention: output (B, H, Tq, Dv) in q's dtype and log-sum-exp
    (B, H, Tq) (+inf on fully masked rows; differentiable elsewhere)."""
    run = TiledRun(call, cfg or config_for(call))
    return _TiledFunction.apply(call.q, call.k, call.v, run, *call.bias_tensors)
