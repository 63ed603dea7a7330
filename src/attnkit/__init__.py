"""attnkit: the attention mechanism, exact, fast and open to inspection.

Layout everywhere: ``(B, H, T, D)`` -- batch, heads, tokens, head dim.
"""
from . import backends, bias, masks
from .backends import (AttentionCall, Backend, TileConfig, UnsupportedCall, available_backends,
                       get_backend, register_backend)
from .bias import alibi, alibi_slopes
from .functional import attention, make_call, select_backend

__version__ = "0.1.0"

__all__ = ["attention", "select_backend", "make_call", "masks", "bias", "backends", "alibi",
           "alibi_slopes", "AttentionCall", "Backend", "TileConfig", "UnsupportedCall",
           "available_backends", "get_backend", "register_backend"]
