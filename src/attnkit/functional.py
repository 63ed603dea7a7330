"""``attention(q, k, v, ...)``: the one entry point.

Layout: ``q (B, H, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)`` ->
``out (B, H, Tq, Dv)``; ``H % Hkv == 0`` (GQA; MQA when ``Hkv == 1``). Validation lives in
:mod:`attnkit.call`, the ``auto`` rule and :func:`~attnkit.backends.use_backends` in
:mod:`attnkit.backends.selection`.
"""
from __future__ import annotations

from torch import Tensor

from .backends.selection import resolve_backend, select_backend
from .call import make_call

__all__ = ["attention", "select_backend", "make_call"]


def attention(q: Tensor, k: Tensor, v: Tensor, *, mask=None, bias=None, scale: float | None = None,
              softcap: float | None = None, dropout_p: float = 0.0, backend: str = "auto",
              return_weights: bool = False):
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
            :class:`~attnkit.errors.UnsupportedCall` -- attnkit never switches algorithm
            silently. :func:`~attnkit.backends.use_backends` scopes the choice.
        return_weights: also return the weights ``(B, H, Tq, Tk)`` (before dropout),
            recomputed by the reference math when the backend never forms them.

    Fully masked query rows give output 0 (and zero gradients), never NaN.
    """
    call = make_call(q, k, v, mask=mask, bias=bias, scale=scale, softcap=softcap,
                     dropout_p=dropout_p)
    be = resolve_backend(backend, call)
    if return_weights:
        return be.forward_with_weights(call)
    return be.forward(call)
