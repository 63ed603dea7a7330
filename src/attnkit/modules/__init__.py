"""Building blocks: multi-head attention, KV caches, positions, norms, FFNs, blocks."""
import warnings as _warnings

from .attention import MultiHeadAttention, key_padding_mask
from .cache import KVCache, SlidingWindowCache, cache_nbytes
from .layers import (ACTIVATIONS, Block, DecoderBlock, FeedForward, LayerConfig, RMSNorm,
                     make_norm)
from .positional import (LearnedPositions, RotaryEmbedding, SinusoidalPositions, apply_rotary,
                         sinusoidal_table, token_positions)

__all__ = ["MultiHeadAttention", "key_padding_mask", "KVCache", "SlidingWindowCache",
           "cache_nbytes", "ACTIVATIONS", "Block", "DecoderBlock", "FeedForward",
           "LayerConfig", "RMSNorm", "make_norm", "LearnedPositions", "RotaryEmbedding",
           "SinusoidalPositions", "apply_rotary", "sinusoidal_table", "token_positions"]

_RENAMED = {"EncoderLayer": "Block", "DecoderLayer": "DecoderBlock"}


def __getattr__(name):
    if name in _RENAMED:
        _warnings.warn(f"attnkit.modules.{name} is now attnkit.modules.{_RENAMED[name]} "
                       "(the self-attention + FFN block serves encoders and GPT alike)",
                       DeprecationWarning, stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module 'attnkit.modules' has no attribute {name!r}")
