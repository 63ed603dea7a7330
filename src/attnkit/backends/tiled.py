"""The ``tiled`` backend: attnkit's FlashAttention (:mod:`attnkit.kernels.tiled`) --
online softmax over key tiles, block-sparse by the mask's block map, O(T*D) memory."""
from __future__ import annotations

from torch import Tensor

from ..call import AttentionCall
from ..kernels.tiled import tiled_attention
from ..kernels.tiles import TileConfig, cached_block_map, config_for
from ..masks import EMPTY
from .base import Backend
from .sdpa import DENSE_MASK_BUDGET

__all__ = ["TiledBackend", "TileConfig", "tiled_attention", "SPARSE_DENSITY"]

SPARSE_DENSITY = 0.5  # block-map fill below which 'auto' prefers tiled


class TiledBackend(Backend):
    name = "tiled"
    description = "attnkit's FlashAttention (online softmax, block-sparse, O(T*D) memory)"

    def __init__(self, config: TileConfig | None = None):
        self.config = config  # None: per call, kernels.tiles.config_for

    def auto_preference(self, call: AttentionCall):
        if call.softcap is not None:
            return 30.0, "softcap: SDPA cannot apply it"
        if call.mask is not None:
            cfg = self.config or config_for(call)
            bm = cached_block_map(call, cfg.block_q, cfg.block_k)
            density = float((bm != EMPTY).float().mean())
            if density < SPARSE_DENSITY:
                return 30.0, (f"sparse mask ({density:.0%} of tiles non-empty): tiled skips "
                              "the rest")
        nbytes = call.dense_bytes()
        if (call.mask is not None or call.bias is not None) and nbytes > DENSE_MASK_BUDGET:
            return 10.0, f"a dense mask would need {nbytes / 2**30:.2f} GiB; tiled needs O(T*D)"
        return 5.0, "online softmax over key tiles, O(T*D) memory"

    def forward(self, call: AttentionCall) -> Tensor:
        return tiled_attention(call, self.config)[0]
