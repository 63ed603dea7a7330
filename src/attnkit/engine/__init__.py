"""The engine: :func:`attention` (one validated call, a backend chosen by ``auto`` or by
name), :func:`sparse_attention` (its pair-cost alias for a sparse pattern) and the variant
grammar of bench/train/hf (:mod:`.variants`). Above backends and linear attention, below
modules and models."""
from .functional import attention, make_call, select_backend
from .sparse import sparse_attention

__all__ = ["attention", "make_call", "select_backend", "sparse_attention"]
