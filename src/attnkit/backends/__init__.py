"""Backends: one contract (:class:`Backend`), one registry.

=============  ==========================================================
``reference``  materialises scores and weights; the oracle
``sdpa``       torch scaled_dot_product_attention (masks made dense)
``flex``       torch FlexAttention, compiled (no dropout; no CPU backward)
``tiled``      attnkit's FlashAttention: online softmax, block-sparse
=============  ==========================================================
"""
from .base import (AttentionCall, Backend, UnsupportedCall, available_backends, get_backend,
                   register_backend)
from .flex import FlexBackend
from .reference import ReferenceBackend
from .sdpa import SDPABackend
from .tiled import TileConfig, TiledBackend, tiled_attention

for _b in (ReferenceBackend(), SDPABackend(), FlexBackend(), TiledBackend()):
    register_backend(_b)

__all__ = ["AttentionCall", "Backend", "UnsupportedCall", "available_backends", "get_backend",
           "register_backend", "TileConfig", "tiled_attention"]
