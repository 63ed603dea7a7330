"""FlexAttention (torch.compile) for mask specs: block-sparse, compiled per shape.

The spec's ``mask_mod`` becomes a block mask; softcap and biases become a
``score_mod``. The first call for a shape compiles (seconds on CPU). Cannot serve:
dropout; CPU tensors (torch 2.13's CPU FlexAttention returned wrong values or NaN for
some masks and shapes in our tests, depending on earlier compiles in the process; it
also has no CPU backward).
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from ..call import AttentionCall
from .base import Backend


@functools.lru_cache(maxsize=None)
def _compiled():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention)  # recompiles once per new shape, then dynamic


def _flex_available() -> str | None:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the torch build
        return f"FlexAttention is not available in this torch ({e})"
    return None


def _block_mask(call: AttentionCall):
    """FlexAttention's BlockMask for the call's mask spec (torch's ``create_block_mask``).

    A BlockMask assembled by hand from attnkit's own block map (``from_kv_blocks``) gave
    run-to-run different, wrong outputs in our tests (torch 2.13), so torch builds it.
    """
    from torch.nn.attention.flex_attention import create_block_mask
    m = call.mask
    return create_block_mask(m.mask_mod(call.Tq, call.Tk), call.B if m.batch_dependent else None,
                             call.H if m.head_dependent else None, call.Tq, call.Tk,
                             device=call.device)


def _has_window(spec) -> bool:
    """Does the spec (or a part of it) bound the query-key distance like a sliding or
    dilated window? (causal() bounds it on one side only: not a window.)"""
    lo, hi = spec.distance_bounds()
    if math.isfinite(hi) or (math.isfinite(lo) and lo < 0):
        return True
    return any(_has_window(p) for p in getattr(spec, "parts", ()))


class FlexBackend(Backend):
    name = "flex"
    description = "torch FlexAttention, compiled (block-sparse; first call compiles)"

    def unsupported(self, call: AttentionCall) -> str | None:
        why = _flex_available()
        if why:
            return why
        if call.dropout_p > 0:
            return "FlexAttention has no dropout (use 'tiled', 'sdpa' or 'reference')"
        if call.device.type == "cpu":
            # seen with torch 2.13's CPU kernel: wrong values or NaN for some masks and
            # shapes (e.g. causal() & window(5) at T=40 off by ~2 while window(7) is exact),
            # depending on what was compiled before in the process. Refused, not risked.
            return ("FlexAttention's CPU kernel gives wrong results for some masks and shapes "
                    f"in torch {torch.__version__} (see README); use 'tiled' on CPU")
        if call.mask is not None and _has_window(call.mask):
            # seen on an H100 with torch 2.11: causal() & window(37) wrong (fp32/bf16/fp16,
            # MHA/GQA/MQA) while no mask, causal, padding and global|strided were exact
            return ("FlexAttention gave wrong results for window/dilated masks in our CUDA "
                    "tests (torch 2.11); use 'tiled'")
        return None

    def forward(self, call: AttentionCall) -> Tensor:
        block_mask = None if call.mask is None else _block_mask(call)
        cap = call.softcap
        term = call.bias.score_mod_terms(call.Tq, call.Tk) if call.bias is not None else None
        score_mod = None
        if cap is not None or term is not None:
            def score_mod(score, b, h, q_idx, kv_idx):
                if cap is not None:
                    score = cap * torch.tanh(score / cap)
                if term is not None:
                    score = score + term(b, h, q_idx, kv_idx)
                return score
        # rows with no visible key come out as exact zeros (tested); the CPU build cannot
        # return the log-sum-exp, so none is asked for
        q, k, v = call.q, call.k, call.v
        if not call.needs_grad:  # under no_grad: CPU flex refuses inputs that require grad
            q, k, v = q.detach(), k.detach(), v.detach()
        return _compiled()(q, k, v, score_mod=score_mod, block_mask=block_mask,
                           scale=call.scale, enable_gqa=call.G > 1)
