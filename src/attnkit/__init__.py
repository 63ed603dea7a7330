"""attnkit: the attention mechanism, exact, fast and open to inspection.

Layout everywhere: ``(B, H, T, D)`` -- batch, heads, tokens, head dim.
"""
from . import backends, bias, masks
from .backends import (AttentionCall, Backend, TileConfig, UnsupportedCall, available_backends,
                       get_backend, register_backend)
from .bias import alibi, alibi_slopes
from .functional import attention, make_call, select_backend

from . import distributed, linear, models, modules, patterns  # distributed: 'ring' backend
from .linear import FavorPlus, LinearAttentionState, linear_attention, linear_attention_step
from .patterns import sparse_attention
from .loading import CheckpointError, load
from .modules import KVCache, MultiHeadAttention, SlidingWindowCache
from .models import BERT, GPT, Transformer, ViT

__version__ = "0.1.0"

__all__ = ["attention", "select_backend", "make_call", "masks", "bias", "backends", "alibi",
           "alibi_slopes", "AttentionCall", "Backend", "TileConfig", "UnsupportedCall",
           "available_backends", "get_backend", "register_backend", "distributed", "linear",
           "patterns", "linear_attention", "linear_attention_step", "LinearAttentionState",
           "FavorPlus", "sparse_attention", "models", "modules", "load",
           "CheckpointError", "MultiHeadAttention", "KVCache", "SlidingWindowCache", "BERT",
           "GPT", "Transformer", "ViT"]
