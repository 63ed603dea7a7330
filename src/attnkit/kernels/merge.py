"""Merging partial attention results by log-sum-exp: the one merge that sparse execution
(disjoint components) and ring attention (one key shard at a time) share.

If ``(o1, l1)`` is attention over key set K1 (output normalised over K1, ``l1`` its
log-sum-exp) and ``(o2, l2)`` over a disjoint K2, attention over K1 and K2 is

    l = logaddexp(l1, l2),   o = o1 * exp(l1 - l) + o2 * exp(l2 - l).

Conventions: a running result starts at ``lse = -inf`` (nothing yet); the tiled kernel
marks a fully masked row with ``lse = +inf`` (output 0), which weighs 0 here.

Learned sinks (GPT-OSS) are such a merge with a partial of output 0 and lse ``s[h]``:
``o * exp(l - logaddexp(l, s)) = o * sigmoid(l - s)`` (:func:`with_sinks`).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["merge_partial", "with_sinks"]

NEG_INF, POS_INF = float("-inf"), float("inf")


def merge_partial(out: Tensor, lse: Tensor, o: Tensor, l: Tensor) -> None:
    """In place: running ``out (..., T, Dv)`` / ``lse (..., T)`` merged with a partial
    result ``o`` / ``l`` over disjoint keys (``l = +inf`` or ``-inf``: an empty row)."""
    l = torch.where(l == POS_INF, NEG_INF, l.to(lse.dtype))
    new = torch.logaddexp(lse, l)
    safe = torch.where(new == NEG_INF, 0.0, new)
    out.mul_(torch.exp(lse - safe).unsqueeze(-1)).add_(o.to(out.dtype)
                                                      * torch.exp(l - safe).unsqueeze(-1))
    lse.copy_(new)


def with_sinks(out: Tensor, lse: Tensor, sinks: Tensor) -> Tensor:
    """Attention ``out (B, H, Tq, Dv)`` with log-sum-exp ``lse (B, H, Tq)`` merged with one
    more key of logit ``sinks (H,)`` and value 0; differentiable (in ``lse`` too). A fully
    masked row (``lse = +inf``, output 0) stays 0."""
    f = torch.sigmoid(lse - sinks.to(lse.dtype).view(1, -1, 1))        # (B, H, Tq)
    return (out.to(f.dtype) * f.unsqueeze(-1)).to(out.dtype)
