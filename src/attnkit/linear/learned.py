"""A learnable feature map for linear attention (Hedgehog, Zhang et al. ICLR 2024): per
head, a trainable projection ``W (D, D)`` and bias ``b (D)`` followed by a softmax over the
features, both signs::

    phi(x) = [softmax(x W + b), softmax(-(x W + b))]      (D -> 2 D, positive)

Queries and keys have their own maps (a GQA model has fewer key heads than query heads).
``W`` starts as the identity and ``b`` as 0; attention transfer (``attnkit adapt``) trains
them so that ``phi(q) . phi(k)`` reproduces softmax attention. The parameters are an
``nn.Module`` that lives in the model (trained, saved, loaded like any weight).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .features import FeatureMap

__all__ = ["HedgehogFeatureMap", "GivenFeatures"]


class GivenFeatures(FeatureMap):
    """The identity: the inputs of :func:`attnkit.linear.linear_attention` are already
    non-negative features (F = their last dim), e.g. from :class:`HedgehogFeatureMap`."""
    name = "given features"

    def __call__(self, x):
        return x


class HedgehogFeatureMap(nn.Module):
    """Trainable per-head feature maps: ``q_weight (H, D, D)``, ``q_bias (H, D)``,
    ``k_weight (Hkv, D, D)``, ``k_bias (Hkv, D)``; see the module doc."""

    def __init__(self, heads: int, kv_heads: int, dim: int):
        super().__init__()
        for name, val in (("heads", heads), ("kv_heads", kv_heads), ("dim", dim)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"HedgehogFeatureMap: {name} must be an int >= 1, got {val!r}")
        if heads % kv_heads:
            raise ValueError(f"HedgehogFeatureMap: heads ({heads}) must be a multiple of "
                             f"kv_heads ({kv_heads})")
        eye = torch.eye(dim)
        self.q_weight = nn.Parameter(eye.repeat(heads, 1, 1))          # (H, D, D)
        self.q_bias = nn.Parameter(torch.zeros(heads, dim))            # (H, D)
        self.k_weight = nn.Parameter(eye.repeat(kv_heads, 1, 1))       # (Hkv, D, D)
        self.k_bias = nn.Parameter(torch.zeros(kv_heads, dim))         # (Hkv, D)

    @staticmethod
    def _phi(x: Tensor, w: Tensor, b: Tensor, which: str) -> Tensor:
        if x.dim() != 4 or x.shape[1] != w.shape[0] or x.shape[3] != w.shape[1]:
            raise ValueError(f"{which}: expected (B, {w.shape[0]}, T, {w.shape[1]}), got "
                             f"{tuple(x.shape)}")
        y = torch.einsum("bhtd,hde->bhte", x, w.to(x.dtype)) + b.to(x.dtype)[:, None]
        return torch.cat([torch.softmax(y, -1), torch.softmax(-y, -1)], -1)  # (B, h, T, 2D)

    def queries(self, q: Tensor) -> Tensor:
        """q (B, H, T, D) -> features (B, H, T, 2D)."""
        return self._phi(q, self.q_weight, self.q_bias, "query")

    def keys(self, k: Tensor) -> Tensor:
        """k (B, Hkv, T, D) -> features (B, Hkv, T, 2D)."""
        return self._phi(k, self.k_weight, self.k_bias, "key")

    def extra_repr(self):
        H, D, _ = self.q_weight.shape
        return f"heads={H}, kv_heads={self.k_weight.shape[0]}, dim={D}"
