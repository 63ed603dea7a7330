"""Graph attention network (Velickovic et al., 2018, "Graph Attention Networks").

A graph is node features ``x (N, F)`` and ``edge_index (2, E)`` (int64): column
``e`` is an edge ``edge_index[0, e] = j -> edge_index[1, e] = i``, i.e. node ``i``
(the *target*) attends to its in-neighbour ``j`` (the *source*), as in PyG.

For head ``k``:  ``e_ij = LeakyReLU(a_k^T [W_k h_i || W_k h_j])``,
``alpha_ij = softmax_j(e_ij)`` over the incoming edges of ``i``, and
``h'_i = sum_j alpha_ij W_k h_j``. Heads are concatenated (hidden layers) or
averaged (``concat=False``, the paper's output layer).

Conventions (documented choices, all tested):

* **Duplicate edges** are a multiset: each copy is its own edge and gets its
  own share of the softmax, so a neighbour listed twice gets twice the weight.
  The returned per-edge weights line up with the columns you passed.
* **Self loops** (``add_self_loops=True``, the default) follow PyG's ``GATConv``
  (``remove_self_loops`` then ``add_self_loops``; the paper's ``N(i) + {i}`` is a
  set): every self loop you pass is dropped -- a loop listed twice does not count
  twice -- and exactly one ``(i, i)`` per node is appended. The edges used are your
  non-loop edges in their order, then the loops of nodes ``0..N-1``; the returned
  :class:`GATAttention` carries that edge list beside the weights. With
  ``add_self_loops=False`` your edge list is used as given (loops included, as a
  multiset, like PyG's).
* **Isolated nodes.** A node with no incoming edge (possible only with
  ``add_self_loops=False``) has an empty softmax: its aggregate is 0, so its
  output is just the bias.
* Attention weights are returned *before* attention dropout.

The softmax is a scatter softmax: per-target max (``scatter_reduce`` amax,
detached, for stability), ``exp``, per-target sum with ``index_add``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.checks import check_int as _check_int
__all__ = ["GATLayer", "GAT", "GATConfig", "GATAttention", "scatter_softmax", "check_graph",
           "replace_self_loops"]


class GATAttention(NamedTuple):
    edge_index: Tensor  # (2, E') edges used (with self loops: your non-loop edges, then N loops)
    weights: Tensor     # (E', heads) alpha per edge and head; sums to 1 per target node


def _check_prob(name: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1), got {p!r}")
    return float(p)


def check_graph(x: Tensor, edge_index: Tensor, in_dim: int | None = None) -> None:
    """Validate ``x (N, F)`` and ``edge_index (2, E)``; raise TypeError/ValueError naming the
    argument, what was expected and what came."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor (N, F), got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x: expected a 2-D tensor (N, F), got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x: expected a floating-point dtype, got {x.dtype}")
    if in_dim is not None and x.shape[1] != in_dim:
        raise ValueError(f"x: expected {in_dim} features per node (in_dim), got {x.shape[1]}")
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"edge_index: expected a torch.Tensor (2, E) of dtype torch.int64, got "
                        f"{type(edge_index).__name__}")
    if edge_index.dtype != torch.long:
        raise TypeError(f"edge_index: expected dtype torch.int64 (long), got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index: expected shape (2, E), got {tuple(edge_index.shape)}")
    if edge_index.device != x.device:
        raise ValueError(f"edge_index: expected device {x.device} (that of x), got "
                         f"{edge_index.device}")
    N = x.shape[0]
    if edge_index.numel():
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0 or hi >= N:
            bad = lo if lo < 0 else hi
            raise ValueError(f"edge_index: node indices must lie in [0, N) = [0, {N}) "
                             f"(N = x.shape[0]), got {bad}")


def replace_self_loops(edge_index: Tensor, num_nodes: int) -> Tensor:
    """``edge_index (2, E)`` -> ``(2, E - L + N)``: the ``L`` self loops dropped (every
    copy), then ``(i, i)`` for ``i = 0..N-1`` appended -- PyG's ``remove_self_loops``
    followed by ``add_self_loops``, what :class:`GATLayer` does with ``add_self_loops``."""
    src, dst = edge_index
    keep = edge_index[:, src != dst]                                  # (2, E - L), in order
    loops = torch.arange(num_nodes, device=edge_index.device)
    return torch.cat([keep, loops.unsqueeze(0).expand(2, -1)], dim=1)


def scatter_softmax(scores: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    """Softmax of ``scores (E, H)`` over the edges sharing a target ``index (E,)``.

    Returns ``(E, H)``; for each target and head the weights of its edges sum to 1.
    """
    H = scores.shape[1]
    idx = index.unsqueeze(1).expand(-1, H)                             # (E, H)
    # Per-target max, detached: softmax is shift-invariant, so no gradient flows through it.
    m = scores.new_full((num_nodes, H), float("-inf"))
    m = m.scatter_reduce(0, idx, scores.detach(), reduce="amax", include_self=True)  # (N, H)
    p = torch.exp(scores - m[index])                                   # (E, H), max term = 1
    denom = scores.new_zeros((num_nodes, H)).index_add(0, index, p)    # (N, H), >= 1 if used
    return p / denom[index]


class GATLayer(nn.Module):
    """One graph attention layer: ``(x (N, in_dim), edge_index (2, E))`` ->
    ``(N, heads * out_dim)`` if ``concat`` else ``(N, out_dim)`` (mean over heads).

    ``dropout`` is applied to the attention weights (training only); feature dropout
    on the layer input is the model's job (see :class:`GAT`).
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int = 1, *, concat: bool = True,
                 dropout: float = 0.0, negative_slope: float = 0.2, add_self_loops: bool = True,
                 bias: bool = True):
        super().__init__()
        self.in_dim = _check_int("in_dim", in_dim)
        self.out_dim = _check_int("out_dim", out_dim)
        self.heads = _check_int("heads", heads)
        self.concat, self.add_self_loops = bool(concat), bool(add_self_loops)
        self.dropout = _check_prob("dropout", dropout)
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)):
            raise TypeError(f"negative_slope: expected a float, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)
        self.lin = nn.Linear(in_dim, heads * out_dim, bias=False)      # W for all heads at once
        self.att_dst = nn.Parameter(torch.empty(heads, out_dim))       # a[:C]: target half
        self.att_src = nn.Parameter(torch.empty(heads, out_dim))       # a[C:]: source half
        self.bias = nn.Parameter(torch.zeros(heads * out_dim if concat else out_dim)) if bias \
            else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.lin.weight)
        nn.init.xavier_uniform_(self.att_dst)
        nn.init.xavier_uniform_(self.att_src)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, edge_index: Tensor, return_attention: bool = False):
        """Returns ``out``, or ``(out, GATAttention(edge_index_used, weights (E', heads)))``."""
        check_graph(x, edge_index, self.in_dim)
        N, H, C = x.shape[0], self.heads, self.out_dim
        if self.add_self_loops:
            edge_index = replace_self_loops(edge_index, N)
        src, dst = edge_index                                          # (E',) each
        wh = self.lin(x).view(N, H, C)                                 # (N, H, C)
        # a^T [Wh_i || Wh_j] = a_dst . Wh_i + a_src . Wh_j : compute per node, gather per edge.
        s_dst = (wh * self.att_dst).sum(-1)                            # (N, H)
        s_src = (wh * self.att_src).sum(-1)                            # (N, H)
        e = F.leaky_relu(s_dst[dst] + s_src[src], self.negative_slope)  # (E', H)
        alpha = scatter_softmax(e, dst, N)                             # (E', H)
        a = F.dropout(alpha, self.dropout, self.training)
        msg = wh[src] * a.unsqueeze(-1)                                # (E', H, C)
        out = wh.new_zeros((N, H, C)).index_add(0, dst, msg)           # (N, H, C)
        out = out.reshape(N, H * C) if self.concat else out.mean(dim=1)
        if self.bias is not None:
            out = out + self.bias
        return (out, GATAttention(edge_index, alpha)) if return_attention else out

    def extra_repr(self) -> str:
        return (f"{self.in_dim}, {self.out_dim}, heads={self.heads}, concat={self.concat}, "
                f"dropout={self.dropout}, add_self_loops={self.add_self_loops}")


@dataclass
class GATConfig:
    in_dim: int                   # node feature size F
    out_dim: int                  # classes (or output size)
    hidden_dim: int = 8           # per head (the paper's Cora setting: 8 heads x 8)
    heads: int = 8                # heads in the hidden layers (concatenated)
    out_heads: int = 1            # heads in the output layer (averaged)
    n_layers: int = 2             # >= 1; the last one is the output layer
    dropout: float = 0.6          # feature dropout on each layer's input and attention dropout
    negative_slope: float = 0.2
    add_self_loops: bool = True


class GAT(nn.Module):
    """Stack of :class:`GATLayer`: hidden layers concat heads and apply ELU, the output
    layer averages ``out_heads`` heads. ``forward(x (N, F), edge_index (2, E))`` ->
    logits ``(N, out_dim)``; with ``return_attention=True`` also a list of
    :class:`GATAttention`, one per layer."""

    def __init__(self, cfg: GATConfig):
        super().__init__()
        if not isinstance(cfg, GATConfig):
            raise TypeError(f"cfg: expected a GATConfig, got {type(cfg).__name__}")
        _check_int("n_layers", cfg.n_layers)
        self.cfg = cfg
        self.dropout = _check_prob("dropout", cfg.dropout)
        kw = dict(dropout=cfg.dropout, negative_slope=cfg.negative_slope,
                  add_self_loops=cfg.add_self_loops)
        dims = [cfg.in_dim] + [cfg.hidden_dim * cfg.heads] * (cfg.n_layers - 1)
        self.layers = nn.ModuleList(
            [GATLayer(d, cfg.hidden_dim, cfg.heads, concat=True, **kw) for d in dims[:-1]]
            + [GATLayer(dims[-1], cfg.out_dim, cfg.out_heads, concat=False, **kw)])

    def forward(self, x: Tensor, edge_index: Tensor, return_attention: bool = False):
        check_graph(x, edge_index, self.cfg.in_dim)
        atts = []
        for i, layer in enumerate(self.layers):
            x = F.dropout(x, self.dropout, self.training)
            x, att = layer(x, edge_index, return_attention=True)
            atts.append(att)
            if i < len(self.layers) - 1:
                x = F.elu(x)
        return (x, atts) if return_attention else x
