"""FlexAttention / Hugging Face style predicates as specs: :func:`from_mask_mod`.

A ``mask_mod(b, h, q_idx, kv_idx) -> bool`` uses *raw* indices (FlexAttention's
convention: query ``q_idx`` in ``[0, Tq)``, key ``kv_idx`` in ``[0, Tk)``, no end
alignment). :func:`from_mask_mod` first asks the registered *readers* whether they know
the function (``attnkit.integrations.hf`` registers one for transformers' causal,
sliding-window, chunked, padding and packed-sequence functions): a known function
becomes a structured spec whose block map is analytic. Any other function becomes a
:class:`MaskModSpec`, evaluated tile by tile -- exact, but classifying tiles costs one
O(Tq * Tk) evaluation, which :func:`attnkit.select_backend` states in its reason.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .spec import MaskSpec

__all__ = ["MaskModSpec", "from_mask_mod", "register_mask_mod_reader",
           "unregister_mask_mod_reader"]

Reader = Callable[[Callable, int, int], "MaskSpec | None"]
_READERS: list[Reader] = []


def register_mask_mod_reader(reader: Reader) -> Reader:
    """Add ``reader(fn, batch_size, heads) -> MaskSpec | None``: a translation of known
    mask functions into structured specs (idempotent: a reader is added once)."""
    if not callable(reader):
        raise TypeError(f"reader: expected a callable, got {type(reader).__name__}")
    if reader not in _READERS:
        _READERS.append(reader)
    return reader


def unregister_mask_mod_reader(reader: Reader) -> Reader:
    """Remove a reader added by :func:`register_mask_mod_reader` (returns it)."""
    if reader not in _READERS:
        raise ValueError(f"unregister_mask_mod_reader: reader {reader!r} is not registered")
    _READERS.remove(reader)
    return reader


def _evaluate(fn: Callable, b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
    """fn on broadcast index tensors; functions written for scalars (FlexAttention's vmap
    convention) are evaluated through torch.vmap instead."""
    shape = torch.broadcast_shapes(b.shape, h.shape, q.shape, k.shape)
    try:
        out = fn(b, h, q, k)
        if isinstance(out, Tensor) and out.dtype == torch.bool:
            # no expand to the same shape: inside FlexAttention's compiled mask_mod every
            # index is 0-dim, and Inductor cannot lower an expand to shape ()
            return out if out.shape == shape else out.expand(shape)
    except Exception:  # noqa: BLE001 - any failure: retry the scalar (vmap) way
        pass
    flat = [t.expand(shape).reshape(-1) for t in (b, h, q, k)]
    try:
        out = torch.vmap(fn)(*flat)
    except Exception as e:
        raise ValueError(f"mask_mod: could not evaluate {getattr(fn, '__qualname__', fn)!r} "
                         f"on index tensors, directly or under torch.vmap ({e})") from None
    if not isinstance(out, Tensor) or out.dtype != torch.bool:
        raise TypeError(f"mask_mod: expected a bool tensor from "
                        f"{getattr(fn, '__qualname__', fn)!r}, got "
                        f"{getattr(out, 'dtype', type(out).__name__)}")
    return out.reshape(shape)


class MaskModSpec(MaskSpec):
    """An opaque predicate ``fn(b, h, q_idx, kv_idx)`` (raw indices), exact but analysed
    only by evaluation: its block map reduces the dense mask (O(Tq * Tk))."""

    opaque = True

    def __init__(self, fn: Callable, batch_size: int = 1, heads: int = 1,
                 name: str | None = None):
        self.fn, self.batch_size, self.heads = fn, batch_size, heads
        self.name = name or getattr(fn, "__qualname__", type(fn).__name__)

    def extent(self):
        return self.batch_size, self.heads

    def validate(self, B, H, Tq, Tk):
        for what, want, got in (("batch_size", B, self.batch_size), ("heads", H, self.heads)):
            if got not in (1, want):
                raise ValueError(f"mask_mod: built with {what}={got}, but the call has "
                                 f"{'B' if what == 'batch_size' else 'H'}={want}")

    def allowed(self, b, h, q, k, offset):
        return _evaluate(self.fn, b, h, q, k)

    def mask_mod(self, Tq, Tk):
        return self.fn

    def __repr__(self):
        return f"from_mask_mod({self.name})"


def from_mask_mod(fn: Callable, *, batch_size: int | None = None, heads: int | None = None,
                  name: str | None = None) -> MaskSpec:
    """A FlexAttention / HF ``mask_mod(b, h, q_idx, kv_idx) -> bool`` as a mask spec.

    ``batch_size`` / ``heads``: give them when the predicate depends on ``b`` / ``h``
    (e.g. it reads a padding mask ``(B, Tk)``); the default 1 evaluates it at b = 0 / h = 0
    and broadcasts. Known functions (see :func:`register_mask_mod_reader`) become
    structured specs; others a :class:`MaskModSpec`.
    """
    if not callable(fn):
        raise TypeError(f"mask_mod: expected a callable (b, h, q_idx, kv_idx) -> bool, got "
                        f"{type(fn).__name__}")
    for name_, v in (("batch_size", batch_size), ("heads", heads)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name_}: expected None or an int >= 1, got {v!r}")
    B, H = batch_size or 1, heads or 1
    for reader in _READERS:
        spec = reader(fn, B, H)
        if spec is not None:
            return spec
    return MaskModSpec(fn, B, H, name)
