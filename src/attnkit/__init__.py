"""attnkit: the attention mechanism, exact, fast and open to inspection.

Layout everywhere: ``(B, H, T, D)`` -- batch, heads, tokens, head dim.

The package's folders are its layers: :data:`LAYERS` lists them bottom up, and a module
imports only from its own folder and the folders before it (``tests/test_layout.py`` reads
this tuple; docs/architecture.md draws it). The package root holds only the public entry
points: this file (the Python API), ``hf.py`` (``import attnkit.hf``), ``cli.py`` (the
``attnkit`` console script) and ``__main__.py`` (``python -m attnkit``). ``attnkit.hf``,
``attnkit.distributed`` and the tools are imported on first use.
"""
# bottom up; each folder imports only itself and the folders before it
LAYERS = (
    "core",          # exceptions, argument checks, the version: imports nothing of attnkit
    "masks",         # which (query, key) pairs attend: the MaskSpec protocol and algebra
    "sparse",        # named sparse patterns: masks with a block structure (definitions only)
    "call",          # AttentionCall: one validated problem (q, k, v, mask, bias); biases
    "kernels",       # the math on one call: reference, tiled online softmax, triton, merge
    "linear",        # linear attention: feature maps, the formula, chunked forms
    "backends",      # the backend contract, the registry, auto selection, the backends
    "distributed",   # ring attention (a backend over processes), context parallelism
    "engine",        # attention(), sparse_attention(), the variant grammar
    "modules",       # nn.Modules: attention, caches, positions, blocks
    "models",        # GPT, BERT, ViT, Transformer, GAT, SSM
    "loading",       # checkpoints -> attnkit's own models
    "integrations",  # attnkit inside other libraries (transformers)
    "sources",       # one model source for the tools: open, tokenize, run a variant, capture
    "tasks",         # training tasks (data, metrics)
    "analysis",      # attnkit inspect: head types, causal tests, rollout, the viewer
    "bench",         # attnkit bench: timing, fidelity, head statistics
    "train",         # attnkit train: recipes, loop, sweeps, checkpoints
    "adaptation",    # attnkit adapt: attention transfer + distillation into a cheaper variant
    "commands",      # the attnkit command: one module per subcommand, the tour, the demo
)
from . import backends, masks, sparse
from .call import bias
from .backends import (AttentionCall, Backend, TileConfig, available_backends, get_backend,
                       register_backend, unregister_backend, use_backends)
from .call.bias import alibi, alibi_slopes
from .core.errors import CheckpointError, UnsupportedCall, UsageError
from .engine.functional import attention, make_call, select_backend

from . import linear, models, modules
from .linear import FavorPlus, LinearAttentionState, linear_attention, linear_attention_step
from .engine.sparse import sparse_attention
from .loading import load
from .modules import (KVCache, LinearStateCache, MultiHeadAttention, SinkWindowCache,
                      SlidingWindowCache)
from .models import BERT, GPT, Transformer, ViT

from .core.version import __version__  # noqa: E402

__all__ = ["attention", "select_backend", "make_call", "use_backends", "masks", "bias",
           "backends", "sparse", "alibi", "alibi_slopes", "AttentionCall", "Backend",
           "TileConfig", "UnsupportedCall", "CheckpointError", "UsageError",
           "available_backends", "get_backend", "register_backend", "unregister_backend",
           "linear", "linear_attention", "linear_attention_step", "LinearAttentionState",
           "FavorPlus", "sparse_attention", "models", "modules", "load", "MultiHeadAttention",
           "KVCache", "SlidingWindowCache", "SinkWindowCache", "LinearStateCache", "BERT", "GPT",
           "Transformer", "ViT"]


def __getattr__(name):
    """``attnkit.distributed``, ``attnkit.hf`` and the tools load on first use."""
    import importlib
    if name in ("distributed", "hf", "sources", "analysis", "bench", "train", "tasks",
                "adaptation"):
        return importlib.import_module(f".{name}", __name__)
    if name == "adapt":      # the function (attnkit adapt); the package is attnkit.adaptation
        return importlib.import_module(".adaptation", __name__).adapt
    raise AttributeError(f"module 'attnkit' has no attribute {name!r}")
