"""FlexAttention (torch.compile) for mask specs: block-sparse, compiled per shape.

The spec's ``mask_mod`` becomes a block mask; softcap and biases become a
``score_mod``. The first call for a shape compiles (seconds on CPU). Cannot serve:
dropout, and backward on CPU (PyTorch has no CPU backward for FlexAttention).
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from .base import AttentionCall, Backend


@functools.lru_cache(maxsize=None)
def _compiled():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


def _flex_available() -> str | None:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the torch build
        return f"FlexAttention is not available in this torch ({e})"
    return None


class FlexBackend(Backend):
    name = "flex"
    description = "torch FlexAttention, compiled (block-sparse; first call compiles)"

    def unsupported(self, call: AttentionCall) -> str | None:
        why = _flex_available()
        if why:
            return why
        if call.dropout_p > 0:
            return "FlexAttention has no dropout (use 'tiled', 'sdpa' or 'reference')"
        if call.needs_grad and call.device.type == "cpu":
            return ("FlexAttention has no backward on CPU in PyTorch; use 'tiled' for "
                    "training on CPU, or run under torch.no_grad()")
        return None

    def forward(self, call: AttentionCall) -> Tensor:
        from torch.nn.attention.flex_attention import create_block_mask
        block_mask = None
        if call.mask is not None:
            m = call.mask
            block_mask = create_block_mask(
                m.mask_mod(call.Tq, call.Tk),
                call.B if m.batch_dependent else None,
                call.H if m.head_dependent else None,
                call.Tq, call.Tk, device=call.device)
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
        return _compiled()(call.q, call.k, call.v, score_mod=score_mod, block_mask=block_mask,
                           scale=call.scale, enable_gqa=call.G > 1)
