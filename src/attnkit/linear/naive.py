"""Linear attention, the readable math (O(n^2); what the fast forms in :mod:`.chunk` are
tested against, as fla keeps ``naive.py`` beside ``chunk.py``)::

    out_i = sum_j phi(q_i) . phi(k_j) v_j / (sum_j phi(q_i) . phi(k_j) + eps)

with j over all keys, or j <= i when causal. (The fast forms stabilise FAVOR+'s features
per row in log space; the constants cancel, so with eps = 0 they equal this exactly.)
"""
from __future__ import annotations

from torch import Tensor

from .features import make_feature_map

__all__ = ["linear_attention_naive"]


def linear_attention_naive(q: Tensor, k: Tensor, v: Tensor, feature_map="elu", *,
                           causal: bool = False, eps: float = 1e-6,
                           key_padding: Tensor | None = None) -> Tensor:
    """q (B, H, T, D), k (B, Hkv, T, D), v (B, Hkv, T, Dv) -> (B, H, T, Dv), in q's dtype.
    ``key_padding (B, T)`` bool, True = a real key: the other keys' kernel entries are 0."""
    fm = make_feature_map(feature_map, q.shape[-1])
    G = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)   # (B, H, T, .)
    A = fm(q) @ fm(kk).transpose(-1, -2)                           # (B, H, T, T)
    if causal:
        A = A.tril()
    if key_padding is not None:
        A = A * key_padding[:, None, None, :].to(A.dtype)
    den = A.sum(-1, keepdim=True) + eps
    return (A @ vv) / den.masked_fill(den == 0, 1.0)
