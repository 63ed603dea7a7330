"""torch.nn.functional.scaled_dot_product_attention, where it can serve.

Serves: no mask, ``causal()`` with Tq == Tk (is_causal), or any mask spec / bias
turned into a dense (B, H, Tq, Tk) mask -- O(Tq*Tk) memory for the mask. GQA via
``enable_gqa``. Cannot serve: softcap.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..call import AttentionCall
from .base import Backend, auto_priority

__all__ = ["SDPABackend", "DENSE_MASK_BUDGET"]

DENSE_MASK_BUDGET = 256 * 2**20  # bytes of dense mask/bias 'auto' lets SDPA materialise


def _bias_dtype(q: Tensor) -> torch.dtype:
    """The dtype of the dense bias handed to SDPA. On CPU, float32 for float16/bfloat16
    inputs (SDPA takes a float32 ``attn_mask`` there): a bias rounded to bf16 -- ALiBi's
    ``slope * distance``, a sum of biases -- was off by up to 2e-2 (the oracle sweep,
    seed 1926) where the other backends add it in float32. On CUDA the fused kernels
    want the query's dtype, so it stays that (not measured here: no GPU)."""
    if q.device.type == "cpu" and q.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return q.dtype


class SDPABackend(Backend):
    name = "sdpa"
    description = "torch scaled_dot_product_attention (dense; masks materialised)"

    def unsupported(self, call: AttentionCall) -> str | None:
        if call.softcap is not None:
            return "torch SDPA has no logit softcap (use 'tiled', 'flex' or 'reference')"
        return None

    def auto_preference(self, call: AttentionCall):
        if call.softcap is not None:
            return None
        if call.bias is None and (call.mask is None or (call.is_causal_only
                                                        and call.Tq == call.Tk)):
            return auto_priority("sdpa"), "dense or causal: torch SDPA's fused kernel"
        nbytes = call.dense_bytes()
        if nbytes <= DENSE_MASK_BUDGET:
            if torch.compiler.is_compiling():  # sizes may be symbolic: no number to print
                return auto_priority("sdpa"), "mask/bias materialised densely for SDPA"
            return auto_priority("sdpa"), (f"mask/bias materialised densely "
                                           f"({nbytes / 2**20:.1f} MiB) for SDPA")
        return None

    def forward(self, call: AttentionCall) -> Tensor:
        q, k, v = call.q, call.k, call.v
        kw = dict(dropout_p=call.dropout_p, scale=call.scale, enable_gqa=call.G > 1)
        if call.mask is None and call.bias is None:
            return F.scaled_dot_product_attention(q, k, v, **kw)
        if call.is_causal_only and call.bias is None and call.Tq == call.Tk:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, **kw)

        mask = call.dense_mask()  # (Bm, Hm, Tq, Tk) or None
        row_ok = None
        if mask is not None:
            row_ok = mask.any(-1, keepdim=True)            # (Bm, Hm, Tq, 1)
            # unmask empty rows for the kernel (no NaN), zero them afterwards; the check
            # that there are none is a host sync, skipped under torch.compile
            if not torch.compiler.is_compiling() and bool(row_ok.all()):
                row_ok = None
            else:
                mask = mask | ~row_ok
        attn = mask
        if call.bias is not None:
            attn = call.bias.dense(call.Tq, call.Tk, device=call.device, dtype=_bias_dtype(q))
            if mask is not None:  # (broadcasts both ways: a (1, 1, 1, Tk) bias, a causal mask)
                attn = torch.where(mask, attn, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn, **kw)
        if row_ok is not None:
            out = out * row_ok.to(out.dtype)
        return out
