"""Ring attention: exact attention over a sequence split across the ranks of a group.

Every rank holds a shard of q, k and v (:mod:`.sharding` layouts). The K/V shards
travel around the ring (rank r sends to r+1 and receives from r-1) in ``world``
steps; at step s rank r holds the K/V of rank ``(r - s) % world``. The next
exchange is posted before computing on the current shard, so communication
overlaps compute. Each step runs the tiled kernel (:mod:`attnkit.backends.tiled`)
on (local query run, remote key run) pairs -- one pair per contiguous run of
global positions, so a mask is a pure index shift (:class:`ShiftedMask`) -- and
merges the partial (out, lse) into the running result by log-sum-exp.

Masks are given at global positions of the unpadded sequence (``Tq = Tk = length``).
A pair whose block map is all EMPTY (a causal future chunk, a window out of reach,
padding) is not computed at all; its K/V still pass on.

Backward (FlashAttention-2 style): with the global out and lse, each pair's
``tiled_backward`` gives exactly that key run's share of dQ, dK, dV. dQ stays
local; dK/dV accumulators travel the ring with their K/V and, after ``world``
hops, arrive back at their owner.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ..call import AttentionCall, make_call
from ..call.blocks import blocks_for
from ..kernels import TileConfig, merge_partial, tiled_backward, tiled_forward
from ..kernels.autograd import first_order_only
from ..masks import EMPTY, FULL, PARTIAL, AdditiveMask, MaskSpec, as_mask, causal as _causal
from .sharding import padded_length, segments

__all__ = ["ring_attention", "ring_work", "ShiftedMask"]

NEG_INF, POS_INF = float("-inf"), float("inf")


class ShiftedMask(MaskSpec):
    """``inner`` (a spec over the global ``length x length`` problem) seen from a local
    (query run, key run) pair: local query i is global ``q_start + i``, local key j is
    global ``k_start + j``; positions ``>= length`` (padding) are masked."""

    def __init__(self, inner: MaskSpec | None, q_start: int, k_start: int, length: int):
        self.inner, self.q_start, self.k_start, self.length = inner, q_start, k_start, length

    def extent(self):
        return (1, 1) if self.inner is None else self.inner.extent()

    def allowed(self, b, h, q, k, offset):
        L = self.length
        qg, kg = q + self.q_start, k + self.k_start
        ok = (qg < L) & (kg < L)
        if self.inner is not None:  # clamp: index-based specs must not read past length
            ok = ok & self.inner.allowed(b, h, qg.clamp(max=L - 1), kg.clamp(max=L - 1), 0)
        return ok

    def tile_classes(self, q0, q1, k0, k1, offset):
        L = self.length
        gq0, gq1 = q0 + self.q_start, q1 + self.q_start
        gk0, gk1 = k0 + self.k_start, k1 + self.k_start
        valid = (gq0 < L) & (gk0 < L)
        cut = (gq1 > L) | (gk1 > L)                       # tile straddles the padding
        if self.inner is None:
            inner = torch.full_like(gq0 + gk0, FULL)
        else:
            cq0, ck0 = gq0.clamp(max=L - 1), gk0.clamp(max=L - 1)
            cq1 = torch.maximum(gq1.clamp(max=L), cq0 + 1)
            ck1 = torch.maximum(gk1.clamp(max=L), ck0 + 1)
            inner = self.inner.tile_classes(cq0, cq1, ck0, ck1, 0)
            if inner is None:
                return None
        return torch.where(~valid, EMPTY, torch.where(cut & (inner == FULL), PARTIAL, inner))

    def tile(self, q0, q1, k0, k1, *, Tq, Tk, device=None):
        if device is None:
            device = next((t.device for t in self.tensors()), "cpu")
        L = self.length
        gq0, gk0 = q0 + self.q_start, k0 + self.k_start
        nq, nk = max(0, min(q1 - q0, L - gq0)), max(0, min(k1 - k0, L - gk0))  # unpadded part
        if self.inner is None or nq == 0 or nk == 0:
            out = torch.zeros(1, 1, q1 - q0, k1 - k0, dtype=torch.bool, device=device)
            out[..., :nq, :nk] = True
            return out
        t = self.inner.tile(gq0, gq0 + nq, gk0, gk0 + nk, Tq=L, Tk=L, device=device)
        if (nq, nk) == (q1 - q0, k1 - k0):
            return t
        out = torch.zeros(*t.shape[:2], q1 - q0, k1 - k0, dtype=torch.bool, device=device)
        out[..., :nq, :nk] = t
        return out

    def tensors(self):
        return [] if self.inner is None else self.inner.tensors()

    def to(self, device):
        inner = None if self.inner is None else self.inner.to(device)
        return ShiftedMask(inner, self.q_start, self.k_start, self.length)

    def __repr__(self):
        return f"ShiftedMask({self.inner!r}, q+{self.q_start}, k+{self.k_start}, L={self.length})"


# ---------------------------------------------------------------------------
# the plan: which (query run, key run) pairs each step computes
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Pair:
    q0: int                   # local query run [q0, q0+nq)
    nq: int
    k0: int                   # run [k0, k0+nk) of the K/V shard held at this step
    nk: int
    mask: ShiftedMask | None  # None: every (query, key) of the pair is visible
    tiles: int                # non-empty (block_q x block_k) tiles: the work done


def _plan(rank: int, world: int, length: int, layout: str, spec: MaskSpec | None,
          cfg: TileConfig) -> list[list[_Pair]]:
    """For each ring step, the pairs rank ``rank`` computes (invisible pairs dropped)."""
    tp = padded_length(length, world, layout)
    mine = segments(rank, world, tp, layout)
    steps = []
    for s in range(world):
        pairs = []
        for ql, qg, nq in mine:
            for kl, kg, nk in segments((rank - s) % world, world, tp, layout):
                nt = math.ceil(nq / cfg.block_q) * math.ceil(nk / cfg.block_k)
                if spec is None and tp == length:
                    pairs.append(_Pair(ql, nq, kl, nk, None, nt))
                    continue
                m = ShiftedMask(spec, qg, kg, length)
                # the one block-map cache: the kernel's call looks up the same entry
                bm = blocks_for(m, nq, nk, cfg.block_q, cfg.block_k).map
                n = int((bm != EMPTY).sum())
                if n:
                    pairs.append(_Pair(ql, nq, kl, nk, m if bool((bm != FULL).any()) else None,
                                       n))
        steps.append(pairs)
    return steps


def _spec(causal: bool, mask) -> MaskSpec | None:
    spec = as_mask(mask)
    if isinstance(spec, AdditiveMask):
        raise TypeError("mask: ring_attention takes boolean masks only, got an additive "
                        "(float) mask tensor")
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected a bool, got {type(causal).__name__}")
    if causal:
        spec = _causal() if spec is None else _causal() & spec
    return spec


def _visible(p: _Pair, cfg: TileConfig) -> int:
    """(query, key) pairs a masked pair attends (batch 0, head 0), tile by tile."""
    bq, bk = cfg.block_q, cfg.block_k
    bm = blocks_for(p.mask, p.nq, p.nk, bq, bk).map
    n = 0
    for i, j in (bm != EMPTY).nonzero().tolist():
        q0, k0 = i * bq, j * bk
        q1, k1 = min(p.nq, q0 + bq), min(p.nk, k0 + bk)
        if bm[i, j] == FULL:
            n += (q1 - q0) * (k1 - k0)
        else:
            n += int(p.mask.tile(q0, q1, k0, k1, Tq=p.nq, Tk=p.nk)[0, 0].sum())
    return n


def ring_work(length: int, world: int, layout: str = "zigzag", *, causal: bool = False,
              mask=None, cfg: TileConfig | None = None) -> list[dict]:
    """Per rank: tiles computed, (query, key) pairs attended, steps with any compute and
    kernel calls (one per visible pair of shards).

    The same plan ``ring_attention`` runs; use it to compare layouts' load balance.
    """
    cfg = cfg or TileConfig()
    spec = _spec(causal, mask)
    if spec is not None:
        spec.validate(1, 1, length, length)
    out = []
    for r in range(world):
        plan = _plan(r, world, length, layout, spec, cfg)
        tiles = pairs = 0
        for step in plan:
            for p in step:
                tiles += p.tiles
                pairs += p.nq * p.nk if p.mask is None else _visible(p, cfg)
        out.append({"rank": r, "tiles": tiles, "pairs": pairs,
                    "steps": sum(1 for step in plan if step),
                    "calls": sum(len(step) for step in plan)})
    return out


# ---------------------------------------------------------------------------
# the ring
# ---------------------------------------------------------------------------
class _Ring:
    """One ring_attention call: group, neighbours, plan, kernel settings."""

    def __init__(self, group, plan, cfg, scale, softcap):
        self.group, self.plan, self.cfg = group, plan, cfg
        self.scale, self.softcap = scale, softcap
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.next, self.prev = (self.rank + 1) % self.world, (self.rank - 1) % self.world

    # -- communication -------------------------------------------------
    def _post(self, sends=(), recvs=(), tag=0):
        ops = [dist.P2POp(dist.irecv, t, group=self.group, group_peer=self.prev, tag=tag + i)
               for i, t in enumerate(recvs)]
        ops += [dist.P2POp(dist.isend, t, group=self.group, group_peer=self.next, tag=tag + i)
                for i, t in enumerate(sends)]
        return dist.batch_isend_irecv(ops) if ops else []

    def _wait(self, works, what, step):
        try:
            for w in works:
                w.wait()
        except RuntimeError as e:
            raise RuntimeError(
                f"ring_attention: rank {self.rank} lost the ring at step {step} ({what}, "
                f"peers {self.prev} -> {self.rank} -> {self.next}); a peer rank failed or "
                f"timed out: {e}") from e

    def _call(self, q, k, v, p: _Pair) -> AttentionCall:
        qs, ks, vs = (q[:, :, p.q0:p.q0 + p.nq], k[:, :, p.k0:p.k0 + p.nk],
                      v[:, :, p.k0:p.k0 + p.nk])
        return AttentionCall(qs, ks, vs, p.mask, None, self.scale, self.softcap, 0.0)

    # -- forward -------------------------------------------------------
    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        B, H, T, _ = q.shape
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        out = torch.zeros(B, H, T, v.shape[-1], dtype=acc, device=q.device)
        lse = torch.full((B, H, T), NEG_INF, dtype=acc, device=q.device)
        kv = (k, v)
        for s in range(self.world):
            nxt, reqs = None, []
            if s < self.world - 1:  # post the next hop before computing on this one
                nxt = (torch.empty_like(kv[0]), torch.empty_like(kv[1]))
                reqs = self._post(sends=kv, recvs=nxt)
            for p in self.plan[s]:
                call = self._call(q, *kv, p)
                o, l = tiled_forward(call, self.cfg)
                sl = slice(p.q0, p.q0 + p.nq)
                merge_partial(out[:, :, sl], lse[:, :, sl], o, l)
            self._wait(reqs, "K/V exchange", s)
            kv = nxt
        return out, torch.where(lse == NEG_INF, POS_INF, lse)

    # -- backward ------------------------------------------------------
    def backward(self, dout, q, k, v, out, lse) -> tuple[Tensor, Tensor, Tensor]:
        acc = out.dtype
        dout = dout.contiguous()
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        qa = q.to(acc)  # gradients come back in the accumulation dtype
        kv, pending = (k, v), []
        for s in range(self.world):
            recv_d, nxt, reqs = [], None, []
            if s == 0:  # our own K/V: the dK/dV accumulator starts here
                dkv = (torch.zeros(k.shape, dtype=acc, device=k.device),
                       torch.zeros(v.shape, dtype=acc, device=v.device))
            else:       # the dK/dV accumulated so far for the K/V we hold now
                dkv = (torch.empty(k.shape, dtype=acc, device=k.device),
                       torch.empty(v.shape, dtype=acc, device=v.device))
                recv_d = self._post(recvs=dkv, tag=2)
            if s < self.world - 1:
                nxt = (torch.empty_like(kv[0]), torch.empty_like(kv[1]))
                reqs = self._post(sends=kv, recvs=nxt)
            kva = (kv[0].to(acc), kv[1].to(acc))
            for p in self.plan[s]:
                call = self._call(qa, *kva, p)
                sl, kl = slice(p.q0, p.q0 + p.nq), slice(p.k0, p.k0 + p.nk)
                dq_p, dk_p, dv_p, _ = tiled_backward(call, dout[:, :, sl], out[:, :, sl],
                                                     lse[:, :, sl], self.cfg)
                dq[:, :, sl] += dq_p
                self._wait(recv_d, "dK/dV receive", s)  # (overlapped the first pair)
                recv_d = []
                dkv[0][:, :, kl] += dk_p
                dkv[1][:, :, kl] += dv_p
            if self.world == 1:
                return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype)
            self._wait(recv_d, "dK/dV receive", s)
            self._wait(pending, "dK/dV send", s)
            pending = self._post(sends=dkv, tag=2)  # on to the next rank
            self._wait(reqs, "K/V exchange", s)
            kv = nxt
        mine = (torch.empty(k.shape, dtype=acc, device=k.device),
                torch.empty(v.shape, dtype=acc, device=v.device))
        self._wait(self._post(recvs=mine, tag=2), "dK/dV return", self.world)
        self._wait(pending, "dK/dV send", self.world)
        return dq.to(q.dtype), mine[0].to(k.dtype), mine[1].to(v.dtype)


class _RingFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, ring: _Ring):
        out, lse = ring.forward(q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.ring = ring
        return out.to(q.dtype)

    @staticmethod
    @first_order_only("ring attention (attnkit.distributed)")
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        return (*ctx.ring.backward(dout, q, k, v, out, lse), None)


def ring_attention(q: Tensor, k: Tensor, v: Tensor, *, group=None, causal: bool = False,
                   mask=None, layout: str = "zigzag", length: int | None = None,
                   scale: float | None = None, softcap: float | None = None,
                   cfg: TileConfig | None = None) -> Tensor:
    """Exact attention over a sequence sharded across the ranks of ``group``.

    Args:
        q: local shard ``(B, H, T_local, D)``; k, v: ``(B, Hkv, T_local, D/Dv)``
            (GQA: ``H % Hkv == 0``), produced by ``shard(x, rank, world, layout)``.
            Every rank passes the same shapes.
        group: process group (default: the world).
        causal: causal mask at global positions (combined with ``mask`` by ``&``).
        mask: a boolean spec or tensor over the global ``(length, length)`` problem
            (e.g. ``padding(kv_lengths)``, ``window(w)``); evaluated at global positions.
        layout: ``"zigzag"`` (balanced for causal) or ``"contiguous"``.
        length: true global length (default ``T_local * world``: no padding); padded
            keys are masked, padded query rows come out 0.
        scale, softcap: as in :func:`attnkit.attention`.
        cfg: tile sizes of the tiled kernel.

    Returns the local output shard ``(B, H, T_local, Dv)``; differentiable in q, k, v.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("ring_attention: torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group first (see attnkit.distributed)")
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group: expected a torch.distributed ProcessGroup or None, got "
                        f"{type(group).__name__}")
    call = make_call(q, k, v, scale=scale, softcap=softcap)  # shapes, scale, softcap
    if call.Tq != call.Tk:
        raise ValueError(f"k: expected the same local length as q (T_local={call.Tq}), got "
                         f"{call.Tk}")
    if layout == "zigzag" and call.Tq % 2:
        raise ValueError(f"q: a zigzag shard holds two equal chunks, expected an even T_local, "
                         f"got {call.Tq} (use shard() to pad, or layout='contiguous')")
    world = dist.get_world_size(group)
    tp = call.Tq * world
    if length is None:
        length = tp
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= tp or \
            padded_length(length, world, layout) != tp:
        raise ValueError(f"length: expected a global length that {layout} sharding over "
                         f"{world} ranks pads to {tp} (= T_local {call.Tq} x {world}), got "
                         f"{length!r}")
    spec = _spec(causal, mask)
    if spec is not None:
        spec.validate(call.B, call.H, length, length)
        spec = spec.to(q.device)
    cfg = cfg or TileConfig()
    plan = _plan(dist.get_rank(group), world, length, layout, spec, cfg)
    ring = _Ring(group, plan, cfg, call.scale, call.softcap)
    return _RingFn.apply(q.contiguous(), k.contiguous(), v.contiguous(), ring)
