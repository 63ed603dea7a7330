"""The mask protocol (:class:`MaskSpec`) and its algebra (``&``, ``|``, ``~``).

A spec is a predicate ``allowed(b, h, q, k, offset)`` over batch, head, query index
and key index, where ``offset = Tk - Tq`` aligns queries to the end of the keys
(query ``i`` sits at position ``i + offset``). A new spec implements:

=====================================  ==================================================
``allowed(b, h, q, k, offset)``        required: a bool tensor, the broadcast of the int64
                                       index tensors b, h, q, k (raw indices); built from
                                       comparisons and indexing only, so FlexAttention can
                                       trace it as a ``mask_mod``
``tile_classes(q0, q1, k0, k1, off)``  optional: EMPTY/PARTIAL/FULL for tiles
                                       ``[q0, q1) x [k0, k1)`` (int tensors that broadcast),
                                       analytically; None (default) = reduce the dense mask
``extent()``                           ``(Bm, Hm)``: the batch/head sizes the predicate
                                       depends on (1 = broadcast); default ``(1, 1)``
``distance_bounds()``                  ``(lo, hi)``: every allowed pair has
                                       ``lo <= (q + offset) - k <= hi``; default unbounded
``band()``                             ``(lo, hi)`` when the spec is *exactly* the band
                                       ``lo <= (q + offset) - k <= hi`` (kernels then
                                       evaluate it from two numbers), else None
``validate(B, H, Tq, Tk)``             raise ValueError if the spec cannot apply
``tensors()``, ``to(device)``          the index tensors it holds, moved
``toeplitz`` (class attribute)         True when ``allowed`` depends on ``(q + offset) - k``
                                       only (kernels then cache tiles along diagonals)
``resolve(Tq, Tk)``                    the spec for one problem size (length-dependent
                                       specs such as BigBird's random blocks; default self)
``opaque`` (class attribute)           True when the only analysis is evaluation (e.g. a
                                       mask_mod attnkit does not know): block maps then
                                       cost O(Tq * Tk), and ``auto`` says so
=====================================  ==================================================

Everything else is derived here and not overridden: :meth:`MaskSpec.tile`,
:meth:`~MaskSpec.dense`, :meth:`~MaskSpec.block_map`, :meth:`~MaskSpec.mask_mod`, the
capability queries :attr:`~MaskSpec.is_causal`, :attr:`~MaskSpec.batch_dependent`,
:attr:`~MaskSpec.head_dependent`, and composition.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = ["MaskSpec", "AndMask", "OrMask", "NotMask", "PerLength", "and_masks", "or_masks",
           "coerce", "EMPTY", "PARTIAL", "FULL"]

EMPTY, PARTIAL, FULL = 0, 1, 2
INF = math.inf


class MaskSpec:
    """Base class of every mask spec (see the module doc for the protocol)."""

    toeplitz = False
    opaque = False  # True: tiles can only be classified by evaluating the predicate densely

    # -- the protocol (override) ---------------------------------------------------
    def allowed(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, offset: int) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__}.allowed")

    def tile_classes(self, q0: Tensor, q1: Tensor, k0: Tensor, k1: Tensor,
                     offset: int) -> Tensor | None:
        return None

    def extent(self) -> tuple[int, int]:
        return 1, 1

    def distance_bounds(self) -> tuple[float, float]:
        return -INF, INF

    def band(self) -> tuple[float, float] | None:
        return None

    def validate(self, B: int, H: int, Tq: int, Tk: int) -> None:
        """Raise ValueError if this spec cannot apply to a (B, H, Tq, Tk) problem."""

    def tensors(self) -> list[Tensor]:
        return []

    def to(self, device) -> "MaskSpec":
        """The same spec with its tensors (if any) on ``device``."""
        return self

    def resolve(self, Tq: int, Tk: int) -> "MaskSpec":
        return self

    # -- capability queries (derived) ----------------------------------------------
    @property
    def is_causal(self) -> bool:
        """Exactly ``causal()``: key j visible from aligned position p iff j <= p."""
        return False

    @property
    def batch_dependent(self) -> bool:
        return self.extent()[0] > 1

    @property
    def head_dependent(self) -> bool:
        return self.extent()[1] > 1

    # -- products (derived) --------------------------------------------------------
    def tile(self, q0: int, q1: int, k0: int, k1: int, *, Tq: int, Tk: int,
             device=None) -> Tensor:
        """Boolean mask of the tile ``[q0, q1) x [k0, k1)``: ``(Bm, Hm, q1-q0, k1-k0)``."""
        if device is None:
            device = next((t.device for t in self.tensors()), "cpu")
        Bm, Hm = self.extent()
        b = torch.arange(Bm, device=device).view(-1, 1, 1, 1)
        h = torch.arange(Hm, device=device).view(1, -1, 1, 1)
        q = torch.arange(q0, q1, device=device).view(1, 1, -1, 1)
        k = torch.arange(k0, k1, device=device).view(1, 1, 1, -1)
        return self.allowed(b, h, q, k, Tk - Tq).expand(Bm, Hm, q1 - q0, k1 - k0)

    def dense(self, Tq: int, Tk: int, *, device=None) -> Tensor:
        """Boolean mask ``(Bm, Hm, Tq, Tk)``; True = the query may attend to the key."""
        return self.tile(0, Tq, 0, Tk, Tq=Tq, Tk=Tk, device=device)

    def block_map(self, Tq: int, Tk: int, block_q: int, block_k: int, *, device=None) -> Tensor:
        """Classes of tiles, an int8 tensor ``(nQ, nK)`` of EMPTY/PARTIAL/FULL (CPU).

        FULL only if every (b, h) sees every entry of the tile; EMPTY only if none does;
        PARTIAL may be conservative (a kernel then applies the tile's dense mask)."""
        nq, nk = math.ceil(Tq / block_q), math.ceil(Tk / block_k)
        q0 = torch.arange(nq).view(-1, 1) * block_q
        k0 = torch.arange(nk).view(1, -1) * block_k
        q1 = torch.clamp(q0 + block_q, max=Tq)
        k1 = torch.clamp(k0 + block_k, max=Tk)
        out = self.tile_classes(q0, q1, k0, k1, Tk - Tq)
        if out is None:
            out = reduce_dense(self, Tq, Tk, block_q, block_k)
        return out.to(torch.int8).expand(nq, nk).contiguous()

    def mask_mod(self, Tq: int, Tk: int) -> Callable:
        """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` for a (Tq, Tk) problem."""
        off = Tk - Tq

        def mask_mod(b, h, q_idx, kv_idx):
            return self.allowed(b, h, q_idx, kv_idx, off)

        return mask_mod

    # -- composition ---------------------------------------------------------------
    def __and__(self, other) -> "MaskSpec":
        return AndMask(self, _as_spec(other))

    def __or__(self, other) -> "MaskSpec":
        return OrMask(self, _as_spec(other))

    def __invert__(self) -> "MaskSpec":
        return NotMask(self)

    def __rand__(self, other) -> "MaskSpec":
        return AndMask(_as_spec(other), self)

    def __ror__(self, other) -> "MaskSpec":
        return OrMask(_as_spec(other), self)


_TENSOR_SPEC: list[Callable] = []  # from_tensor, registered by .tensor (no import cycle)


def coerce(mask, name: str = "mask") -> MaskSpec:
    """A spec from a spec (sparse patterns are specs) or a tensor."""
    if isinstance(mask, MaskSpec):
        return mask
    if isinstance(mask, Tensor) and _TENSOR_SPEC:
        return _TENSOR_SPEC[0](mask, name)
    raise TypeError(f"{name}: expected a MaskSpec, a sparse pattern, a bool/float tensor or "
                    f"None, got {type(mask).__name__}")


def _as_spec(other) -> MaskSpec:
    return coerce(other, "other")


def reduce_dense(spec: MaskSpec, Tq: int, Tk: int, bq: int, bk: int,
                 rows_per_chunk: int = 4096) -> Tensor:
    """Tile classes by reducing the dense mask, a few query tiles at a time (O(Tq Tk))."""
    nq, nk = math.ceil(Tq / bq), math.ceil(Tk / bk)
    pad_k = nk * bk - Tk
    out = torch.empty(nq, nk, dtype=torch.int8)
    tiles_per_chunk = max(1, rows_per_chunk // bq)
    for t0 in range(0, nq, tiles_per_chunk):
        t1 = min(nq, t0 + tiles_per_chunk)
        q0, q1 = t0 * bq, min(Tq, t1 * bq)
        m = spec.tile(q0, q1, 0, Tk, Tq=Tq, Tk=Tk).cpu()            # (Bm, Hm, rows, Tk)
        m = m.permute(2, 3, 0, 1).reshape(q1 - q0, Tk, -1)          # (rows, Tk, Bm*Hm)
        anyv, allv = m.any(-1), m.all(-1)                           # (rows, Tk)
        pad_q = (t1 - t0) * bq - (q1 - q0)
        # padding rows/cols: neutral for any (False) and all (True)
        anyv = torch.nn.functional.pad(anyv, (0, pad_k, 0, pad_q), value=False)
        allv = torch.nn.functional.pad(allv, (0, pad_k, 0, pad_q), value=True)
        anyv = anyv.view(t1 - t0, bq, nk, bk).any(3).any(1)
        allv = allv.view(t1 - t0, bq, nk, bk).all(3).all(1)
        out[t0:t1] = torch.where(allv, FULL, torch.where(anyv, PARTIAL, EMPTY)).to(torch.int8)
    return out


# ---------------------------------------------------------------------------
# the algebra
# ---------------------------------------------------------------------------
class _Combine(MaskSpec):
    def __init__(self, *parts: MaskSpec):
        self.parts = parts
        self.toeplitz = all(p.toeplitz for p in parts)
        self.opaque = any(p.opaque for p in parts)

    def extent(self):
        ext = [p.extent() for p in self.parts]
        return max(e[0] for e in ext), max(e[1] for e in ext)

    def validate(self, B, H, Tq, Tk):
        for p in self.parts:
            p.validate(B, H, Tq, Tk)

    def tensors(self):
        return [t for p in self.parts for t in p.tensors()]

    def to(self, device):
        return type(self)(*[p.to(device) for p in self.parts])

    def resolve(self, Tq, Tk):
        parts = [p.resolve(Tq, Tk) for p in self.parts]
        return self if all(a is b for a, b in zip(parts, self.parts)) else type(self)(*parts)


class AndMask(_Combine):
    """Both specs allow the pair (``a & b``; FlexAttention's ``and_masks``)."""

    def allowed(self, b, h, q, k, offset):
        return self.parts[0].allowed(b, h, q, k, offset) & self.parts[1].allowed(b, h, q, k, offset)

    def tile_classes(self, q0, q1, k0, k1, offset):
        a, c = (p.tile_classes(q0, q1, k0, k1, offset) for p in self.parts)
        if a is None or c is None:
            return None
        return torch.where((a == EMPTY) | (c == EMPTY), EMPTY,
                           torch.where((a == FULL) & (c == FULL), FULL, PARTIAL))

    def distance_bounds(self):
        (a, b), (c, d) = (p.distance_bounds() for p in self.parts)
        return max(a, c), min(b, d)

    def band(self):
        x, y = (p.band() for p in self.parts)
        return None if x is None or y is None else (max(x[0], y[0]), min(x[1], y[1]))

    def __repr__(self):
        return f"({self.parts[0]!r} & {self.parts[1]!r})"


class OrMask(_Combine):
    """Either spec allows the pair (``a | b``; FlexAttention's ``or_masks``)."""

    def allowed(self, b, h, q, k, offset):
        return self.parts[0].allowed(b, h, q, k, offset) | self.parts[1].allowed(b, h, q, k, offset)

    def tile_classes(self, q0, q1, k0, k1, offset):
        a, c = (p.tile_classes(q0, q1, k0, k1, offset) for p in self.parts)
        if a is None or c is None:
            return None
        return torch.where((a == FULL) | (c == FULL), FULL,
                           torch.where((a == EMPTY) & (c == EMPTY), EMPTY, PARTIAL))

    def distance_bounds(self):
        (a, b), (c, d) = (p.distance_bounds() for p in self.parts)
        return min(a, c), max(b, d)

    def __repr__(self):
        return f"({self.parts[0]!r} | {self.parts[1]!r})"


class NotMask(_Combine):
    """The complement (``~a``)."""

    def allowed(self, b, h, q, k, offset):
        return ~self.parts[0].allowed(b, h, q, k, offset)

    def tile_classes(self, q0, q1, k0, k1, offset):
        a = self.parts[0].tile_classes(q0, q1, k0, k1, offset)
        return None if a is None else 2 - a  # FULL <-> EMPTY, PARTIAL stays

    def __repr__(self):
        return f"~{self.parts[0]!r}"


def and_masks(*specs) -> MaskSpec:
    """The intersection of one or more specs (tensors accepted), like FlexAttention's."""
    if not specs:
        raise ValueError("and_masks: expected at least one mask spec, got none")
    out = _as_spec(specs[0])
    for s in specs[1:]:
        out = out & s
    return out


def or_masks(*specs) -> MaskSpec:
    """The union of one or more specs (tensors accepted), like FlexAttention's."""
    if not specs:
        raise ValueError("or_masks: expected at least one mask spec, got none")
    out = _as_spec(specs[0])
    for s in specs[1:]:
        out = out | s
    return out


class PerLength(MaskSpec):
    """A spec drawn for each problem size: ``make(Tq, Tk)`` gives the spec of a (Tq, Tk)
    call (e.g. a BigBird pattern's random blocks depend on n; a raw-index mask_mod's
    end-aligned form depends on Tk - Tq). It composes like any spec; attention resolves
    it per call (``resolve(Tq, Tk)``); used unresolved it raises."""

    def __init__(self, make: Callable[[int, int], MaskSpec], label: str):
        self.make, self.label = make, label

    def resolve(self, Tq, Tk):
        return self.make(Tq, Tk).resolve(Tq, Tk)

    def _unresolved(self, *a, **kw):
        raise TypeError(f"{self.label}: its mask depends on the length n; use pattern.at(n) "
                        "(a plain spec for n tokens) or spec.resolve(Tq, Tk) before evaluating it")

    allowed = tile_classes = _unresolved

    def tile(self, *a, **kw):
        self._unresolved()

    def block_map(self, *a, **kw):
        self._unresolved()

    def mask_mod(self, *a, **kw):
        self._unresolved()

    def __repr__(self):
        return self.label
