"""Additive score biases: ALiBi, arbitrary tensors, and their sums.

A bias adds ``bias[b, h, q, k]`` to the scaled (and soft-capped) scores before the
softmax. Like masks, biases are specs that evaluate one tile at a time, so tiled
kernels never materialise a (Tq, Tk) bias they do not need.

Order of operations in every backend::

    s = (q @ k^T) * scale
    s = softcap * tanh(s / softcap)        # if softcap
    s = s + bias                           # ALiBi / tensors / additive masks
    s = where(mask, s, -inf)
    out = softmax(s) @ v                   # fully masked rows -> 0
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..masks.tensor import check_additive

__all__ = ["BiasSpec", "ALiBi", "TensorBias", "SumBias", "alibi", "alibi_slopes", "tensor_bias",
           "as_bias"]


def alibi_slopes(n_heads: int) -> Tensor:
    """ALiBi head slopes (Press et al. 2022), including the paper's rule for head counts
    that are not a power of two: the slopes of the closest lower power of two, then
    every other slope of the next power of two."""
    if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1:
        raise ValueError(f"alibi_slopes: n_heads must be an int >= 1, got {n_heads!r}")

    def pow2(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    p = 2 ** math.floor(math.log2(n_heads))
    slopes = pow2(p)
    if p < n_heads:
        slopes += pow2(2 * p)[0::2][: n_heads - p]
    return torch.tensor(slopes, dtype=torch.float64)


class BiasSpec:
    """Base class: ``tile(...)`` returns a float tensor broadcastable to
    ``(B, H, q1-q0, k1-k0)``; ``tensors()`` the tensors that may carry gradients."""

    batch_dependent = False
    head_dependent = False
    toeplitz = False  # depends on (aligned q position - k) only: kernels cache its tiles

    def tensors(self) -> list[Tensor]:
        return []

    def distance_slopes(self) -> Tensor | None:
        """Per-head slopes ``m (H,)`` when the bias is exactly ``-m_h * |p - k|`` (ALiBi),
        else None: kernels then evaluate it from H numbers."""
        return None

    def validate(self, B: int, H: int, Tq: int, Tk: int) -> None:
        pass

    def tile(self, q0, q1, k0, k1, *, Tq, Tk, device=None, dtype=torch.float32) -> Tensor:
        raise NotImplementedError

    def dense(self, Tq: int, Tk: int, *, device=None, dtype=torch.float32) -> Tensor:
        return self.tile(0, Tq, 0, Tk, Tq=Tq, Tk=Tk, device=device, dtype=dtype)

    def score_mod_terms(self, Tq: int, Tk: int):
        """A function ``(b, h, q_idx, kv_idx) -> bias`` for FlexAttention's score_mod."""
        raise NotImplementedError

    def __add__(self, other):
        other = as_bias(other, "other")
        return self if other is None else SumBias([self, other])

    __radd__ = __add__

    def to(self, device) -> "BiasSpec":
        return self


class ALiBi(BiasSpec):
    """``-slope_h * |p - k|`` with p the query's aligned position."""
    head_dependent = True
    toeplitz = True

    def __init__(self, slopes: Tensor):
        self.slopes = slopes

    def distance_slopes(self):
        return self.slopes

    def validate(self, B, H, Tq, Tk):
        if self.slopes.numel() != H:
            raise ValueError(f"alibi: built for {self.slopes.numel()} heads, but q has H={H}")

    def tile(self, q0, q1, k0, k1, *, Tq, Tk, device=None, dtype=torch.float32):
        device = device if device is not None else self.slopes.device
        pos_q = torch.arange(q0, q1, device=device, dtype=dtype) + (Tk - Tq)
        pos_k = torch.arange(k0, k1, device=device, dtype=dtype)
        dist = (pos_q[:, None] - pos_k[None, :]).abs_()              # (tq, tk)
        return -self.slopes.to(device, dtype).view(1, -1, 1, 1) * dist  # (1, H, tq, tk)

    def score_mod_terms(self, Tq, Tk):
        off = Tk - Tq
        slopes = self.slopes.to(torch.float32)

        def term(b, h, q_idx, kv_idx):
            return -slopes[h] * (q_idx + off - kv_idx).abs()
        return term

    def to(self, device):
        return ALiBi(self.slopes.to(device))

    def __repr__(self):
        return f"alibi({self.slopes.numel()})"


class TensorBias(BiasSpec):
    """A float tensor broadcastable to (B, H, Tq, Tk) exactly as SDPA broadcasts a float
    ``attn_mask`` (right-aligned; size-1 dimensions broadcast, Tq and Tk included)."""

    def __init__(self, values: Tensor):
        self.values = values  # (Bb, Hb, Tq or 1, Tk or 1)
        self.batch_dependent = values.shape[0] > 1
        self.head_dependent = values.shape[1] > 1

    def tensors(self):
        return [self.values]

    def validate(self, B, H, Tq, Tk):
        if not all(s in (1, t) for s, t in zip(self.values.shape, (B, H, Tq, Tk))):
            raise ValueError(f"bias: expected a tensor broadcastable to (B, H, Tq, Tk) = "
                             f"({B}, {H}, {Tq}, {Tk}) (right-aligned, as SDPA's attn_mask), "
                             f"got shape {tuple(self.values.shape)}")

    def tile(self, q0, q1, k0, k1, *, Tq, Tk, device=None, dtype=torch.float32):
        v = self.values
        qs = slice(q0, q1) if v.shape[2] > 1 else slice(0, 1)
        ks = slice(k0, k1) if v.shape[3] > 1 else slice(0, 1)
        t = v[:, :, qs, ks]
        return t.to(device=device if device is not None else t.device, dtype=dtype)

    def score_mod_terms(self, Tq, Tk):
        v = self.values
        pick = [d for d in range(4) if v.shape[d] > 1]

        def term(b, h, q_idx, kv_idx):
            idx = [b, h, q_idx, kv_idx]
            return v[tuple(idx[d] if d in pick else 0 for d in range(4))]
        return term

    def to(self, device):
        return TensorBias(self.values.to(device))

    def __repr__(self):
        return f"tensor_bias{tuple(self.values.shape)}"


class SumBias(BiasSpec):
    """The sum of several biases."""

    def __init__(self, parts):
        flat = []
        for p in parts:
            flat.extend(p.parts if isinstance(p, SumBias) else [p])
        self.parts = flat
        self.batch_dependent = any(p.batch_dependent for p in flat)
        self.head_dependent = any(p.head_dependent for p in flat)
        self.toeplitz = all(p.toeplitz for p in flat)

    def tensors(self):
        return [t for p in self.parts for t in p.tensors()]

    def validate(self, B, H, Tq, Tk):
        for p in self.parts:
            p.validate(B, H, Tq, Tk)

    def tile(self, q0, q1, k0, k1, *, Tq, Tk, device=None, dtype=torch.float32):
        out = None
        for p in self.parts:
            t = p.tile(q0, q1, k0, k1, Tq=Tq, Tk=Tk, device=device, dtype=dtype)
            out = t if out is None else out + t
        return out

    def score_mod_terms(self, Tq, Tk):
        terms = [p.score_mod_terms(Tq, Tk) for p in self.parts]

        def term(b, h, q_idx, kv_idx):
            out = terms[0](b, h, q_idx, kv_idx)
            for t in terms[1:]:
                out = out + t(b, h, q_idx, kv_idx)
            return out
        return term

    def to(self, device):
        return SumBias([p.to(device) for p in self.parts])

    def __repr__(self):
        return " + ".join(map(repr, self.parts))


def alibi(n_heads: int) -> BiasSpec:
    """ALiBi linear distance bias ``-slope_h * |pos_q - pos_k|`` (causal: ``slope_h*(k - q)``)."""
    return ALiBi(alibi_slopes(n_heads))


def tensor_bias(values: Tensor, name: str = "bias") -> BiasSpec:
    """An additive bias tensor of 2 to 4 dims broadcastable to (B, H, Tq, Tk) as SDPA
    broadcasts ``attn_mask`` (so 3-D is ``(H, Tq, Tk)``). NaN or +inf raises ValueError;
    -inf masks the entry."""
    if not isinstance(values, Tensor) or not values.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point tensor, got "
                        f"{getattr(values, 'dtype', type(values).__name__)}")
    if not 2 <= values.dim() <= 4:
        raise ValueError(f"{name}: expected 2, 3 or 4 dims broadcastable to (B, H, Tq, Tk) "
                         f"(right-aligned, as SDPA's attn_mask), got shape {tuple(values.shape)}")
    check_additive(values, name)
    return TensorBias(values.reshape((1,) * (4 - values.dim()) + tuple(values.shape)))


def as_bias(bias, name: str = "bias") -> BiasSpec | None:
    """Normalise None / a spec / a tensor / a list of those to one spec (or None)."""
    if bias is None or isinstance(bias, BiasSpec):
        return bias
    if isinstance(bias, Tensor):
        return tensor_bias(bias, name)
    if isinstance(bias, (list, tuple)):
        parts = [as_bias(b, name) for b in bias]
        parts = [p for p in parts if p is not None]
        return None if not parts else parts[0] if len(parts) == 1 else SumBias(parts)
    raise TypeError(f"{name}: expected a BiasSpec (e.g. alibi(H)), a float tensor or None, got "
                    f"{type(bias).__name__}")
