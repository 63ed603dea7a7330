"""Host side: lower a call, launch the kernels, and the autograd Function around them.

``triton_attention(call, cfg)`` -> output ``(B, H, Tq, Dv)`` in q's dtype and the
log-sum-exp ``(B, H, Tq)`` (natural log, float32, ``+inf`` on rows that see no key).
Differentiable w.r.t. q, k, v and tensor biases (through the dense bias).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..autograd import first_order_only
from . import configs, interpreter_requested, kernels
from .configs import TritonConfig
from .lowering import BiasLowering, MaskLowering, lower_bias, lower_mask

__all__ = ["Plan", "make_plan", "run_plan", "triton_attention"]

LN2 = 0.6931471805599453


def _bstride(t: Tensor, d: int) -> int:
    """Stride of dim d, 0 where the tensor broadcasts (size 1)."""
    return t.stride(d) if t.shape[d] > 1 else 0


@dataclass
class Plan:
    """Everything fixed for one call: tiles, lowering, kernel variant, launch settings."""
    call: object
    cfg: TritonConfig
    interpret: bool
    mask: MaskLowering
    bias: BiasLowering
    block_d: int
    block_dv: int

    @property
    def kernels(self):
        return kernels(self.interpret)

    @property
    def tuned(self) -> bool:
        return not self.interpret and configs.autotune_enabled(self.cfg)

    def launch_kw(self) -> dict:
        if self.tuned or self.interpret:  # the autotuner picks; the interpreter ignores them
            return {}
        return dict(num_warps=self.cfg.num_warps or configs.FALLBACK_WARPS,
                    num_stages=self.cfg.num_stages or configs.FALLBACK_STAGES)

    def constexprs(self) -> dict:
        c = self.call
        return dict(BLOCK_M=self.mask.block_m, BLOCK_N=self.mask.block_n, BLOCK_D=self.block_d,
                    BLOCK_DV=self.block_dv, SOFTCAP=c.softcap is not None,
                    BIAS_MODE=self.bias.mode, MASK_MODE=self.mask.mode,
                    EVEN_N=c.Tk % self.mask.block_n == 0)

    def shared_args(self, dense_bias: Tensor | None, dummy_f: Tensor, dummy_i: Tensor) -> tuple:
        """slopes, bias (+ strides), tiles (+ strides): the tail every kernel takes."""
        slopes = self.bias.slopes if self.bias.slopes is not None else dummy_f
        if dense_bias is not None:
            bias = dense_bias
            sb = tuple(_bstride(bias, d) for d in range(4))  # (1, 1, Tq, 1) etc. broadcast
        else:
            bias, sb = dummy_f, (0, 0, 0, 0)
        tiles = self.mask.tiles if self.mask.tiles is not None else dummy_i
        return (slopes, bias, *sb, tiles, *self.mask.tile_strides())

    def scalars(self) -> tuple:
        c = self.call
        lo, hi = self.mask.win_lo, self.mask.win_hi
        return (c.Tq, c.Tk, c.D, c.Dv, float(c.scale), float(c.softcap or 1.0), lo, hi)


def make_plan(call, cfg: TritonConfig | None = None, *, interpret: bool | None = None) -> Plan:
    cfg = cfg or TritonConfig()
    if interpret is None:
        interpret = call.device.type == "cpu" or interpreter_requested()
    bm, bn = configs.tile_shape(max(call.D, call.Dv), cfg, interpret)
    return Plan(call, cfg, interpret, lower_mask(call, bm, bn), lower_bias(call),
                configs.block_dim(call.D), configs.block_dim(call.Dv))


def _forward(plan: Plan, q: Tensor, k: Tensor, v: Tensor, dense_bias):
    c, ml = plan.call, plan.mask
    B, H, Tq = c.B, c.H, c.Tq
    out = torch.empty(B, H, Tq, c.Dv, device=q.device, dtype=q.dtype)
    lse = torch.empty(B, H, Tq, device=q.device, dtype=torch.float32)   # base 2
    dummy_f = torch.zeros(1, device=q.device, dtype=torch.float32)
    dummy_i = torch.zeros(1, device=q.device, dtype=torch.int8)
    mod = plan.kernels.forward
    kern = mod.attn_fwd_tuned if plan.tuned else mod.attn_fwd
    grid = (math.ceil(Tq / ml.block_m), B * H)
    r = ml.rows
    kern[grid](q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride()[:3],
               r.ptr, r.index, r.kind, r.slot, *plan.shared_args(dense_bias, dummy_f, dummy_i),
               H, c.G, *plan.scalars(), **plan.constexprs(), **plan.launch_kw())
    return out, lse


def _backward(plan: Plan, dout, q, k, v, out, lse, dense_bias):
    c, ml = plan.call, plan.mask
    B, H, Hkv, Tq, Tk = c.B, c.H, c.Hkv, c.Tq, c.Tk
    dout = dout.contiguous()
    delta = (dout.float() * out.float()).sum(-1).contiguous()            # (B, H, Tq)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    want_db = dense_bias is not None and dense_bias.requires_grad
    ds = torch.zeros(B, H, Tq, Tk, device=q.device, dtype=torch.float32) if want_db else None
    dummy_f = torch.zeros(1, device=q.device, dtype=torch.float32)
    dummy_i = torch.zeros(1, device=q.device, dtype=torch.int8)
    tail = plan.shared_args(dense_bias, dummy_f, dummy_i)
    mod = plan.kernels.backward
    cx = plan.constexprs()
    col = ml.cols
    kern = mod.attn_bwd_dkdv_tuned if plan.tuned else mod.attn_bwd_dkdv
    kern[(math.ceil(Tk / ml.block_n), B * Hkv)](
        q, k, v, dout, lse, delta, dk, dv, ds if ds is not None else dummy_f,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride()[:3], *dk.stride()[:3],
        *dv.stride()[:3], col.ptr, col.index, col.kind, col.slot, *tail,
        H, Hkv, c.G, *plan.scalars(), **cx, DBIAS=want_db, **plan.launch_kw())
    row = ml.rows
    kern = mod.attn_bwd_dq_tuned if plan.tuned else mod.attn_bwd_dq
    kern[(math.ceil(Tq / ml.block_m), B * H)](
        q, k, v, dout, lse, delta, dq, *q.stride(), *k.stride(), *v.stride(),
        *dout.stride()[:3], *dq.stride()[:3], row.ptr, row.index, row.kind, row.slot, *tail,
        H, c.G, *plan.scalars(), **cx, **plan.launch_kw())
    dbias = None
    if want_db:
        dims = [d for d in range(4) if dense_bias.shape[d] == 1]
        dbias = ds.sum(dim=dims, keepdim=True) if dims else ds
    return dq, dk, dv, dbias


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, dense_bias, plan):
        out, lse = _forward(plan, q, k, v, dense_bias)
        ctx.save_for_backward(q, k, v, out, lse, dense_bias)
        ctx.plan = plan
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    @first_order_only("the 'triton' backend")
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, dense_bias = ctx.saved_tensors
        dq, dk, dv, dbias = _backward(ctx.plan, dout, q, k, v, out, lse, dense_bias)
        return dq, dk, dv, dbias, None


def run_plan(plan: Plan, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Run a plan made for a call on new q, k, v of the same shapes, dtype and device (the
    lowering reused, e.g. across training steps with the same mask); a dense bias is the
    plan's own. Output and base-2 log-sum-exp."""
    c = plan.call
    for name, t, ref in (("q", q, c.q), ("k", k, c.k), ("v", v, c.v)):
        if t.shape != ref.shape or t.dtype != ref.dtype or t.device != ref.device:
            raise ValueError(f"run_plan: {name} must match the plan's call: expected "
                             f"{tuple(ref.shape)} {ref.dtype} on {ref.device}, got "
                             f"{tuple(t.shape)} {t.dtype} on {t.device}")
    return _TritonAttention.apply(q, k, v, plan.bias.dense, plan)


def triton_attention(call, cfg: TritonConfig | None = None, *,
                     interpret: bool | None = None) -> tuple[Tensor, Tensor]:
    """Output (B, H, Tq, Dv) in q's dtype and natural log-sum-exp (B, H, Tq) float32."""
    plan = make_plan(call, cfg, interpret=interpret)
    out, lse2 = run_plan(plan, call.q, call.k, call.v)
    return out, lse2 * LN2
