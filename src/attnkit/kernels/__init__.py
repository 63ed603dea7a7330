"""Kernels: the computations backends and sparse execution run, as documented functions.

=======================  ==========================================================
:mod:`.reference`        the literal math (scores, weights, ``@ v``): the oracle
:mod:`.tiled`            online-softmax tiles (FlashAttention-2), forward/backward
                         returning ``(out, lse)``, block-sparse by the mask's block map
:mod:`.tiles`            tile sizes and the plan of visited key chunks
:mod:`.diagonals`        attention on fixed offsets (LogSparse), forward/backward
:mod:`.pieces`           a sparse pattern at its pair cost: its pieces, merged
:mod:`.merge`            the log-sum-exp merge of partial results (sparse, ring)
=======================  ==========================================================

``attnkit.kernels.triton`` (when triton is installed) holds the GPU kernels.
"""
from .diagonals import diagonal_backward, diagonal_forward
from .merge import merge_partial
from .reference import acc_dtype, attend, attention_weights
from .tiled import TiledRun, tiled_attention, tiled_backward, tiled_forward
from .tiles import Chunk, TileConfig, plan

__all__ = ["TileConfig", "Chunk", "plan", "TiledRun", "tiled_forward", "tiled_backward",
           "tiled_attention", "merge_partial", "diagonal_forward", "diagonal_backward",
           "attention_weights", "attend", "acc_dtype"]
