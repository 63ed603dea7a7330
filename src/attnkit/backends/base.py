"""The backend contract and the registry.

Every backend receives one validated :class:`AttentionCall` and either serves it
exactly or says why it cannot (``unsupported`` returns a reason). ``attention``
never switches algorithm silently: a backend asked for by name that cannot serve
a call raises :class:`UnsupportedCall` with that reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ..bias import BiasSpec
from ..errors import UnsupportedCall
from ..masks import MaskSpec, _Window

__all__ = ["AttentionCall", "Backend", "UnsupportedCall", "register_backend", "get_backend",
           "available_backends"]




@dataclass(frozen=True, eq=False)
class AttentionCall:
    """One validated attention problem.

    Shapes: ``q (B, H, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``,
    ``H % Hkv == 0`` (GQA group size ``G = H // Hkv``; MQA when ``Hkv == 1``).
    """
    q: Tensor
    k: Tensor
    v: Tensor
    mask: MaskSpec | None
    bias: BiasSpec | None
    scale: float
    softcap: float | None
    dropout_p: float

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
        return self.H // self.Hkv

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
        ts = [self.q, self.k, self.v] + self.bias_tensors
        return torch.is_grad_enabled() and any(t.requires_grad for t in ts)

    @cached_property
    def bias_tensors(self) -> list[Tensor]:
        from ..bias import _SumBias, _TensorBias
        parts = [] if self.bias is None else self.bias.parts if isinstance(self.bias, _SumBias) \
            else [self.bias]
        return [p.values for p in parts if isinstance(p, _TensorBias)]

    @property
    def is_causal_only(self) -> bool:
        """The mask is exactly ``causal()`` (no other spec)."""
        m = self.mask
        return isinstance(m, _Window) and m.left == float("inf") and m.right == 0

    def dense_mask(self) -> Tensor | None:
        """Boolean (Bm, Hm, Tq, Tk) on the call's device, or None when unmasked."""
        if self.mask is None:
            return None
        return self.mask.dense(self.Tq, self.Tk, device=self.device)

    def block_map(self, block_q: int, block_k: int) -> Tensor | None:
        """The mask's block map at this tiling (cached on the call), or None if unmasked."""
        if self.mask is None:
            return None
        cache = self.__dict__.setdefault("_block_maps", {})
        key = (block_q, block_k)
        if key not in cache:
            cache[key] = self.mask.block_map(self.Tq, self.Tk, block_q, block_k)
        return cache[key]

    def flops(self) -> float:
        """Dense forward FLOPs (QK^T and PV), ignoring the mask."""
        return 2.0 * self.B * self.H * self.Tq * self.Tk * (self.D + self.Dv)


class Backend:
    """Base class. Subclasses set ``name`` and ``description`` and implement
    ``unsupported`` and ``forward``."""

    name: str = ""
    description: str = ""

    def unsupported(self, call: AttentionCall) -> str | None:
        """None if this backend can serve ``call`` exactly, else the reason it cannot."""
        return None

    def forward(self, call: AttentionCall) -> Tensor:
        """Output ``(B, H, Tq, Dv)`` in the dtype of q; differentiable w.r.t. q, k, v."""
        raise NotImplementedError

    def forward_with_weights(self, call: AttentionCall) -> tuple[Tensor, Tensor]:
        """Output and weights ``(B, H, Tq, Tk)``. Default: forward, then the weights
        recomputed by the reference (backends that never form them)."""
        from .reference import attention_weights
        return self.forward(call), attention_weights(call)

    def __repr__(self):
        return f"<attnkit backend {self.name!r}>"


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend, *, replace: bool = False) -> Backend:
    """Add a backend to the registry under ``backend.name``."""
    if not isinstance(backend, Backend) or not backend.name:
        raise TypeError(f"register_backend: expected a named Backend instance, got {backend!r}")
    if backend.name in _REGISTRY and not replace:
        raise ValueError(f"register_backend: a backend named {backend.name!r} is already "
                         "registered (pass replace=True to override)")
    if backend.name == "auto":
        raise ValueError("register_backend: 'auto' is reserved for backend selection")
    _REGISTRY[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    if not isinstance(name, str):
        raise TypeError(f"backend: expected a backend name (str), got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"backend: expected one of {['auto'] + available_backends()}, "
                         f"got {name!r}") from None


def available_backends() -> list[str]:
    return list(_REGISTRY)
