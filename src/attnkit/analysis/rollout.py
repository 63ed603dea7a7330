"""Attention rollout (Abnar & Zuidema 2020): where information at the input went, across
layers. Each layer's map is averaged over heads, the residual connection added as the
identity (``0.5 A + 0.5 I``, rows renormalised) and the layers multiplied:
``R_l = Â_l ... Â_0``. Row i of ``R_l`` says how much of token i's representation after
layer l traces back to each input token. Attention *flow* (the max-flow variant of the
same paper) is not computed here.

:func:`rollout_view` turns a captured self-attention view of every layer into a view the
page shows beside the raw maps (one map per layer, "head" 0).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .capture import View

__all__ = ["rollout", "rollout_view"]


def rollout(weights: Tensor, residual: float = 0.5) -> Tensor:
    """``weights (L, H, T, T)`` of consecutive layers -> ``(L, T, T)`` rollout after each."""
    if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2]:
        raise ValueError(f"weights: expected (L, H, T, T) self-attention maps, got "
                         f"{tuple(weights.shape)}")
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual: expected a weight in [0, 1], got {residual}")
    a = weights.double().mean(1)                                           # (L, T, T)
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    a = (1 - residual) * a + residual * eye
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-30)
    out, r = [], eye
    for layer in a:
        r = layer @ r
        out.append(r)
    return torch.stack(out).float()


def rollout_view(v: View, n_layers: int) -> View | None:
    """The rollout of a square view that holds every layer (else None: the product needs
    all of them)."""
    if len(v.q) != len(v.k) or list(v.layers) != list(range(n_layers)):
        return None
    r = rollout(v.weights)[:, None]                                       # (L, 1, T, T)
    return View("rollout", "attention rollout (Abnar & Zuidema 2020): heads averaged, "
                "residual as 0.5 I, layers multiplied; row = token after layer l, column = "
                "input token it traces back to (one map per layer, as head 0)", v.q, v.k, r,
                list(v.layers), v.causal)
