"""``attention(q, k, v, ...)``: the one entry point, with validation and backend choice.

Layout: ``q (B, H, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)`` ->
``out (B, H, Tq, Dv)``; ``H % Hkv == 0`` (GQA; MQA when ``Hkv == 1``).

The ``auto`` rule (in order; :func:`select_backend` returns the choice and why):

1. softcap, or a mask whose block map is under half full -> ``tiled``
   (skips empty tiles, has a backward; SDPA cannot skip and has no softcap);
2. no mask or ``causal()`` with Tq == Tk, and no bias -> ``sdpa``;
3. other masks/biases whose dense form needs <= 256 MiB -> ``sdpa``;
4. otherwise -> ``tiled`` (O(T*D) memory).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .backends import AttentionCall, UnsupportedCall, get_backend
from .backends.tiled import TileConfig
from .bias import as_bias
from .masks import EMPTY, as_mask, split_additive

__all__ = ["attention", "select_backend", "make_call"]

_DENSE_MASK_BUDGET = 256 * 2**20  # bytes of dense mask/bias 'auto' lets SDPA materialise
_SPARSE_DENSITY = 0.5             # block-map fill below which 'auto' picks 'tiled'


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ")"


def _validate_qkv(q, k, v) -> None:
    for name, t, layout in (("q", q, "(B, H, Tq, D)"), ("k", k, "(B, Hkv, Tk, D)"),
                            ("v", v, "(B, Hkv, Tk, Dv)")):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor {layout}, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name}: expected a 4-D tensor {layout}, got {t.dim()}-D with "
                             f"shape {_shape(t)}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name}: expected a floating-point dtype, got {t.dtype}")
        if min(t.shape) < 1:
            raise ValueError(f"{name}: every dimension must be >= 1, got shape {_shape(t)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v: expected one dtype, got q={q.dtype}, k={k.dtype}, v={v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v: expected one device, got q={q.device}, k={k.device}, "
                         f"v={v.device}")
    B, H, _, D = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"k, v: expected batch size B={B} (from q), got k {_shape(k)}, "
                         f"v {_shape(v)}")
    if k.shape[3] != D:
        raise ValueError(f"k: expected head dim D={D} (from q), got D={k.shape[3]} "
                         f"(k shape {_shape(k)})")
    if v.shape[1] != k.shape[1] or v.shape[2] != k.shape[2]:
        raise ValueError(f"v: expected (B, Hkv, Tk) = {tuple(k.shape[:3])} (from k), got "
                         f"shape {_shape(v)}")
    if H % k.shape[1] != 0:
        raise ValueError(f"k: expected a number of heads Hkv dividing H={H} (GQA/MQA), got "
                         f"Hkv={k.shape[1]}")


def make_call(q, k, v, *, mask=None, bias=None, scale=None, softcap=None,
              dropout_p=0.0) -> AttentionCall:
    """Validate the arguments and build the :class:`AttentionCall` backends receive."""
    _validate_qkv(q, k, v)
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
            math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a positive finite number or None, got {scale!r}")
    if softcap is not None and (isinstance(softcap, bool) or not isinstance(softcap, (int, float))
                                or not (math.isfinite(softcap) and softcap > 0)):
        raise ValueError(f"softcap: expected a positive finite number or None, got {softcap!r}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not (
            0.0 <= dropout_p < 1.0):
        raise ValueError(f"dropout_p: expected a float in [0, 1), got {dropout_p!r}")

    spec, additive = split_additive(as_mask(mask))
    bias_spec = as_bias(list(additive) + [bias] if additive else bias)
    for obj in (spec, bias_spec):
        if obj is not None:
            obj.validate(B, H, Tq, Tk)
    # specs carry small index tensors (lengths, ids) and masks/biases: follow q's device
    spec = spec.to(q.device) if spec is not None else None
    bias_spec = bias_spec.to(q.device) if bias_spec is not None else None
    return AttentionCall(q, k, v, spec, bias_spec, float(scale),
                         None if softcap is None else float(softcap), float(dropout_p))


def select_backend(call: AttentionCall) -> tuple[str, str]:
    """The backend ``auto`` picks for ``call``, and the reason (see the module doc)."""
    if call.softcap is not None:
        return "tiled", "softcap: SDPA cannot apply it"
    if call.mask is not None:
        cfg = TileConfig()
        bm = call.block_map(cfg.block_q, cfg.block_k)
        density = float((bm != EMPTY).float().mean())
        if density < _SPARSE_DENSITY:
            return "tiled", f"sparse mask ({density:.0%} of tiles non-empty): tiled skips the rest"
    if call.bias is None and (call.mask is None or (call.is_causal_only and call.Tq == call.Tk)):
        return "sdpa", "dense or causal: torch SDPA's fused kernel"
    nbytes = call.B * call.H * call.Tq * call.Tk * (call.q.element_size() + 1)
    if nbytes <= _DENSE_MASK_BUDGET:
        return "sdpa", f"mask/bias materialised densely ({nbytes / 2**20:.1f} MiB) for SDPA"
    return "tiled", f"a dense mask would need {nbytes / 2**30:.2f} GiB; tiled needs O(T*D)"


def attention(q: Tensor, k: Tensor, v: Tensor, *, mask=None, bias=None, scale: float | None = None,
              softcap: float | None = None, dropout_p: float = 0.0, backend: str = "auto",
              return_weights: bool = False):
    """Scaled dot-product attention ``softmax(q k^T * scale + bias, mask) v``.

    Args:
        q: ``(B, H, Tq, D)``.  k: ``(B, Hkv, Tk, D)``.  v: ``(B, Hkv, Tk, Dv)``;
            ``H % Hkv == 0`` (GQA; MQA when ``Hkv == 1``), never copied per query head.
        mask: a spec from :mod:`attnkit.masks` (``causal() & window(256)``, ...) or a
            tensor: bool (True = attend) or additive float (-inf = masked), broadcastable
            to (B, H, Tq, Tk). When Tq < Tk, positions align to the end (decoding).
        bias: ``alibi(H)``, a float tensor broadcastable to (B, H, Tq, Tk), or a sum.
        scale: defaults to ``1/sqrt(D)``.
        softcap: if set, scores become ``softcap * tanh(scores / softcap)`` (before bias).
        dropout_p: dropout on the weights (training).
        backend: ``"auto"`` or a registered name (``reference``, ``sdpa``, ``flex``,
            ``tiled``). A named backend that cannot serve the call raises
            :class:`UnsupportedCall` -- attnkit never switches algorithm silently.
        return_weights: also return the weights ``(B, H, Tq, Tk)`` (before dropout),
            recomputed by the reference when the backend never forms them.

    Fully masked query rows give output 0 (and zero gradients), never NaN.
    """
    call = make_call(q, k, v, mask=mask, bias=bias, scale=scale, softcap=softcap,
                     dropout_p=dropout_p)
    if backend == "auto":
        name, _ = select_backend(call)
        be = get_backend(name)
    else:
        be = get_backend(backend)
        why = be.unsupported(call)
        if why:
            raise UnsupportedCall(f"backend {backend!r} cannot serve this call: {why}")
    if return_weights:
        return be.forward_with_weights(call)
    return be.forward(call)
