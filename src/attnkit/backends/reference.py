"""The reference backend: the oracle every fast path is tested against (see
:mod:`attnkit.kernels.reference`). ``auto`` picks it only under ``torch.compile``, for
what SDPA cannot serve."""
from __future__ import annotations

import torch
from torch import Tensor

from ..call import AttentionCall
from ..kernels.reference import attend, attention_weights
from .base import Backend
from .sdpa import DENSE_MASK_BUDGET

__all__ = ["ReferenceBackend", "attention_weights"]


class ReferenceBackend(Backend):
    name = "reference"
    description = "materialises scores and weights (fp32/fp64); the oracle"

    serves_sinks = True

    def auto_preference(self, call: AttentionCall):
        """Only under ``torch.compile``, for what ``sdpa`` cannot serve (softcap, sinks)
        and a dense form that fits :data:`~attnkit.backends.sdpa.DENSE_MASK_BUDGET`: the
        math traces into one graph, where ``tiled`` would plan its tiles in Python."""
        if torch.compiler.is_compiling() and call.dense_bytes() <= DENSE_MASK_BUDGET:
            return 1.0, "under torch.compile: the reference math traces into one graph"
        return None

    def forward(self, call: AttentionCall) -> Tensor:
        return attend(call, attention_weights(call))

    def forward_with_weights(self, call: AttentionCall):
        w = attention_weights(call)
        return attend(call, w), w.to(call.dtype)
