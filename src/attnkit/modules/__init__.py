"""Building blocks: multi-head attention, KV caches, positions, norms, FFNs, blocks."""
from .attention import MultiHeadAttention, key_padding_mask
from .cache import KVCache, LinearStateCache, SinkWindowCache, SlidingWindowCache, cache_nbytes
from .layers import (ACTIVATIONS, Block, DecoderBlock, FeedForward, LayerConfig, RMSNorm,
                     make_norm)
from .positional import (LearnedPositions, RotaryEmbedding, SinusoidalPositions, apply_rotary,
                         sinusoidal_table, token_positions)

__all__ = ["MultiHeadAttention", "key_padding_mask", "KVCache", "SlidingWindowCache",
           "SinkWindowCache", "LinearStateCache", "cache_nbytes", "ACTIVATIONS", "Block",
           "DecoderBlock", "FeedForward",
           "LayerConfig", "RMSNorm", "make_norm", "LearnedPositions", "RotaryEmbedding",
           "SinusoidalPositions", "apply_rotary", "sinusoidal_table", "token_positions"]
