"""The reference backend: the oracle every fast path is tested against (see
:mod:`attnkit.kernels.reference`). ``auto`` never picks it."""
from __future__ import annotations

from torch import Tensor

from ..call import AttentionCall
from ..kernels.reference import attend, attention_weights
from .base import Backend

__all__ = ["ReferenceBackend", "attention_weights"]


class ReferenceBackend(Backend):
    name = "reference"
    description = "materialises scores and weights (fp32/fp64); the oracle"

    def forward(self, call: AttentionCall) -> Tensor:
        return attend(call, attention_weights(call))

    def forward_with_weights(self, call: AttentionCall):
        w = attention_weights(call)
        return attend(call, w), w.to(call.dtype)
