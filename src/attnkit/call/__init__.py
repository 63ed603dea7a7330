"""One validated attention problem (:class:`AttentionCall`) and its validation (:func:`make_call`).

Shapes: ``q (B, H, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``,
``H % Hkv == 0`` (GQA group size ``G = H // Hkv``; MQA when ``Hkv == 1``). Every backend
receives one call; a mask arrives as a boolean spec resolved for (Tq, Tk), biases
(ALiBi, tensors, the values of additive masks) as one bias spec.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from .bias import BiasSpec, as_bias
from .blocks import Blocks, blocks_for
from ..masks import MaskSpec, as_mask, split_additive

__all__ = ["AttentionCall", "make_call", "validate_qkv", "autocast_inputs", "sees_every_key"]


@dataclass(frozen=True, eq=False)
class AttentionCall:
    """One validated attention problem (see the module doc for shapes)."""
    q: Tensor
    k: Tensor
    v: Tensor
    mask: MaskSpec | None
    bias: BiasSpec | None
    scale: float
    softcap: float | None
    dropout_p: float
    sinks: Tensor | None = None  # (H,) learned sink logits (GPT-OSS): a key column, value 0

    @property
    def B(self) -> int:
        return self.q.shape[0]

    @property
    def H(self) -> int:
        return self.q.shape[1]

    @property
    def Hkv(self) -> int:
        return self.k.shape[1]

    @property
    def G(self) -> int:
        return self.H // self.Hkv if self.Hkv else 1  # H = Hkv = 0: an empty call

    @property
    def Tq(self) -> int:
        return self.q.shape[2]

    @property
    def Tk(self) -> int:
        return self.k.shape[2]

    @property
    def D(self) -> int:
        return self.q.shape[3]

    @property
    def Dv(self) -> int:
        return self.v.shape[3]

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def dtype(self) -> torch.dtype:
        return self.q.dtype

    @cached_property
    def needs_grad(self) -> bool:
        ts = [self.q, self.k, self.v] + self.bias_tensors + (
            [] if self.sinks is None else [self.sinks])
        return torch.is_grad_enabled() and any(t.requires_grad for t in ts)

    @cached_property
    def bias_tensors(self) -> list[Tensor]:
        """The bias tensors that may carry gradients (ALiBi has none)."""
        return [] if self.bias is None else self.bias.tensors()

    @property
    def empty(self) -> bool:
        """No output element or no key: (B, H, Tq, Dv) or Tk is 0 (see :func:`make_call`)."""
        return 0 in (self.B, self.H, self.Tq, self.Tk, self.Dv)

    @property
    def is_causal_only(self) -> bool:
        """The mask is exactly ``causal()``."""
        return self.mask is not None and self.mask.is_causal

    def dense_mask(self) -> Tensor | None:
        """Boolean (Bm, Hm, Tq, Tk) on the call's device, or None when unmasked."""
        if self.mask is None:
            return None
        return self.mask.dense(self.Tq, self.Tk, device=self.device)

    def block_map(self, block_q: int, block_k: int) -> Tensor | None:
        """The mask's block map at this tiling, or None if unmasked (see :meth:`blocks`)."""
        return None if self.mask is None else self.blocks(block_q, block_k).map

    def blocks(self, block_q: int, block_k: int) -> Blocks:
        """The block-map cache entry of the (non-None) mask at this tiling
        (:func:`attnkit.call.blocks.blocks_for`), looked up once per call."""
        return self.once(("blocks", block_q, block_k),
                         lambda: blocks_for(self.mask, self.Tq, self.Tk, block_q, block_k))

    def once(self, key, compute):
        """``compute()`` the first time ``key`` is asked on this call, the same object
        after: what ``auto`` works out to choose a backend (tile sizes, a pattern's
        pieces, the block map) reaches the chosen backend instead of being redone."""
        memo = self.__dict__.setdefault("_once", {})
        if key not in memo:
            memo[key] = compute()
        return memo[key]

    def dense_bytes(self) -> int:
        """Bytes a dense (B, H, Tq, Tk) mask/bias for this call would take."""
        return self.B * self.H * self.Tq * self.Tk * (self.q.element_size() + 1)

    def flops(self) -> float:
        """Dense forward FLOPs (QK^T and PV), ignoring the mask."""
        return 2.0 * self.B * self.H * self.Tq * self.Tk * (self.D + self.Dv)


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ")"


def _valid_at_once(q, k, v, allow_empty: bool) -> bool:
    """True when q, k, v pass every check of :func:`validate_qkv` with Hkv >= 1 (False:
    let the checks below find and name what is wrong, or accept an empty call)."""
    if not (isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)
            and q.dim() == 4 and k.dim() == 4 and v.dim() == 4):
        return False
    B, H, Tq, D = q.shape
    Bk, Hk, Tk, Dk = k.shape
    Bv, Hv, Tv, Dv = v.shape
    dt = q.dtype
    return (dt.is_floating_point and k.dtype == dt and v.dtype == dt and Bk == B == Bv
            and Dk == D >= 1 and Hv == Hk >= 1 and Tv == Tk and H % Hk == 0
            and (allow_empty or min(B, H, Tq, Tk, Dv) >= 1)
            and q.device == k.device == v.device)


def validate_qkv(q, k, v, *, allow_empty: bool = False) -> None:
    """Raise TypeError/ValueError naming the tensor, the expected and the received.

    ``allow_empty``: B, H, Hkv (only with H = 0), Tq, Tk and Dv may be 0 (``attention``
    then returns what SDPA returns: the empty output, or zeros when only Tk is 0); D must
    stay >= 1."""
    if _valid_at_once(q, k, v, allow_empty):      # the common case in ~1 us; errors below
        return
    for name, t, layout in (("q", q, "(B, H, Tq, D)"), ("k", k, "(B, Hkv, Tk, D)"),
                            ("v", v, "(B, Hkv, Tk, Dv)")):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor {layout}, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name}: expected a 4-D tensor {layout}, got {t.dim()}-D with "
                             f"shape {_shape(t)}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name}: expected a floating-point dtype, got {t.dtype}")
        if not allow_empty and min(t.shape) < 1:
            raise ValueError(f"{name}: every dimension must be >= 1, got shape {_shape(t)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v: expected one dtype, got q={q.dtype}, k={k.dtype}, v={v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v: expected one device, got q={q.device}, k={k.device}, "
                         f"v={v.device}")
    B, H, _, D = q.shape
    if D < 1:
        raise ValueError(f"q: expected a head dim D >= 1, got shape {_shape(q)}")
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"k, v: expected batch size B={B} (from q), got k {_shape(k)}, "
                         f"v {_shape(v)}")
    if k.shape[3] != D:
        raise ValueError(f"k: expected head dim D={D} (from q), got D={k.shape[3]} "
                         f"(k shape {_shape(k)})")
    if v.shape[1] != k.shape[1] or v.shape[2] != k.shape[2]:
        raise ValueError(f"v: expected (B, Hkv, Tk) = {tuple(k.shape[:3])} (from k), got "
                         f"shape {_shape(v)}")
    if (H % k.shape[1] != 0) if k.shape[1] else H != 0:
        raise ValueError(f"k: expected a number of heads Hkv dividing H={H} (GQA/MQA), got "
                         f"Hkv={k.shape[1]}")


def autocast_inputs(q, k, v):
    """q, k, v as ``torch.nn.functional.scaled_dot_product_attention`` receives them under
    ``torch.autocast`` (it is on autocast's lower-precision list): when autocast is on for
    q's device type, every floating q, k, v on that device type other than float64 is cast
    to autocast's dtype. Returns ``(q, k, v, device_type)``, ``device_type`` None when
    autocast is off (nothing cast). Non-tensors pass through (validation names them)."""
    if not isinstance(q, Tensor):
        return q, k, v, None
    dev = q.device.type
    try:
        if not torch.is_autocast_enabled(dev):
            return q, k, v, None
        dtype = torch.get_autocast_dtype(dev)
    except (RuntimeError, TypeError, ValueError):   # a device type autocast does not know
        return q, k, v, None

    def cast(t):
        eligible = (isinstance(t, Tensor) and t.device.type == dev and t.dtype.is_floating_point
                    and t.dtype != torch.float64)
        return t.to(dtype) if eligible else t
    return cast(q), cast(k), cast(v), dev


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a positive finite number or None, got {value!r}")
    return float(value)


def _sinks(sinks, H: int, q: Tensor) -> Tensor | None:
    if sinks is None:
        return None
    if not isinstance(sinks, Tensor) or not sinks.dtype.is_floating_point or (
            tuple(sinks.shape) != (H,)):
        got = (f"shape {tuple(sinks.shape)} {sinks.dtype}" if isinstance(sinks, Tensor)
               else type(sinks).__name__)
        raise ValueError(f"sinks: expected a floating-point tensor of shape (H,) = ({H},) "
                         f"(one sink logit per query head), got {got}")
    if sinks.device != q.device:
        raise ValueError(f"sinks: expected a tensor on {q.device} (q's device), got "
                         f"{sinks.device}")
    return sinks


def sees_every_key(spec: MaskSpec | None, Tq: int, Tk: int) -> bool:
    """Does a resolved boolean spec allow every pair of a (Tq, Tk) call: ``full()``, or a
    band holding every distance of the call (a decoding step under ``causal()``)?"""
    band = None if spec is None else spec.band()
    return band is not None and band[0] <= 1 - Tq and band[1] >= Tk - 1


def make_call(q, k, v, *, mask=None, bias=None, scale=None, softcap=None,
              dropout_p=0.0, sinks=None, allow_empty: bool = False) -> AttentionCall:
    """Validate the arguments and build the :class:`AttentionCall` backends receive
    (``allow_empty``: see :func:`validate_qkv`; :func:`attnkit.attention` allows it)."""
    validate_qkv(q, k, v, allow_empty=allow_empty)
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else _positive("scale", scale)
    softcap = None if softcap is None else _positive("softcap", softcap)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not (
            0.0 <= dropout_p < 1.0):
        raise ValueError(f"dropout_p: expected a float in [0, 1), got {dropout_p!r}")

    spec = as_mask(mask)
    spec = None if spec is None else spec.resolve(Tq, Tk)    # length-dependent patterns
    spec, additive = split_additive(spec)
    if sees_every_key(spec, Tq, Tk):
        spec = None     # the unmasked fast paths
    bias_spec = as_bias(list(additive) + [bias] if additive else bias)
    for obj in (spec, bias_spec):
        if obj is not None:
            obj.validate(B, H, Tq, Tk)
    # specs carry small index tensors (lengths, ids) and masks/biases: follow q's device
    spec = spec.to(q.device) if spec is not None else None
    bias_spec = bias_spec.to(q.device) if bias_spec is not None else None
    return AttentionCall(q, k, v, spec, bias_spec, float(scale), softcap, float(dropout_p),
                         _sinks(sinks, H, q))
