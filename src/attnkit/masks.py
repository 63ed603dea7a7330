"""Composable attention masks.

A mask is a *spec*, not a tensor: a predicate ``allowed(b, h, q, k)`` over
batch, head, query index and key index. Specs compose with ``&``, ``|`` and
``~`` and each can produce

* ``dense(Tq, Tk)``      -- a boolean tensor ``(Bm, Hm, Tq, Tk)``, True = attend,
                           where ``Bm``/``Hm`` are 1 unless the spec depends on them;
* ``block_map(...)``     -- per (query-tile, key-tile): EMPTY / PARTIAL / FULL,
                           so kernels skip empty tiles and skip masking full ones;
* ``mask_mod(Tq, Tk)``   -- a FlexAttention ``mask_mod(b, h, q_idx, kv_idx)``.

Position convention. When ``Tq < Tk`` (decoding against a cache) queries are
aligned to the *end* of the keys, as in FlashAttention >= 2.1: query ``i`` sits
at position ``i + (Tk - Tq)``. Position-based specs (causal, window, strided,
dilated, global tokens, ALiBi) use that aligned position; index-based specs
(padding, document ids, tensors) use raw indices.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from ._checks import check_int as _check_int
EMPTY, PARTIAL, FULL = 0, 1, 2

__all__ = [
    "MaskSpec", "causal", "padding", "window", "strided", "dilated", "global_tokens",
    "document", "from_tensor", "full", "as_mask", "EMPTY", "PARTIAL", "FULL",
]


class MaskSpec:
    """Base class of all mask specs. Subclasses implement ``_allowed``."""

    batch_dependent = False  # does the predicate depend on b?
    head_dependent = False   # ... on h?
    toeplitz = False         # depends only on (aligned q position - k): tiles repeat along diagonals

    # -- the predicate -------------------------------------------------
    def _allowed(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, off: int) -> Tensor:
        """Boolean tensor, broadcast of b, h, q, k (raw indices); off = Tk - Tq."""
        raise NotImplementedError

    def _block(self, q0: Tensor, q1: Tensor, k0: Tensor, k1: Tensor, off: int) -> Tensor | None:
        """Analytic block classes for tiles [q0, q1) x [k0, k1) (int tensors that broadcast),
        or None when this spec has no closed form (then the dense mask is reduced)."""
        return None

    # -- composition ---------------------------------------------------
    def __and__(self, other: "MaskSpec") -> "MaskSpec":
        return _And(self, as_mask(other, "other"))

    def __or__(self, other: "MaskSpec") -> "MaskSpec":
        return _Or(self, as_mask(other, "other"))

    def __invert__(self) -> "MaskSpec":
        return _Not(self)

    __rand__ = __and__
    __ror__ = __or__

    # -- products ------------------------------------------------------
    def validate(self, B: int, H: int, Tq: int, Tk: int) -> None:
        """Raise ValueError if this spec cannot apply to a (B, H, Tq, Tk) problem."""

    def dense(self, Tq: int, Tk: int, *, device=None) -> Tensor:
        """Boolean mask ``(Bm, Hm, Tq, Tk)``; True = query may attend to key."""
        return self.tile(0, Tq, 0, Tk, Tq=Tq, Tk=Tk, device=device)

    def tile(self, q0: int, q1: int, k0: int, k1: int, *, Tq: int, Tk: int, device=None) -> Tensor:
        """Boolean mask of the tile ``[q0, q1) x [k0, k1)``, shape ``(Bm, Hm, q1-q0, k1-k0)``."""
        device = self._device(device)
        b = torch.arange(self._nb(), device=device).view(-1, 1, 1, 1)
        h = torch.arange(self._nh(), device=device).view(1, -1, 1, 1)
        q = torch.arange(q0, q1, device=device).view(1, 1, -1, 1)
        k = torch.arange(k0, k1, device=device).view(1, 1, 1, -1)
        out = self._allowed(b, h, q, k, Tk - Tq)
        return out.expand(self._nb() if self.batch_dependent else 1,
                          self._nh() if self.head_dependent else 1, q1 - q0, k1 - k0)

    def block_map(self, Tq: int, Tk: int, block_q: int, block_k: int, *, device=None) -> Tensor:
        """Classes of tiles, an int8 tensor ``(nQ, nK)`` with EMPTY/PARTIAL/FULL.

        A tile is FULL only if every (b, h) sees every entry; EMPTY only if none does.
        PARTIAL may be conservative (a kernel then applies the dense tile mask).
        """
        nq, nk = math.ceil(Tq / block_q), math.ceil(Tk / block_k)
        q0 = torch.arange(nq).view(-1, 1) * block_q
        k0 = torch.arange(nk).view(1, -1) * block_k
        q1 = torch.clamp(q0 + block_q, max=Tq)
        k1 = torch.clamp(k0 + block_k, max=Tk)
        out = self._block(q0, q1, k0, k1, Tk - Tq)
        if out is None:
            out = _reduce_dense(self, Tq, Tk, block_q, block_k)
        return out.to(torch.int8).expand(nq, nk).contiguous()

    def mask_mod(self, Tq: int, Tk: int) -> Callable:
        """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` for a (Tq, Tk) problem."""
        off = Tk - Tq

        def mask_mod(b, h, q_idx, kv_idx):
            return self._allowed(b, h, q_idx, kv_idx, off)

        return mask_mod

    # -- helpers -------------------------------------------------------
    def _nb(self) -> int:
        return 1

    def _nh(self) -> int:
        return 1

    def _device(self, device):
        return device if device is not None else "cpu"

    def _tensors(self) -> list[Tensor]:
        return []

    def to(self, device) -> "MaskSpec":
        """The same spec with its tensors (if any) on ``device``."""
        return self


def _reduce_dense(spec: MaskSpec, Tq, Tk, bq, bk, rows_per_chunk: int = 4096) -> Tensor:
    """Block classes by reducing the dense mask, a few query tiles at a time."""
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
# combinators
# ---------------------------------------------------------------------------
class _Combine(MaskSpec):
    def __init__(self, *parts: MaskSpec):
        self.parts = parts
        self.batch_dependent = any(p.batch_dependent for p in parts)
        self.head_dependent = any(p.head_dependent for p in parts)
        self.toeplitz = all(p.toeplitz for p in parts)

    def validate(self, B, H, Tq, Tk):
        for p in self.parts:
            p.validate(B, H, Tq, Tk)

    def _nb(self):
        return max(p._nb() for p in self.parts)

    def _nh(self):
        return max(p._nh() for p in self.parts)

    def _device(self, device):
        if device is not None:
            return device
        for t in self._tensors():
            return t.device
        return "cpu"

    def _tensors(self):
        return [t for p in self.parts for t in p._tensors()]

    def to(self, device):
        return type(self)(*[p.to(device) for p in self.parts])


class _And(_Combine):
    def _allowed(self, b, h, q, k, off):
        return self.parts[0]._allowed(b, h, q, k, off) & self.parts[1]._allowed(b, h, q, k, off)

    def _block(self, q0, q1, k0, k1, off):
        a, c = self.parts[0]._block(q0, q1, k0, k1, off), self.parts[1]._block(q0, q1, k0, k1, off)
        if a is None or c is None:
            return None
        return torch.where((a == EMPTY) | (c == EMPTY), EMPTY,
                           torch.where((a == FULL) & (c == FULL), FULL, PARTIAL))

    def __repr__(self):
        return f"({self.parts[0]!r} & {self.parts[1]!r})"


class _Or(_Combine):
    def _allowed(self, b, h, q, k, off):
        return self.parts[0]._allowed(b, h, q, k, off) | self.parts[1]._allowed(b, h, q, k, off)

    def _block(self, q0, q1, k0, k1, off):
        a, c = self.parts[0]._block(q0, q1, k0, k1, off), self.parts[1]._block(q0, q1, k0, k1, off)
        if a is None or c is None:
            return None
        return torch.where((a == FULL) | (c == FULL), FULL,
                           torch.where((a == EMPTY) & (c == EMPTY), EMPTY, PARTIAL))

    def __repr__(self):
        return f"({self.parts[0]!r} | {self.parts[1]!r})"


class _Not(_Combine):
    def _allowed(self, b, h, q, k, off):
        return ~self.parts[0]._allowed(b, h, q, k, off)

    def _block(self, q0, q1, k0, k1, off):
        a = self.parts[0]._block(q0, q1, k0, k1, off)
        if a is None:
            return None
        return 2 - a  # FULL <-> EMPTY, PARTIAL stays

    def __repr__(self):
        return f"~{self.parts[0]!r}"


# ---------------------------------------------------------------------------
# position-based specs
# ---------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class _Full(MaskSpec):
    toeplitz = True

    def _allowed(self, b, h, q, k, off):
        return torch.ones_like(q + k, dtype=torch.bool)

    def _block(self, q0, q1, k0, k1, off):
        return torch.full_like(q0 + k0, FULL)

    def __repr__(self):
        return "full()"


@dataclass(frozen=True, repr=False)
class _Window(MaskSpec):
    """Key k visible from aligned query position p iff p - left <= k <= p + right."""
    left: float
    right: float

    toeplitz = True

    def _allowed(self, b, h, q, k, off):
        d = (q + off) - k  # >= 0: key in the past
        conds = [c for c, on in ((d <= self.left, not math.isinf(self.left)),
                                 (d >= -self.right, not math.isinf(self.right))) if on]
        out = d == d  # all True, built from comparisons only (traceable by FlexAttention)
        for c in conds:
            out = out & c
        return out

    def _block(self, q0, q1, k0, k1, off):
        dmin = (q0 + off) - (k1 - 1)   # smallest q-k in the tile
        dmax = (q1 - 1 + off) - k0     # largest
        lo, hi = -self.right, self.left
        full = (dmin >= lo) & (dmax <= hi)
        empty = (dmax < lo) | (dmin > hi)
        return torch.where(full, FULL, torch.where(empty, EMPTY, PARTIAL))

    def __repr__(self):
        if self.left == math.inf and self.right == 0:
            return "causal()"
        return f"window({self.left}, {self.right})"


@dataclass(frozen=True, repr=False)
class _Strided(MaskSpec):
    """Sparse Transformer 'strided' head: keys at distance a multiple of ``stride``."""
    stride: int

    toeplitz = True

    def _allowed(self, b, h, q, k, off):
        return torch.remainder((q + off) - k, self.stride) == 0

    def _block(self, q0, q1, k0, k1, off):
        if self.stride == 1:
            return torch.full_like(q0 + k0, FULL)
        # a tile with >= 1 row and >= stride columns (or vice versa) holds a hit
        # in every row; it is never full. Small tiles: fall back to the dense reduction.
        big = ((k1 - k0) >= self.stride) | ((q1 - q0) >= self.stride)
        if not bool(big.all()):
            return None
        return torch.full_like(q0 + k0, PARTIAL)

    def __repr__(self):
        return f"strided({self.stride})"


@dataclass(frozen=True, repr=False)
class _Dilated(MaskSpec):
    """Dilated sliding window: keys at distance 0, d, 2d, ... up to ``window`` steps back."""
    window: int
    dilation: int
    causal: bool

    toeplitz = True

    def _allowed(self, b, h, q, k, off):
        d = (q + off) - k
        dd = d if self.causal else d.abs()
        return (dd >= 0) & (torch.remainder(dd, self.dilation) == 0) & (dd <= self.window * self.dilation)

    def _block(self, q0, q1, k0, k1, off):
        span = self.window * self.dilation
        outer = _Window(span, 0 if self.causal else span)._block(q0, q1, k0, k1, off)
        if self.dilation == 1:
            return outer
        return torch.where(outer == EMPTY, EMPTY, PARTIAL)

    def __repr__(self):
        return f"dilated({self.window}, {self.dilation}, causal={self.causal})"


@dataclass(frozen=True, repr=False, eq=False)
class _Global(MaskSpec):
    """Global tokens: they attend to every key and every query attends to them."""
    indices: Tensor = field(repr=False)  # (G,) int64, sorted, positions in key space
    flags: Tensor = field(repr=False)    # (n + 1,) bool, flags[p] = p is global; flags[n] = False

    def validate(self, B, H, Tq, Tk):
        if self.indices.numel() and int(self.indices.max()) >= Tk:
            raise ValueError(f"global_tokens: indices must be < Tk={Tk}, got max index "
                             f"{int(self.indices.max())}")

    def _allowed(self, b, h, q, k, off):
        n = self.flags.numel() - 1  # a constant: no data-dependent control flow (FlexAttention)
        qp = q + off                # negative when Tq > Tk: before every key, never global
        qp = torch.where((qp < 0) | (qp > n), n, qp)
        kp = torch.where(k > n, n, k)
        return self.flags[qp] | self.flags[kp]

    def _block(self, q0, q1, k0, k1, off):
        idx = self.indices.cpu()
        if idx.numel() == 0:
            return torch.full_like(q0 + k0, EMPTY)
        # does the tile's key range / aligned-query range contain a global index?
        def contains(a0, a1):
            lo = torch.searchsorted(idx, a0.contiguous())
            hi = torch.searchsorted(idx, a1.contiguous())
            return hi > lo
        kf = contains(k0, k1)
        qf = contains(q0 + off, q1 + off)
        # full only if each row is global (all rows) or each column is global (all columns)
        def covers(a0, a1):
            lo = torch.searchsorted(idx, a0.contiguous())
            hi = torch.searchsorted(idx, a1.contiguous())
            return (hi - lo) == (a1 - a0)
        full = covers(k0, k1) | covers(q0 + off, q1 + off)
        some = kf | qf
        return torch.where(full, FULL, torch.where(some, PARTIAL, EMPTY))

    def _tensors(self):
        return [self.indices]

    def to(self, device):
        return _Global(self.indices.to(device), self.flags.to(device))

    def __repr__(self):
        return f"global_tokens({self.indices.tolist()})"


# ---------------------------------------------------------------------------
# index-based specs (per batch)
# ---------------------------------------------------------------------------
@dataclass(frozen=True, repr=False, eq=False)
class _Padding(MaskSpec):
    """Keys (and optionally queries) past each sequence's length are masked."""
    kv_lengths: Tensor | None  # (B,)
    q_lengths: Tensor | None   # (B,)
    batch_dependent = True

    def validate(self, B, H, Tq, Tk):
        for name, t, T in (("kv_lengths", self.kv_lengths, Tk), ("q_lengths", self.q_lengths, Tq)):
            if t is None:
                continue
            if t.shape[0] != B:
                raise ValueError(f"padding: {name} must have shape ({B},) to match batch size "
                                 f"B={B}, got {tuple(t.shape)}")
            if int(t.max()) > T:
                raise ValueError(f"padding: {name} must be <= {T}, got {int(t.max())}")

    def _nb(self):
        t = self.kv_lengths if self.kv_lengths is not None else self.q_lengths
        return t.shape[0]

    def _allowed(self, b, h, q, k, off):
        out = torch.ones_like(b + q + k, dtype=torch.bool)
        if self.kv_lengths is not None:
            out = out & (k < self.kv_lengths[b])
        if self.q_lengths is not None:
            out = out & (q < self.q_lengths[b])
        return out

    def _block(self, q0, q1, k0, k1, off):
        B = self._nb()
        kv = self.kv_lengths if self.kv_lengths is not None else torch.full((B,), 2**62)
        ql = self.q_lengths if self.q_lengths is not None else torch.full((B,), 2**62)
        kv, ql = kv.cpu().view(-1, 1, 1), ql.cpu().view(-1, 1, 1)
        full = ((k1 <= kv) & (q1 <= ql)).all(0)  # every batch row sees the whole tile
        some = ((k0 < kv) & (q0 < ql)).any(0)    # some batch row sees its first entry
        return torch.where(full, FULL, torch.where(some, PARTIAL, EMPTY))

    def _tensors(self):
        return [t for t in (self.kv_lengths, self.q_lengths) if t is not None]

    def to(self, device):
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return _Padding(mv(self.kv_lengths), mv(self.q_lengths))

    def __repr__(self):
        return "padding(...)"


@dataclass(frozen=True, repr=False, eq=False)
class _Document(MaskSpec):
    """Packed sequences: attend only within the same document id."""
    kv_ids: Tensor  # (B, Tk)
    q_ids: Tensor | None  # (B, Tq) or None: queries take kv_ids[..., off + q]
    batch_dependent = True

    def validate(self, B, H, Tq, Tk):
        if self.kv_ids.shape != (B, Tk) and self.kv_ids.shape != (1, Tk):
            raise ValueError(f"document: ids must have shape ({B}, {Tk}) or (1, {Tk}) for "
                             f"B={B}, Tk={Tk}, got {tuple(self.kv_ids.shape)}")
        if self.q_ids is not None and self.q_ids.shape not in ((B, Tq), (1, Tq)):
            raise ValueError(f"document: q_ids must have shape ({B}, {Tq}) or (1, {Tq}), got "
                             f"{tuple(self.q_ids.shape)}")
        if self.q_ids is None and Tq > Tk:
            raise ValueError(f"document: with Tq={Tq} > Tk={Tk} pass q_ids (B, Tq); queries "
                             "cannot take their ids from the keys")

    def _nb(self):
        return self.kv_ids.shape[0]

    def _allowed(self, b, h, q, k, off):
        bk = b if self.kv_ids.shape[0] > 1 else b * 0   # (1, Tk) ids are shared by the batch
        if self.q_ids is None:
            qid = self.kv_ids[bk, q + off]
        else:
            qid = self.q_ids[b if self.q_ids.shape[0] > 1 else b * 0, q]
        return qid == self.kv_ids[bk, k]

    def _tensors(self):
        return [t for t in (self.kv_ids, self.q_ids) if t is not None]

    def to(self, device):
        return _Document(self.kv_ids.to(device), None if self.q_ids is None else self.q_ids.to(device))

    def __repr__(self):
        return "document(...)"


@dataclass(frozen=True, repr=False, eq=False)
class _TensorMask(MaskSpec):
    """A boolean tensor broadcastable to (B, H, Tq, Tk); True = attend."""
    mask: Tensor  # 4-D bool

    def __post_init__(self):
        object.__setattr__(self, "batch_dependent", self.mask.shape[0] > 1)
        object.__setattr__(self, "head_dependent", self.mask.shape[1] > 1)

    def validate(self, B, H, Tq, Tk):
        ok = all(s in (1, t) for s, t in zip(self.mask.shape, (B, H, Tq, Tk)))
        if not ok or self.mask.shape[2:] != (Tq, Tk):
            raise ValueError(f"mask: expected a tensor broadcastable to (B, H, Tq, Tk) = "
                             f"({B}, {H}, {Tq}, {Tk}) with full (Tq, Tk) trailing dims, "
                             f"got shape {tuple(self.mask.shape)}")

    def _nb(self):
        return self.mask.shape[0]

    def _nh(self):
        return self.mask.shape[1]

    def _allowed(self, b, h, q, k, off):
        bb = b if self.mask.shape[0] > 1 else torch.zeros_like(b)
        hh = h if self.mask.shape[1] > 1 else torch.zeros_like(h)
        return self.mask[bb, hh, q, k]

    def tile(self, q0, q1, k0, k1, *, Tq, Tk, device=None):
        t = self.mask[:, :, q0:q1, k0:k1]
        return t if device is None else t.to(device)

    def _tensors(self):
        return [self.mask]

    def to(self, device):
        return _TensorMask(self.mask.to(device))

    def __repr__(self):
        return f"from_tensor(bool{tuple(self.mask.shape)})"


# ---------------------------------------------------------------------------
# public constructors
# ---------------------------------------------------------------------------
def full() -> MaskSpec:
    """No masking (every query sees every key)."""
    return _Full()


def causal() -> MaskSpec:
    """Query at aligned position p sees keys 0..p (aligned to the end when Tq < Tk)."""
    return _Window(math.inf, 0)


def window(left: int, right: int = 0) -> MaskSpec:
    """Sliding window: query at position p sees keys p-left .. p+right (inclusive).

    ``window(w)`` is a causal window of ``w`` keys back (w+1 keys including itself);
    ``window(w, w)`` is bidirectional (Longformer local attention).
    """
    return _Window(_check_int("left", left, minimum=0), _check_int("right", right, minimum=0))


def strided(stride: int) -> MaskSpec:
    """Keys whose distance to the query is a multiple of ``stride`` (Sparse Transformer).

    Combine with ``causal()`` and a ``window(stride - 1)`` for the paper's strided pattern.
    """
    return _Strided(_check_int("stride", stride, minimum=1))


def dilated(window: int, dilation: int, *, causal: bool = True) -> MaskSpec:
    """Dilated window: keys at distances 0, d, 2d, ..., window*d (both sides if not causal)."""
    return _Dilated(_check_int("window", window, minimum=0),
                    _check_int("dilation", dilation, minimum=1), bool(causal))


def global_tokens(indices: Sequence[int] | Tensor) -> MaskSpec:
    """Tokens (key positions) that attend to all and are attended by all (Longformer).

    Combine with a local pattern: ``window(w, w) | global_tokens([0])``.
    """
    idx = torch.as_tensor(indices, dtype=torch.long).flatten()
    if idx.numel() and int(idx.min()) < 0:
        raise ValueError(f"global_tokens: indices must be >= 0, got {int(idx.min())}")
    idx = torch.unique(idx)
    n = int(idx.max()) + 1 if idx.numel() else 0
    flags = torch.zeros(n + 1, dtype=torch.bool)
    flags[idx] = True
    return _Global(idx, flags)


def padding(kv_lengths=None, *, q_lengths=None) -> MaskSpec:
    """Per-sequence valid lengths ``(B,)``: keys (and queries, if given) past them are masked.

    Fully masked query rows produce an output of 0.
    """
    if kv_lengths is None and q_lengths is None:
        raise ValueError("padding: give kv_lengths and/or q_lengths, got neither")

    def conv(name, t):
        if t is None:
            return None
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() != 1:
            raise TypeError(f"padding: {name} must be a 1-D integer tensor (B,), got "
                            f"dtype={t.dtype} shape={tuple(t.shape)}")
        if t.numel() and int(t.min()) < 0:
            raise ValueError(f"padding: {name} must be >= 0, got {int(t.min())}")
        return t.long()

    return _Padding(conv("kv_lengths", kv_lengths), conv("q_lengths", q_lengths))


def document(ids, q_ids=None) -> MaskSpec:
    """Packed sequences: ``ids`` (B, Tk) gives each key's document; queries attend within
    their document. ``q_ids`` (B, Tq) defaults to the last Tq entries of ``ids``."""
    ids = torch.as_tensor(ids)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.dtype.is_floating_point:
        raise TypeError(f"document: ids must be an integer tensor (B, Tk) or (Tk,), got "
                        f"dtype={ids.dtype} shape={tuple(ids.shape)}")
    if q_ids is not None:
        q_ids = torch.as_tensor(q_ids)
        if q_ids.dim() == 1:
            q_ids = q_ids.unsqueeze(0)
        q_ids = q_ids.long()
    return _Document(ids.long(), q_ids)


def from_tensor(mask: Tensor) -> MaskSpec:
    """Wrap a tensor as a spec.

    * bool: True = attend; shape broadcastable to (B, H, Tq, Tk) (2-D and 3-D are
      read as (Tq, Tk) and (B, Tq, Tk)).
    * float (additive): 0 = attend, -inf = masked, other values are added to the scores;
      returns an :class:`AdditiveMask`, which ``attention`` splits into a boolean
      mask (finite entries) and a bias.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"from_tensor: mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() not in (2, 3, 4):
        raise ValueError(f"from_tensor: mask must have 2, 3 or 4 dims (Tq, Tk) / (B, Tq, Tk) / "
                         f"(B, H, Tq, Tk), got shape {tuple(mask.shape)}")
    m = mask
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        m = m[:, None]
    if m.dtype == torch.bool:
        return _TensorMask(m)
    if m.dtype.is_floating_point:
        return AdditiveMask(m)
    raise TypeError(f"from_tensor: mask must be bool or floating point, got {mask.dtype}")


class AdditiveMask(_TensorMask):
    """A float mask: -inf entries are masked, finite entries are added as a bias."""

    def __init__(self, values: Tensor):
        super().__init__(torch.isfinite(values) | (values > 0))
        object.__setattr__(self, "values", values)

    def to(self, device):
        return AdditiveMask(self.values.to(device))

    def __repr__(self):
        return f"from_tensor(float{tuple(self.values.shape)})"


def as_mask(mask, name: str = "mask") -> MaskSpec | None:
    """Normalise ``None`` / a spec / a tensor to a spec (or None)."""
    if mask is None or isinstance(mask, MaskSpec):
        return mask
    if isinstance(mask, Tensor):
        return from_tensor(mask)
    raise TypeError(f"{name}: expected a MaskSpec, a bool/float tensor or None, got "
                    f"{type(mask).__name__}")


def split_additive(spec: MaskSpec | None) -> tuple[MaskSpec | None, list[Tensor]]:
    """Separate additive float masks from a spec: returns (boolean spec, additive tensors).

    Additive masks may be combined with ``&`` only: their values have no meaning
    under ``|`` or ``~``.
    """
    if spec is None:
        return None, []
    if isinstance(spec, AdditiveMask):
        return _TensorMask(spec.mask), [torch.where(spec.mask, spec.values, 0.0)]
    if isinstance(spec, _And):
        a, ba = split_additive(spec.parts[0])
        c, bc = split_additive(spec.parts[1])
        return _And(a, c), ba + bc
    if isinstance(spec, _Combine) and any(_has_additive(p) for p in spec.parts):
        raise TypeError("mask: an additive (float) mask can only be combined with '&'; "
                        f"got {spec!r}")
    return spec, []


def _has_additive(spec: MaskSpec) -> bool:
    if isinstance(spec, AdditiveMask):
        return True
    return isinstance(spec, _Combine) and any(_has_additive(p) for p in spec.parts)
