"""Backends: one contract (:class:`Backend`), one registry, one selection rule.

=============  ==========================================================
``reference``  materialises scores and weights; the oracle
``sdpa``       torch scaled_dot_product_attention (masks made dense)
``flex``       torch FlexAttention, compiled (no dropout; no CPU backward)
``tiled``      attnkit's FlashAttention: online softmax, block-sparse
``ring``       ring attention across processes (``attnkit.distributed``; loaded on use)
``triton``     attnkit's GPU kernels (``attnkit.backends.triton``; loaded on use)
=============  ==========================================================

The contract is in :mod:`.base`, the ``auto`` rule and :func:`use_backends` in
:mod:`.selection`.
"""
from ..call import AttentionCall
from ..core.errors import UnsupportedCall
from ..kernels.tiles import TileConfig
from .base import (Backend, available_backends, get_backend, loaded_backends, register_backend,
                   unregister_backend)
from .flex import FlexBackend
from .reference import ReferenceBackend
from .sdpa import SDPABackend
from .selection import resolve_backend, select_backend, use_backends
from .tiled import TiledBackend, tiled_attention

for _b in (ReferenceBackend(), SDPABackend(), FlexBackend(), TiledBackend()):
    register_backend(_b)

__all__ = ["AttentionCall", "Backend", "UnsupportedCall", "available_backends", "get_backend",
           "loaded_backends", "register_backend", "unregister_backend", "select_backend",
           "resolve_backend", "use_backends", "TileConfig", "tiled_attention"]
