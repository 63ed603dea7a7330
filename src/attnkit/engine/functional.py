"""``attention(q, k, v, ...)``: the one entry point.

Layout: ``q (B, H, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)`` ->
``out (B, H, Tq, Dv)``; ``H % Hkv == 0`` (GQA; MQA when ``Hkv == 1``). Validation lives in
:mod:`attnkit.call`, the ``auto`` rule and :func:`~attnkit.backends.use_backends` in
:mod:`attnkit.backends.selection`.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from ..backends.selection import current_policy, resolve_backend, select_backend
from ..call import AttentionCall, autocast_inputs, make_call
from ..kernels.reference import attention_weights

__all__ = ["attention", "select_backend", "make_call"]


def attention(q: Tensor, k: Tensor, v: Tensor, *, mask=None, bias=None, scale: float | None = None,
              softcap: float | None = None, dropout_p: float = 0.0, backend: str = "auto",
              return_weights: bool = False, sinks: Tensor | None = None):
    """Scaled dot-product attention ``softmax(q k^T * scale + bias, mask) v``.

    Args:
        q: ``(B, H, Tq, D)``.  k: ``(B, Hkv, Tk, D)``.  v: ``(B, Hkv, Tk, Dv)``;
            ``H % Hkv == 0`` (GQA; MQA when ``Hkv == 1``), never copied per query head.
        mask: a spec from :mod:`attnkit.masks` (``causal() & window(256)``, ...), a sparse
            pattern from :mod:`attnkit.sparse`, or a tensor -- bool (True = attend) or
            additive float (-inf = masked) -- broadcast to (B, H, Tq, Tk) exactly as
            SDPA broadcasts ``attn_mask``. When Tq < Tk, positions align to the end.
        bias: ``alibi(H)``, a float tensor broadcastable to (B, H, Tq, Tk), or a sum.
        scale: defaults to ``1/sqrt(D)``.
        softcap: if set, scores become ``softcap * tanh(scores / softcap)`` (before bias).
        dropout_p: dropout on the weights (training).
        backend: ``"auto"`` or a registered name (``reference``, ``sdpa``, ``flex``,
            ``tiled``, ...). A named backend that cannot serve the call raises
            :class:`~attnkit.core.errors.UnsupportedCall` -- attnkit never switches algorithm
            silently. :func:`~attnkit.backends.use_backends` scopes the choice.
        return_weights: also return the weights ``(B, H, Tq, Tk)`` (before dropout),
            recomputed by the reference math when the backend never forms them.
        sinks: learned per-head sink logits ``(H,)`` (GPT-OSS's ``s_aux``): every row's
            softmax gets one more column of logit ``sinks[h]`` and value 0 (the weights
            leave it out, so rows sum to less than 1); differentiable. Served by
            ``reference`` and ``tiled`` (output times ``sigmoid(lse - sinks[h])``); the
            other backends refuse it by name.

    Fully masked query rows give output 0 (and zero gradients), never NaN.

    Dtypes, as ``torch.nn.functional.scaled_dot_product_attention``: q, k and v must share
    one dtype (``TypeError`` otherwise). Under ``torch.autocast`` (CPU or CUDA) every
    floating q, k, v other than float64 is first cast to autocast's dtype (a bf16 q with
    fp32 k/v is fine), the output (and weights) come in that dtype, and the backend
    runs with autocast off: its own accumulation (fp32 in ``reference``/``tiled``)
    is kept, whichever backend serves.

    Empty inputs, as SDPA: B, H (with Hkv), Tq, Tk or Dv may be 0. The output is the empty
    ``(B, H, Tq, Dv)`` tensor, or zeros when only Tk is 0 (no key: a fully masked row;
    SDPA returns zeros too); gradients are zeros of the inputs' shapes. D must be >= 1.

    ``torch.compile``: with ``backend="auto"`` (or ``"sdpa"``/``"reference"``), no mask or
    ``causal()``, with or without ``alibi``, the call compiles with ``fullgraph=True``
    (no graph break). Other masks graph-break: a tensor-backed or non-band mask needs its
    block map on the host for ``auto``, ``sdpa`` checks for fully masked rows, and
    ``tiled`` plans its tiles in Python (it runs eagerly inside the compiled function).

    Double backward (``create_graph=True``): ``reference`` supports it, ``sdpa`` where
    torch's kernel does (the math kernel; not the CPU flash kernel, where torch raises);
    ``tiled``, sparse patterns, ``ring`` and ``triton`` raise one ``RuntimeError`` saying
    it is unsupported when the second backward reaches them.
    """
    q, k, v, autocast_device = autocast_inputs(q, k, v)
    call = make_call(q, k, v, mask=mask, bias=bias, scale=scale, softcap=softcap,
                     dropout_p=dropout_p, sinks=sinks, allow_empty=True)
    if call.empty:
        if backend != "auto" or current_policy().override:
            resolve_backend(backend, call)  # a named backend that cannot serve still says so
        return _empty_attention(call, return_weights)
    be = resolve_backend(backend, call)
    off = (torch.autocast(autocast_device, enabled=False) if autocast_device is not None
           else contextlib.nullcontext())
    with off:
        if return_weights:
            return be.forward_with_weights(call)
        return be.forward(call)


def _empty_attention(call: AttentionCall, return_weights: bool):
    """The output of a call with no output element or no key, differentiable: (B, Hkv, G,
    Tq, Tk) scores contracted with v give zeros (Tk = 0) or an empty tensor, and zero
    gradients of the right shapes."""
    B, Hkv, G, Tq, Tk = call.B, call.Hkv, call.G, call.Tq, call.Tk
    q5 = call.q.reshape(B, Hkv, G, Tq, call.D)                                 # (B, Hkv, G, Tq, D)
    s = torch.einsum("bhgqd,bhkd->bhgqk", q5, call.k)                         # (B, Hkv, G, Tq, Tk)
    out = torch.einsum("bhgqk,bhkd->bhgqd", s * 0, call.v).reshape(B, call.H, Tq, call.Dv)
    if not return_weights:
        return out
    if s.numel():  # only Dv is 0: the weights exist
        return out, attention_weights(call).to(call.dtype)
    return out, call.q.new_zeros(B, call.H, Tq, Tk)
