"""Linear (kernel) attention, the fast forms: O(n) time, no n x n anywhere.

Softmax attention's ``exp(q.k)`` is replaced by a kernel ``phi(q) . phi(k)`` with a
feature map ``phi: R^D -> R^F`` (F features), so

    out_i = sum_j phi(q_i).phi(k_j) v_j / (sum_j phi(q_i).phi(k_j) + eps)

(j over all keys, or j <= i when causal) regroups as ``phi(q_i) S / (phi(q_i) z + eps)``
with ``S = sum_j phi(k_j) v_j^T`` (F x Dv) and ``z = sum_j phi(k_j)`` (F).

Feature maps: ``"elu"`` (elu(x) + 1, Katharopoulos et al. 2020), ``"relu"``, and
:class:`FavorPlus` (Performer's positive orthogonal random features, Choromanski et al.
2020), an unbiased estimator of ``exp(scale * q.k)``.

Forms (all tested equal to a direct O(n²) evaluation of the formula above):

* non-causal: ``S, z`` over all keys, O(n F Dv) time;
* causal, chunked: within a chunk of C tokens the C x C kernel block is masked
  lower-triangular (chunk-parallel); across chunks S and z are carried as the
  recurrent state. O(n (C + F) Dv) time, O(C² + C F + F Dv) working memory
  (autograd keeps one S per chunk for the backward: O(n F Dv / C));
* recurrent: :func:`linear_attention_step` with a :class:`LinearAttentionState` of
  constant size (B, Hkv, F, Dv), for decoding.

**Normaliser.** ``eps`` (default 1e-6) is added to the denominator; it keeps ReLU
features (which can all be 0) finite, and a row whose denominator is exactly 0 gives
output 0. FAVOR+ features are computed stabilised, in log space: query i's features
are divided by their max, and the keys it sees by ``exp(M_i)``, M_i = the max key
log-feature over those keys (all keys, or keys 0..i when causal: a running max, as in
online softmax; the recurrent state is rescaled when it grows). Both constants cancel
between numerator and denominator, so they matter only through ``eps``: eps is added to
the *stabilised* denominator. Being defined per row, this is the same number in the
parallel, chunked and recurrent forms.

GQA: k, v may have Hkv heads dividing H; q is viewed as (B, Hkv, G, T, F), never K/V
copied per head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .features import FeatureMap, make_feature_map

__all__ = ["linear_attention", "LinearAttentionState", "linear_attention_step"]


@dataclass(frozen=True)
class LinearAttentionState:
    """Constant-size recurrent state of causal linear attention.

    S (B, Hkv, F, Dv) = sum_j phi(k_j) v_j^T and z (B, Hkv, F) = sum_j phi(k_j), both
    times exp(-m), where m (B, Hkv) is the key stabiliser (0 for elu/relu); t counts
    the tokens seen.
    """
    S: Tensor
    z: Tensor
    m: Tensor
    feature_map: FeatureMap
    eps: float = 1e-6
    t: int = 0

    @classmethod
    def zeros(cls, feature_map, batch: int, kv_heads: int, dim: int, value_dim: int, *,
              eps: float = 1e-6, dtype=torch.float32, device=None) -> "LinearAttentionState":
        """The empty state (no tokens seen) for (B, Hkv) heads of dim D -> Dv."""
        fm = make_feature_map(feature_map, dim)
        F = fm.n_features(dim)
        m0 = -math.inf if fm.log_domain else 0.0
        return cls(torch.zeros(batch, kv_heads, F, value_dim, dtype=dtype, device=device),
                   torch.zeros(batch, kv_heads, F, dtype=dtype, device=device),
                   torch.full((batch, kv_heads), m0, dtype=dtype, device=device),
                   fm, _check_eps(eps))


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (
            math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps: expected a finite number >= 0, got {eps!r}")
    return float(eps)


def _check_qkv(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4 or not t.dtype.is_floating_point:
            raise TypeError(f"{name}: expected a 4-D floating tensor (B, H, T, D), got "
                            f"{type(t).__name__} {tuple(getattr(t, 'shape', ()))}")
    B, H, T, D = q.shape
    if k.shape[0] != B or k.shape[3] != D or k.shape[2] != T or H % k.shape[1] != 0:
        raise ValueError(f"k: expected (B, Hkv, T, D) = ({B}, Hkv | {H}, {T}, {D}) from q "
                         f"{tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v: expected (B, Hkv, T) = {tuple(k.shape[:3])} from k, got "
                         f"{tuple(v.shape)}")


def _divide(num: Tensor, den: Tensor, eps: float) -> Tensor:
    d = den + eps
    return num / torch.where(d == 0, torch.ones_like(d), d)


def _query_features(fm: FeatureMap, q5: Tensor) -> Tensor:
    if fm.log_domain:  # per-query stabiliser: cancels between numerator and denominator
        lq = fm.log_features(q5)
        return torch.exp(lq - lq.amax(-1, keepdim=True))
    return fm(q5)


def _causal(fm, q5, k, v, state: LinearAttentionState, C: int, keep: Tensor):
    """Chunked causal pass from ``state``. q5 (B, Hkv, G, T, D), keep (B, 1, T, 1) (1 = a
    real key, 0 = padding); returns out (B, Hkv, G, T, Dv) and the new state."""
    S, z, m = state.S, state.z, state.m
    T, outs = q5.shape[3], []
    # split once: autograd of one split is one concatenation, of T/C slices O(T²/C)
    for qc, kc, vc, kp in zip(q5.split(C, 3), k.split(C, 2), v.split(C, 2), keep.split(C, 2)):
        c = kc.shape[2]
        fq = _query_features(fm, qc)                                   # (B, Hkv, G, c, F)
        if fm.log_domain:
            # key stabiliser of row i: M_i = max log-feature of keys 0..i (running max);
            # key j enters row i's sums scaled by exp(-M_j) * exp(M_j - M_i)
            lk = fm.log_features(kc)                                   # (B, Hkv, c, F)
            M = torch.maximum(torch.cummax(lk.amax(-1), 2).values, m[..., None])  # (B,Hkv,c)
            fk = torch.exp(lk - M[..., None]) * kp                    # padded keys: 0
            gap = M[:, :, None, :] - M[:, :, :, None]                  # M_j - M_i, (c_i, c_j)
            decay = torch.exp(gap.masked_fill(~_tril(gap), -math.inf))[:, :, None]
            carry = torch.exp(m[..., None] - M)[:, :, None, :, None]   # (B, Hkv, 1, c, 1)
            m_new = M[..., -1]
            to_end = torch.exp(M - m_new[..., None])[..., None]        # to the chunk's end
            fk_end, r = fk * to_end, torch.exp(m - m_new)
            r = torch.where(torch.isinf(m), 0.0, r)                    # empty state
        else:
            fk = fm(kc) * kp
            decay = _tril(fk.new_ones(1, 1, 1, c, c))
            carry, fk_end, r, m_new = 1.0, fk, None, m
        A = fq @ fk[:, :, None].transpose(-1, -2) * decay              # (B, Hkv, G, c, c)
        num = A @ vc[:, :, None] + (fq @ S[:, :, None]) * carry        # (B, Hkv, G, c, Dv)
        den = A.sum(-1, keepdim=True) + (fq @ z[:, :, None, :, None]) * carry
        outs.append(_divide(num, den, state.eps))
        if r is not None:
            S, z = S * r[..., None, None], z * r[..., None]
        S = S + fk_end.transpose(-1, -2) @ vc
        z = z + fk_end.sum(2)
        m = m_new
    return torch.cat(outs, 3), replace(state, S=S, z=z, m=m, t=state.t + T)


def _tril(x: Tensor) -> Tensor:
    """Boolean lower-triangular (diagonal included) mask over the last two dims of x."""
    return torch.ones(x.shape[-2:], dtype=torch.bool, device=x.device).tril()


def linear_attention(q: Tensor, k: Tensor, v: Tensor, feature_map="elu", *,
                     causal: bool = False, chunk_size: int = 64, eps: float = 1e-6,
                     state: LinearAttentionState | None = None, return_state: bool = False,
                     key_padding: Tensor | None = None):
    """Kernelised attention ``phi(q) (phi(k)^T v) / (phi(q) sum phi(k) + eps)``.

    Args:
        q (B, H, T, D), k (B, Hkv, T, D), v (B, Hkv, T, Dv); H % Hkv == 0.
        feature_map: ``"elu"``, ``"relu"`` or a :class:`FeatureMap` such as
            ``FavorPlus(D, n_features, seed=0)``.
        causal: each query sees keys up to its own position (chunked form).
        chunk_size: tokens per chunk in the causal form (C x C block per chunk).
        eps: added to the denominator (see module doc).
        state / return_state: causal only: continue from a :class:`LinearAttentionState`
            (e.g. after a prefill) / also return the state after the last token.
        key_padding: ``(B, T)`` bool, True = a real key: a padded key's features are
            multiplied by exactly 0, so it enters no sum (a padded batch gives each row the
            output of its sequence alone; a query that sees no real key gives 0).

    Returns ``out (B, H, T, Dv)`` (and the state). Computed in float32 (float64 for
    float64 inputs).
    """
    _check_qkv(q, k, v)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected an int >= 1, got {chunk_size!r}")
    eps = _check_eps(eps)
    B, H, T, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[3]
    if (state is not None or return_state) and not causal:
        raise ValueError("state/return_state: the recurrent state exists only for causal=True")
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    q5 = q.to(acc).view(B, Hkv, H // Hkv, T, D)
    k, v = k.to(acc), v.to(acc)
    keep = _keep(key_padding, B, T, acc, q.device)                     # (B, 1, T, 1)
    if causal:
        if state is None:
            state = LinearAttentionState.zeros(feature_map, B, Hkv, D, Dv, eps=eps, dtype=acc,
                                               device=q.device)
        else:
            _check_state(state, B, Hkv, D, Dv)
        fm = state.feature_map if state is not None else make_feature_map(feature_map, D)
        out5, new = _causal(fm, q5, k, v, state, chunk_size, keep)
        out = out5.reshape(B, H, T, Dv).to(q.dtype)
        return (out, new) if return_state else out
    fm = make_feature_map(feature_map, D)
    fq = _query_features(fm, q5)                                       # (B, Hkv, G, T, F)
    if fm.log_domain:
        lk = fm.log_features(k)
        fk = torch.exp(lk - lk.amax(dim=(2, 3), keepdim=True))        # (B, Hkv, T, F)
    else:
        fk = fm(k)
    fk = fk * keep                                                     # padded keys: 0
    S = fk.transpose(-1, -2) @ v                                       # (B, Hkv, F, Dv)
    z = fk.sum(2)                                                      # (B, Hkv, F)
    out = _divide(fq @ S[:, :, None], fq @ z[:, :, None, :, None], eps)
    return out.reshape(B, H, T, Dv).to(q.dtype)


def _keep(key_padding, B: int, T: int, dtype, device) -> Tensor:
    """key_padding (B, T) bool -> (B, 1, T, 1) multiplier (all ones when None)."""
    if key_padding is None:
        return torch.ones(B, 1, T, 1, dtype=dtype, device=device)
    if not isinstance(key_padding, Tensor) or key_padding.dtype != torch.bool or tuple(
            key_padding.shape) != (B, T):
        raise ValueError(f"key_padding: expected a bool tensor (B, T) = ({B}, {T}), got "
                         f"{getattr(key_padding, 'dtype', type(key_padding).__name__)} "
                         f"{tuple(getattr(key_padding, 'shape', ()))}")
    return key_padding.to(device=device, dtype=dtype)[:, None, :, None]


def _check_state(state, B, Hkv, D, Dv):
    if not isinstance(state, LinearAttentionState):
        raise TypeError(f"state: expected a LinearAttentionState, got {type(state).__name__}")
    state.feature_map.check(D)
    F = state.feature_map.n_features(D)
    if tuple(state.S.shape) != (B, Hkv, F, Dv):
        raise ValueError(f"state: expected S of shape (B, Hkv, F, Dv) = ({B}, {Hkv}, {F}, "
                         f"{Dv}) for these inputs, got {tuple(state.S.shape)}")


def linear_attention_step(state: LinearAttentionState, q_t: Tensor, k_t: Tensor, v_t: Tensor):
    """One decoding step: q_t (B, H, 1, D), k_t (B, Hkv, 1, D), v_t (B, Hkv, 1, Dv) ->
    ``(out_t (B, H, 1, Dv), new state)``; the state's size does not grow."""
    _check_qkv(q_t, k_t, v_t)
    if q_t.shape[2] != 1:
        raise ValueError(f"q_t: expected one token (B, H, 1, D), got {tuple(q_t.shape)}")
    return linear_attention(q_t, k_t, v_t, causal=True, state=state, return_state=True,
                            chunk_size=1, eps=state.eps)
