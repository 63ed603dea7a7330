"""attnkit: the attention mechanism, exact, fast and open to inspection.

Layout everywhere: ``(B, H, T, D)`` -- batch, heads, tokens, head dim. The layers, bottom
up: :mod:`~attnkit.masks` -> :mod:`~attnkit.sparse` patterns -> :mod:`~attnkit.kernels`
and :mod:`~attnkit.backends` -> :mod:`~attnkit.modules` -> :mod:`~attnkit.models` ->
integrations (``attnkit.hf``) -> tools (analysis, bench, train, cli). ``attnkit.distributed``
(ring attention, context parallelism) is imported on use.
"""
from . import backends, bias, masks, sparse
from .backends import (AttentionCall, Backend, TileConfig, available_backends, get_backend,
                       register_backend, unregister_backend, use_backends)
from .bias import alibi, alibi_slopes
from .errors import CheckpointError, UnsupportedCall, UsageError
from .functional import attention, make_call, select_backend

from . import linear, models, modules
from .linear import FavorPlus, LinearAttentionState, linear_attention, linear_attention_step
from .sparse import sparse_attention
from .loading import load
from .modules import KVCache, MultiHeadAttention, SlidingWindowCache
from .models import BERT, GPT, Transformer, ViT

from ._version import __version__  # noqa: E402

__all__ = ["attention", "select_backend", "make_call", "use_backends", "masks", "bias",
           "backends", "sparse", "alibi", "alibi_slopes", "AttentionCall", "Backend",
           "TileConfig", "UnsupportedCall", "CheckpointError", "UsageError",
           "available_backends", "get_backend", "register_backend", "unregister_backend",
           "linear", "linear_attention", "linear_attention_step", "LinearAttentionState",
           "FavorPlus", "sparse_attention", "models", "modules", "load", "MultiHeadAttention",
           "KVCache", "SlidingWindowCache", "BERT", "GPT", "Transformer", "ViT"]


def __getattr__(name):
    """``attnkit.distributed`` and ``attnkit.patterns`` (deprecated) load on first use."""
    import importlib
    if name in ("distributed", "patterns", "hf", "analysis", "bench", "train", "tasks",
                "adaptation"):
        return importlib.import_module(f".{name}", __name__)
    if name == "adapt":      # the function (attnkit adapt); the package is attnkit.adaptation
        return importlib.import_module(".adaptation", __name__).adapt
    raise AttributeError(f"module 'attnkit' has no attribute {name!r}")
