"""Attention rollout (Abnar & Zuidema 2020): where information at the input went, across
layers. Each layer's map is averaged over heads, the residual connection added as the
identity (``0.5 A + 0.5 I``, rows renormalised) and the layers multiplied:
``R_l = Â_l ... Â_0``. Row i of ``R_l`` says how much of token i's representation after
layer l traces back to each input token. Attention *flow* (the same paper): the graph of
tokens x layers with the edges' capacities ``Â_l[i, j]``; ``F_l[i, j]`` is the maximum
flow from input token j to token i after layer l (scipy's ``maximum_flow`` on capacities
scaled to integers, 1e-6 resolution) -- T^2 flows per layer, so only up to
:data:`FLOW_MAX_TOKENS` tokens (and in the page up to :data:`FLOW_MAX_PROBLEMS` flows).

:func:`rollout_view` / :func:`flow_view` turn a captured self-attention view of every
layer into a view the page shows beside the raw maps (one map per layer, "head" 0).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..sources.capture import View

__all__ = ["rollout", "rollout_view", "flow", "flow_view", "FLOW_MAX_TOKENS"]

FLOW_MAX_TOKENS = 64
FLOW_MAX_PROBLEMS = 12 * 32 * 32   # L x T^2 max flows: 7 s of CPU at 12 layers x 32 tokens
_SCALE = 1_000_000


def _augmented(weights: Tensor, residual: float) -> Tensor:
    """(L, H, T, T) -> (L, T, T): heads averaged, ``residual * I`` added, rows renormalised."""
    if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2]:
        raise ValueError(f"weights: expected (L, H, T, T) self-attention maps, got "
                         f"{tuple(weights.shape)}")
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual: expected a weight in [0, 1], got {residual}")
    a = weights.double().mean(1)                                           # (L, T, T)
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    a = (1 - residual) * a + residual * eye
    return a / a.sum(-1, keepdim=True).clamp_min(1e-30)


def rollout(weights: Tensor, residual: float = 0.5) -> Tensor:
    """``weights (L, H, T, T)`` of consecutive layers -> ``(L, T, T)`` rollout after each."""
    a = _augmented(weights, residual)
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
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


def flow(weights: Tensor, residual: float = 0.5) -> Tensor:
    """``weights (L, H, T, T)`` -> ``(L, T, T)``: max flow from each input token (column) to
    each token after layer l (row), through the layers' augmented maps."""
    import numpy as np
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_flow
    a = _augmented(weights, residual)
    L, T, _ = a.shape
    if T > FLOW_MAX_TOKENS:
        raise ValueError(f"weights: attention flow solves T^2 max-flow problems per layer; "
                         f"expected at most {FLOW_MAX_TOKENS} tokens, got {T}")
    cap = (a * _SCALE).round().to(torch.int64)                              # (L, T, T)
    rows, cols, vals = [], [], []
    for li in range(L):                       # edge (layer li, key j) -> (li + 1, query i)
        i, j = torch.nonzero(cap[li], as_tuple=True)
        rows.append((li * T + j).numpy())
        cols.append(((li + 1) * T + i).numpy())
        vals.append(cap[li][i, j].numpy())
    n = (L + 1) * T
    g = csr_matrix((np.concatenate(vals).astype(np.int32),
                    (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    out = torch.zeros(L, T, T, dtype=torch.float64)
    for li in range(L):
        for i in range(T):
            for j in range(T):
                out[li, i, j] = maximum_flow(g, j, (li + 1) * T + i).flow_value / _SCALE
    return out.float()


def flow_view(v: View, n_layers: int) -> View | None:
    """Attention flow of a square view of every layer, within FLOW_MAX_TOKENS and
    FLOW_MAX_PROBLEMS (None otherwise)."""
    T = len(v.q)
    if T != len(v.k) or list(v.layers) != list(range(n_layers)) or T > FLOW_MAX_TOKENS or \
            n_layers * T * T > FLOW_MAX_PROBLEMS:
        return None
    return View("flow", "attention flow (Abnar & Zuidema 2020): the maximum flow from each "
                "input token (column) to each token after layer l (row) through the "
                "head-averaged maps with the residual as 0.5 I", v.q, v.k,
                flow(v.weights)[:, None], list(v.layers), v.causal)
