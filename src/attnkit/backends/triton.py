"""The ``triton`` backend: attnkit's FlashAttention-2 as Triton kernels (forward, dQ,
dK/dV), block-sparse by the mask's block map. Kernels and lowering live in
``attnkit.kernels.triton``; importing this module registers the backend.

On CUDA the kernels are compiled; on CPU they run only under Triton's interpreter
(``TRITON_INTERPRET=1``, numpy, slow: for tests). Cannot serve: dropout, float64,
head dims over 256, devices other than CPU/CUDA, or a machine without triton.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..call import AttentionCall
from ..core.errors import UnsupportedCall
from .base import Backend, auto_priority, register_backend
from .sdpa import DENSE_MASK_BUDGET as SDPA_MASK_BUDGET
from .tiled import SPARSE_DENSITY, mask_density

__all__ = ["TritonBackend"]

MAX_HEAD_DIM = 256
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
NOT_MEASURED = "triton kernels, not yet measured on a GPU"


class TritonBackend(Backend):
    name = "triton"
    description = ("attnkit's FlashAttention-2 in Triton (block-sparse; CUDA, or CPU under "
                   "TRITON_INTERPRET=1)")

    def __init__(self, config=None):
        from ..kernels.triton.configs import TritonConfig
        self.config = config or TritonConfig()

    def unsupported(self, call: AttentionCall) -> str | None:
        from ..kernels.triton import available, interpreter_requested, interpreter_unsupported
        why = available()
        if why:
            return why
        dev = call.device.type
        if dev == "cpu" and not interpreter_requested():
            return ("on CPU the Triton kernels run only under Triton's interpreter: set "
                    "TRITON_INTERPRET=1 (slow; meant for tests), or use 'tiled'")
        if dev == "cpu" or interpreter_requested():
            why = interpreter_unsupported()
            if why:
                return why
        if dev not in ("cpu", "cuda"):
            return f"the Triton kernels serve CUDA (or CPU under the interpreter), got {dev}"
        if call.dropout_p > 0:
            return "the Triton kernels have no dropout (use 'tiled', 'sdpa' or 'reference')"
        if call.dtype not in DTYPES:
            return (f"the Triton kernels take float16, bfloat16 or float32, got {call.dtype} "
                    "(use 'tiled' or 'reference')")
        if max(call.D, call.Dv) > MAX_HEAD_DIM:
            return (f"the Triton kernels take head dims up to {MAX_HEAD_DIM}, got D={call.D}, "
                    f"Dv={call.Dv} (use 'tiled')")
        return None

    def forward(self, call: AttentionCall) -> Tensor:
        why = self.unsupported(call)
        if why:
            raise UnsupportedCall(f"backend 'triton' cannot serve this call: {why}")
        from ..kernels.triton.launch import triton_attention
        return triton_attention(call, self.config)[0]

    def auto_preference(self, call: AttentionCall) -> tuple[float, str] | None:
        """(priority, reason) for the auto rule, or None. Conservative until measured:
        only on CUDA, and only where SDPA cannot serve well -- softcap, a mask sparse
        enough that skipping tiles pays, or a mask too large to materialise (the numbers:
        :data:`attnkit.backends.base.AUTO_PRIORITY`)."""
        if call.device.type != "cuda" or self.unsupported(call):
            return None
        if call.softcap is not None:
            return auto_priority("triton:skip"), f"softcap: SDPA cannot apply it ({NOT_MEASURED})"
        if call.mask is not None:
            from ..kernels.triton.configs import tile_shape
            bm, bn = tile_shape(max(call.D, call.Dv), self.config, False)
            density = mask_density(call, bm, bn)  # band masks: no host sync
            if density < SPARSE_DENSITY:
                return auto_priority("triton:skip"), (
                    f"sparse mask ({density:.0%} of {bm}x{bn} tiles non-empty): "
                    f"empty tiles skipped ({NOT_MEASURED})")
        dense_or_causal = call.mask is None or (call.is_causal_only and call.Tq == call.Tk)
        if call.bias is None and dense_or_causal:
            return None  # SDPA's fused kernels
        nbytes = call.dense_bytes()
        if nbytes > SDPA_MASK_BUDGET and not self._dense_bias(call):
            return auto_priority("triton:large"), (
                f"a dense mask/bias would need {nbytes / 2**30:.2f} GiB; the kernels need "
                f"O(T*D) and the partial tiles' masks ({NOT_MEASURED})")
        return None

    @staticmethod
    def _dense_bias(call: AttentionCall) -> bool:
        """Would the kernels materialise the bias too (anything but ALiBi)?"""
        from ..kernels.triton.lowering import recognise_alibi
        return call.bias is not None and recognise_alibi(call) is None


register_backend(TritonBackend(), replace=True)
