"""The reference math, literally (the oracle every fast path is tested against).

Materialises the (B, H, Tq, Tk) scores and weights in float32 (float64 for float64
inputs), follows the order of operations of :mod:`attnkit.call.bias`, and gives fully masked
rows weights of 0 (so output 0, gradients 0). Sinks (``call.sinks``, GPT-OSS): one more
column of logit ``sinks[h]`` in every row's softmax, dropped from the weights (value 0).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..call import AttentionCall

__all__ = ["acc_dtype", "attention_weights", "attend"]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of a kernel for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def attention_weights(call: AttentionCall, *, acc: torch.dtype | None = None) -> Tensor:
    """softmax weights ``(B, H, Tq, Tk)`` in the accumulation dtype (before dropout)."""
    acc = acc or acc_dtype(call.dtype)
    B, Hkv, G, Tq, Tk = call.B, call.Hkv, call.G, call.Tq, call.Tk
    q = call.q.to(acc).view(B, Hkv, G, Tq, call.D)          # (B, Hkv, G, Tq, D)
    k = call.k.to(acc)                                       # (B, Hkv, Tk, D)
    s = torch.einsum("bhgqd,bhkd->bhgqk", q, k).reshape(B, call.H, Tq, Tk) * call.scale
    if call.softcap is not None:
        s = call.softcap * torch.tanh(s / call.softcap)
    if call.bias is not None:
        s = s + call.bias.dense(Tq, Tk, device=call.device, dtype=acc)
    if call.mask is not None:
        s = s.masked_fill(~call.dense_mask(), float("-inf"))
    m = s.amax(-1, keepdim=True)                             # (B, H, Tq, 1)
    sink = None if call.sinks is None else call.sinks.to(acc).view(1, -1, 1, 1)
    if sink is not None:  # one more key per row with logit sink[h] and value 0
        m = torch.maximum(m, sink)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    p = torch.exp(s - m)
    denom = p.sum(-1, keepdim=True)
    if sink is not None:
        denom = denom + torch.exp(sink - m)
    return p / torch.where(denom > 0, denom, torch.ones_like(denom))


def attend(call: AttentionCall, w: Tensor) -> Tensor:
    """``dropout(w) @ v`` -> ``(B, H, Tq, Dv)`` in the call's dtype."""
    acc = w.dtype
    if call.dropout_p > 0:
        w = torch.nn.functional.dropout(w, call.dropout_p, training=True)
    B, Hkv, G, Tq = call.B, call.Hkv, call.G, call.Tq
    v = call.v.to(acc)
    out = torch.einsum("bhgqk,bhkd->bhgqd", w.view(B, Hkv, G, Tq, call.Tk), v)
    return out.reshape(B, call.H, Tq, call.Dv).to(call.dtype)
