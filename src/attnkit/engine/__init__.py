"""The engine: :func:`attention` (one validated call, a backend chosen by ``auto`` or by
name), :func:`sparse_attention` (a pattern's pieces merged by log-sum-exp) and the variant
grammar of bench/train/hf (:mod:`.variants`). Above backends and linear attention, below
modules and models."""
from .functional import attention, make_call, select_backend
from .sparse import SparseFunction, sparse_attention

__all__ = ["attention", "make_call", "select_backend", "sparse_attention", "SparseFunction"]
