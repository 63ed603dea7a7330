"""Attention restricted to fixed query-key offsets (one diagonal of the score matrix per
offset): query i attends keys i - d for d in ``offsets``. One elementwise product per
offset, O(n * D * len(offsets)) time, no tiles (LogSparse runs on it). Rows go in blocks
of ``rows`` so each pass's operands stay in cache (2x faster at n = 16k on CPU).

:func:`diagonal_forward` returns ``(out, lse)`` like the tiled kernel (+inf lse never
occurs: offset 0 is always present in LogSparse; a row with no offset gets -inf);
:func:`diagonal_backward` accumulates this part's share of dQ, dK, dV given the full
problem's out and lse.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .reference import acc_dtype

__all__ = ["diagonal_forward", "diagonal_backward"]

NEG_INF = float("-inf")


def _setup(q, k, v, scale):
    B, H, n, D = q.shape
    Hkv, acc = k.shape[1], acc_dtype(q.dtype)
    q5 = q.to(acc).view(B, Hkv, H // Hkv, n, D) * scale        # (B, Hkv, G, n, D)
    return q5, k.to(acc)[:, :, None], v.to(acc)[:, :, None]    # (B, Hkv, 1, n, D/Dv)


def _blocks(n: int, offsets: tuple[int, ...], rows: int):
    """Row blocks [r0, r1) with their (column j, offset d, first row a >= d)."""
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        yield r0, r1, [(j, d, max(r0, d)) for j, d in enumerate(offsets) if max(r0, d) < r1]


def diagonal_forward(q: Tensor, k: Tensor, v: Tensor, scale: float, offsets: tuple[int, ...],
                     rows: int = 1024) -> tuple[Tensor, Tensor]:
    """``q (B, H, n, D)``, ``k/v (B, Hkv, n, D/Dv)`` -> ``out (B, H, n, Dv)``, ``lse (B, H, n)``
    in the accumulation dtype."""
    q5, kf, vf = _setup(q, k, v, scale)
    B, Hkv, G, n, _ = q5.shape
    out = q5.new_zeros(B, Hkv, G, n, vf.shape[-1])
    lse = q5.new_full((B, Hkv, G, n), NEG_INF)
    for r0, r1, offs in _blocks(n, offsets, rows):
        S = q5.new_full((B, Hkv, G, r1 - r0, len(offsets)), NEG_INF)  # scores
        for j, d, a in offs:
            S[..., a - r0:, j] = (q5[..., a:r1, :] * kf[..., a - d:r1 - d, :]).sum(-1)
        m = S.amax(-1, keepdim=True)
        P = (S - torch.where(m == NEG_INF, 0.0, m)).exp()
        l = P.sum(-1, keepdim=True)
        o = out[..., r0:r1, :]
        for j, d, a in offs:
            o[..., a - r0:, :] += P[..., a - r0:, j, None] * vf[..., a - d:r1 - d, :]
        o /= torch.where(l > 0, l, 1.0)
        lse[..., r0:r1] = torch.where(l > 0, m + torch.log(l), NEG_INF)[..., 0]
    H = Hkv * G
    return out.view(B, H, n, -1), lse.view(B, H, n)


def diagonal_backward(q: Tensor, k: Tensor, v: Tensor, scale: float, offsets: tuple[int, ...],
                      dout: Tensor, out: Tensor, lse: Tensor, dq: Tensor, dk: Tensor,
                      dv: Tensor, rows: int = 1024) -> None:
    """Adds this part's gradients into ``dq (B, H, n, D)``, ``dk``, ``dv (B, Hkv, n, .)``
    (accumulation dtype), given the whole problem's ``out`` and ``lse``."""
    q5, kf, vf = _setup(q, k, v, scale)
    B, Hkv, G, n, D = q5.shape
    do5 = dout.to(q5.dtype).view(B, Hkv, G, n, -1)
    delta = (do5 * out.view(B, Hkv, G, n, -1)).sum(-1)         # (B, Hkv, G, n)
    lse5 = lse.view(B, Hkv, G, n)
    dq5 = dq.view(B, Hkv, G, n, D)
    for r0, r1, offs in _blocks(n, offsets, rows):
        for _, d, a in offs:
            kd, vd = kf[..., a - d:r1 - d, :], vf[..., a - d:r1 - d, :]
            p = ((q5[..., a:r1, :] * kd).sum(-1) - lse5[..., a:r1]).exp()  # weights
            ds = p * ((do5[..., a:r1, :] * vd).sum(-1) - delta[..., a:r1])
            dq5[..., a:r1, :] += ds[..., None] * kd * scale
            dk[:, :, a - d:r1 - d] += (ds[..., None] * q5[..., a:r1, :]).sum(2)
            dv[:, :, a - d:r1 - d] += (p[..., None] * do5[..., a:r1, :]).sum(2)
