"""Named sparse attention patterns: exact pair counts, and execution whose time follows density.

Every pattern is a :class:`~attnkit.masks.MaskSpec` -- ``attention(q, k, v, mask=p)``
works at any Tq/Tk (decoding included) -- and a :class:`Pattern` with

* ``pairs(n)`` / ``density(n)``: the exact number (fraction of n²) of attended
  (query, key) pairs in n-token self-attention, computed without an n x n tensor;
* ``components(n)``: a split into *disjoint* pieces, each laid out so that its
  attended pairs fill whole tiles.

**Use** :func:`sparse_attention` **for speed.** It runs the pieces and merges them by
log-sum-exp (the merge ring attention uses), with a custom backward that reuses the
tiled kernel's: time and memory follow the pair count, not n². ``attention(mask=p)``
gives the same numbers, but the tiled kernel then skips only tiles empty in *natural*
order; strided, fixed, dilated and log-sparse patterns have almost none (cost ~ n²).

=================  ==========================  =========================================
pattern            pairs (n tokens)            how :func:`sparse_attention` runs it
=================  ==========================  =========================================
local(w)           ~ n (w+1)  (2w+1 bidir.)    natural order; tiles off the band skipped
strided(s)         ~ n s + n²/(2s)             band (natural) + stride part on positions
                                               sorted by (p mod s, p div s): contiguous
fixed(s, c)        ~ n s/2 + c n²/(2s)         blocks (natural) + summary keys gathered
dilated(w, d)      ~ n (w+1)                   positions sorted by (p mod d, p div d)
longformer(w, g)   ~ n (2w+1) + 2 g n          natural order (global rows/cols, band)
bigbird(b, ...)    ~ n b (2w+1+2g+r)           natural order, tiles = BigBird blocks
log_sparse()       ~ n (log2 n + 1)            one diagonal per offset (no tiles)
=================  ==========================  =========================================

With s ~ sqrt(n) strided and fixed cost ~ n^1.5; local, dilated, longformer and
bigbird ~ n; log-sparse ~ n log n. Strided, fixed and log-sparse are causal (as in
their papers); local and dilated take ``causal=`` (default True); longformer and bigbird
take ``causal=`` (default False, as in their papers).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ._checks import check_int as _int
from .backends.tiled import TileConfig, _Run, tiled_attention
from .functional import make_call
from . import masks as M
from .masks import EMPTY, FULL, PARTIAL, MaskSpec

__all__ = ["Pattern", "local", "strided", "fixed", "dilated", "longformer", "bigbird",
           "log_sparse", "sparse_attention"]

NEG_INF = float("-inf")
_STRICT_CAUSAL = M.causal() & ~M.window(0)  # keys strictly before the query


def _band_pairs(n: int, left: int, right: int) -> int:
    """#{(i, j) in [0, n)²: -right <= i - j <= left} (self included)."""
    def side(w):  # distances 1..w
        t = torch.arange(1, min(w, n - 1) + 1, dtype=torch.float64)
        return int((n - t).sum())
    return n + side(left) + side(right)


# ---------------------------------------------------------------------------
# component specs: masks in a piece's own (permuted / gathered) coordinates
# ---------------------------------------------------------------------------
class _Segments(MaskSpec):
    """Query and key in the same contiguous segment; ``starts`` (sorted, starts[0] = 0)."""

    def __init__(self, starts: Tensor):
        self.starts = starts

    def _seg(self, p: Tensor) -> Tensor:
        s = self.starts.to(p.device)
        return torch.searchsorted(s, p.contiguous(), right=True) - 1

    def _allowed(self, b, h, q, k, off):
        return self._seg(q + off) == self._seg(k)

    def _block(self, q0, q1, k0, k1, off):
        a, z = self._seg(q0 + off), self._seg(q1 - 1 + off)  # (nq, 1)
        c, e = self._seg(k0), self._seg(k1 - 1)                # (1, nk)
        full = (a == z) & (c == e) & (a == c)
        empty = (z < c) | (e < a)
        return torch.where(full, FULL, torch.where(empty, EMPTY, PARTIAL))

    def to(self, device):
        return _Segments(self.starts.to(device))

    def __repr__(self):
        return f"_Segments({self.starts.numel()})"


class _KeyBlockBefore(MaskSpec):
    """Gathered summary keys: key u (block ``kblock[u]``, nondecreasing) is visible from
    query q (raw index, block q // size) iff kblock[u] < q // size."""

    def __init__(self, kblock: Tensor, size: int):
        self.kblock, self.size = kblock, size

    def _allowed(self, b, h, q, k, off):
        return self.kblock.to(k.device)[k] < torch.div(q, self.size, rounding_mode="floor")

    def _block(self, q0, q1, k0, k1, off):
        kb = self.kblock.cpu()
        full = kb[k1 - 1] < q0 // self.size
        empty = kb[k0] >= (q1 - 1) // self.size
        return torch.where(full, FULL, torch.where(empty, EMPTY, PARTIAL))

    def to(self, device):
        return _KeyBlockBefore(self.kblock.to(device), self.size)


class _BlockMatrix(MaskSpec):
    """Block-level mask: aligned position p, key k allowed iff M[p // block, k // block],
    defined on positions 0 .. n-1 (BigBird's random blocks depend on n). It serves any
    Tk <= n as the prefix of those positions, so a KV-cached decoder (Tk = t + 1) and a
    shorter input see the same (p, k) entries as a full-length pass; Tk > n is refused."""

    def __init__(self, M: Tensor, block: int, n: int):
        self.M, self.block, self.n = M, block, n
        P = torch.zeros(M.shape[0] + 1, M.shape[1] + 1, dtype=torch.long)
        P[1:, 1:] = M.long().cumsum(0).cumsum(1)
        self._prefix = P

    def validate(self, B, H, Tq, Tk):
        if Tk > self.n:
            raise ValueError(f"mask: this block pattern was built for n={self.n} positions "
                             f"(it serves Tk <= n), got Tk={Tk}")

    def _allowed(self, b, h, q, k, off):
        M = self.M.to(q.device)
        qb = torch.div((q + off).clamp(min=0), self.block, rounding_mode="floor")
        return M[qb, torch.div(k, self.block, rounding_mode="floor")]

    def _block(self, q0, q1, k0, k1, off):
        b, P = self.block, self._prefix
        a, z = (q0 + off).clamp(min=0) // b, (q1 - 1 + off).clamp(min=0) // b + 1
        c, e = k0 // b, (k1 - 1) // b + 1
        cnt = P[z, e] - P[a, e] - P[z, c] + P[a, c]
        full, empty = cnt == (z - a) * (e - c), cnt == 0
        return torch.where(full, FULL, torch.where(empty, EMPTY, PARTIAL))

    def to(self, device):
        return self  # M moves to the index device on use

    def __repr__(self):
        return f"_BlockMatrix(n={self.n}, block={self.block})"


# ---------------------------------------------------------------------------
# pieces: how one disjoint component is computed
# ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _TiledPiece:
    """Run the tiled kernel on q[q_index], k/v[k_index] (None = all, natural order)
    with ``spec`` in those coordinates."""
    spec: MaskSpec
    q_index: Tensor | None = None  # (Tq',) int64
    k_index: Tensor | None = None  # (Tk',) int64
    cfg: TileConfig | None = None

    @property
    def empty(self) -> bool:
        return any(i is not None and i.numel() == 0 for i in (self.q_index, self.k_index))

    def forward(self, q, k, v, scale, cfg):
        pick = lambda t, i: t if i is None else t.index_select(2, i.to(t.device))  # noqa: E731
        qc, kc, vc = pick(q, self.q_index), pick(k, self.k_index), pick(v, self.k_index)
        run = _Run(make_call(qc, kc, vc, mask=self.spec, scale=scale), cfg or self.cfg
                   or TileConfig())
        out, lse = run.forward(qc, kc, vc)                       # (B, H, Tq', Dv), (B, H, Tq')
        return self.q_index, out, lse, (run, qc, kc, vc)

    def backward(self, state, dout, out, lse, dq, dk, dv):
        run, qc, kc, vc = state
        qi, ki = self.q_index, self.k_index
        sel = lambda t: t if qi is None else t.index_select(2, qi.to(t.device))  # noqa: E731
        gq, gk, gv, _ = run.backward(sel(dout), qc, kc, vc, sel(out), sel(lse))
        for acc, g, i in ((dq, gq, qi), (dk, gk, ki), (dv, gv, ki)):
            if i is None:
                acc += g
            else:
                acc.index_add_(2, i.to(acc.device), g.to(acc.dtype))


@dataclass(frozen=True, eq=False)
class _OffsetPiece:
    """Query at position i attends keys i - d for d in ``offsets``: one elementwise
    product per offset, O(n * D * len(offsets)) time, no tiles. Rows go in blocks of
    ``rows`` so each pass's operands stay in cache (2x faster at n = 16k on CPU)."""
    offsets: tuple[int, ...]
    rows: int = 1024

    def _setup(self, q, k, v, scale):
        B, H, n, D = q.shape
        Hkv, acc = k.shape[1], _acc(q.dtype)
        q5 = q.to(acc).view(B, Hkv, H // Hkv, n, D) * scale        # (B, Hkv, G, n, D)
        return q5, k.to(acc)[:, :, None], v.to(acc)[:, :, None]    # (B, Hkv, 1, n, D/Dv)

    def _blocks(self, n):
        """Row blocks [r0, r1) with their (column j, offset d, first row a >= d)."""
        for r0 in range(0, n, self.rows):
            r1 = min(n, r0 + self.rows)
            yield r0, r1, [(j, d, max(r0, d)) for j, d in enumerate(self.offsets)
                           if max(r0, d) < r1]

    def forward(self, q, k, v, scale, cfg):
        q5, kf, vf = self._setup(q, k, v, scale)
        B, Hkv, G, n, _ = q5.shape
        out = q5.new_zeros(B, Hkv, G, n, vf.shape[-1])
        lse = q5.new_full((B, Hkv, G, n), NEG_INF)
        for r0, r1, offs in self._blocks(n):
            S = q5.new_full((B, Hkv, G, r1 - r0, len(self.offsets)), NEG_INF)  # scores
            for j, d, a in offs:
                S[..., a - r0:, j] = (q5[..., a:r1, :] * kf[..., a - d:r1 - d, :]).sum(-1)
            m = S.amax(-1, keepdim=True)
            P = (S - torch.where(m == NEG_INF, 0.0, m)).exp()
            l = P.sum(-1, keepdim=True)
            o = out[..., r0:r1, :]
            for j, d, a in offs:
                o[..., a - r0:, :] += P[..., a - r0:, j, None] * vf[..., a - d:r1 - d, :]
            o /= torch.where(l > 0, l, 1.0)
            lse[..., r0:r1] = torch.where(l > 0, m + torch.log(l), NEG_INF)[..., 0]
        H = Hkv * G
        return None, out.view(B, H, n, -1), lse.view(B, H, n), (q, k, v, scale)

    def backward(self, state, dout, out, lse, dq, dk, dv):
        q, k, v, scale = state
        q5, kf, vf = self._setup(q, k, v, scale)
        B, Hkv, G, n, D = q5.shape
        do5 = dout.to(q5.dtype).view(B, Hkv, G, n, -1)
        delta = (do5 * out.view(B, Hkv, G, n, -1)).sum(-1)         # (B, Hkv, G, n)
        lse5 = lse.view(B, Hkv, G, n)
        dq5 = dq.view(B, Hkv, G, n, D)
        for r0, r1, offs in self._blocks(n):
            for _, d, a in offs:
                kd, vd = kf[..., a - d:r1 - d, :], vf[..., a - d:r1 - d, :]
                p = ((q5[..., a:r1, :] * kd).sum(-1) - lse5[..., a:r1]).exp()  # weights
                ds = p * ((do5[..., a:r1, :] * vd).sum(-1) - delta[..., a:r1])
                dq5[..., a:r1, :] += ds[..., None] * kd * scale
                dk[:, :, a - d:r1 - d] += (ds[..., None] * q5[..., a:r1, :]).sum(2)
                dv[:, :, a - d:r1 - d] += (p[..., None] * do5[..., a:r1, :]).sum(2)


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _permutation(n: int, s: int) -> tuple[Tensor, Tensor]:
    """Positions sorted by (p mod s, p div s) and the start of each residue's segment."""
    p = torch.arange(n)
    perm = torch.argsort((p % s) * n + p // s)
    counts = torch.div(n - torch.arange(min(s, n)) + s - 1, s, rounding_mode="floor")
    starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1]])
    return perm, starts


# ---------------------------------------------------------------------------
# patterns
# ---------------------------------------------------------------------------
class Pattern(MaskSpec):
    """A named pattern: a mask spec plus ``pairs(n)``, ``density(n)``, ``components(n)``."""

    name = "pattern"

    def pairs(self, n: int) -> int:
        """Exact number of attended (query, key) pairs in n-token self-attention."""
        raise NotImplementedError

    def density(self, n: int) -> float:
        """``pairs(n) / n**2``."""
        return self.pairs(n) / float(_int("n", n, 1)) ** 2

    def components(self, n: int) -> list:
        """Disjoint pieces whose union is the pattern at n tokens (see module doc)."""
        return [_TiledPiece(self)]

    def check(self, n: int) -> None:
        """Raise ValueError if the pattern cannot apply to n tokens."""

    def validate(self, B, H, Tq, Tk):
        self.check(Tk)

    def __repr__(self):
        return self.name


class _Local(Pattern):
    def __init__(self, w: int, causal: bool):
        self.w, self.causal = w, causal
        self.spec = M.window(w, 0 if causal else w)
        self.name = f"local({w}{'' if causal else ', causal=False'})"

    def _allowed(self, b, h, q, k, off):
        return self.spec._allowed(b, h, q, k, off)

    def _block(self, q0, q1, k0, k1, off):
        return self.spec._block(q0, q1, k0, k1, off)

    def pairs(self, n):
        return _band_pairs(_int("n", n, 1), self.w, 0 if self.causal else self.w)

    def components(self, n):
        return [_TiledPiece(self.spec)]


class _Strided(Pattern):
    """Child et al. 2019 'strided': i sees j <= i with i - j < s or s | (i - j)."""

    def __init__(self, s: int):
        self.s, self.name = s, f"strided({s})"

    def _allowed(self, b, h, q, k, off):
        d = q + off - k
        return (d >= 0) & ((d < self.s) | (torch.remainder(d, self.s) == 0))

    def _block(self, q0, q1, k0, k1, off):
        c = M.causal()._block(q0, q1, k0, k1, off)
        return torch.where(c == EMPTY, EMPTY, PARTIAL)

    def pairs(self, n):
        d = torch.arange(_int("n", n, 1), dtype=torch.float64)
        keep = (d < self.s) | (d % self.s == 0)
        return int(((n - d) * keep).sum())

    def components(self, n):
        perm, starts = _permutation(n, self.s)
        return [_TiledPiece(M.window(self.s - 1)),                            # the band
                _TiledPiece(_Segments(starts) & _STRICT_CAUSAL, perm, perm)]


class _Fixed(Pattern):
    """Child et al. 2019 'fixed': i sees j <= i in its block of s, or j a summary
    position (the last c of each block)."""

    def __init__(self, s: int, c: int):
        self.s, self.c, self.name = s, c, f"fixed({s}, c={c})"

    def _allowed(self, b, h, q, k, off):
        qp, s = q + off, self.s
        same = torch.div(qp, s, rounding_mode="floor") == torch.div(k, s, rounding_mode="floor")
        summary = torch.remainder(k, s) >= s - self.c
        return (k <= qp) & (same | summary)

    def _block(self, q0, q1, k0, k1, off):
        c = M.causal()._block(q0, q1, k0, k1, off)
        return torch.where(c == EMPTY, EMPTY, PARTIAL)

    def pairs(self, n):
        i = torch.arange(_int("n", n, 1), dtype=torch.float64)
        same = (i % self.s) + 1                      # causal keys in its own block
        return int((same + self.c * torch.div(i, self.s, rounding_mode="floor")).sum())

    def components(self, n):
        p = torch.arange(n)
        summary = p[p % self.s >= self.s - self.c]
        return [_TiledPiece(_Segments(torch.arange(0, n, self.s)) & M.causal()),
                _TiledPiece(_KeyBlockBefore(summary // self.s, self.s), None, summary)]


class _DilatedP(Pattern):
    def __init__(self, w: int, d: int, causal: bool):
        self.w, self.d, self.causal = w, d, causal
        self.spec = M.dilated(w, d, causal=causal)
        self.name = f"dilated({w}, {d}{'' if causal else ', causal=False'})"

    def _allowed(self, b, h, q, k, off):
        return self.spec._allowed(b, h, q, k, off)

    def _block(self, q0, q1, k0, k1, off):
        return self.spec._block(q0, q1, k0, k1, off)

    def pairs(self, n):
        t = torch.arange(1, self.w + 1, dtype=torch.float64) * self.d
        one_side = int((n - t).clamp(min=0).sum())
        return _int("n", n, 1) + one_side * (1 if self.causal else 2)

    def components(self, n):
        band = M.window(self.w, 0 if self.causal else self.w)
        if self.d == 1:
            return [_TiledPiece(band)]
        perm, starts = _permutation(n, self.d)
        return [_TiledPiece(_Segments(starts) & band, perm, perm)]


class _Longformer(Pattern):
    def __init__(self, w: int, idx: Tensor, label: str, causal: bool):
        self.w, self.idx, self.causal = w, idx, causal
        band = M.window(w, 0 if causal else w) | M.global_tokens(idx)
        self.spec = band & M.causal() if causal else band
        self.name = f"longformer({w}, globals={label}{', causal=True' if causal else ''})"

    def check(self, n):
        if self.idx.numel() > n or (self.idx.numel() and int(self.idx.max()) >= n):
            raise ValueError(f"longformer: globals must be positions < n={n} (at most n "
                             f"tokens), got {self.idx.numel()} with max "
                             f"{int(self.idx.max())}")

    def _allowed(self, b, h, q, k, off):
        return self.spec._allowed(b, h, q, k, off)

    def _block(self, q0, q1, k0, k1, off):
        return self.spec._block(q0, q1, k0, k1, off)

    def pairs(self, n):
        self.check(_int("n", n, 1))
        i, G = torch.arange(n), self.idx
        lo = (i - self.w).clamp(min=0)
        hi = i if self.causal else (i + self.w).clamp(max=n - 1)
        outside = torch.searchsorted(G, lo)                         # globals left of the band
        if not self.causal:
            outside = outside + G.numel() - torch.searchsorted(G, hi, right=True)
        row = hi - lo + 1 + outside                                 # a non-global row
        is_g = torch.zeros(n, dtype=torch.bool)
        is_g[G] = True
        everything = i + 1 if self.causal else torch.full_like(i, n)
        return int(torch.where(is_g, everything, row).sum())

    def components(self, n):
        return [_TiledPiece(self.spec)]


class _BigBird(Pattern):
    def __init__(self, block, window_blocks, global_blocks, random_blocks, seed, causal):
        self.b, self.wb, self.g, self.r, self.seed, self.causal = (
            block, window_blocks, global_blocks, random_blocks, seed, causal)
        self.name = (f"bigbird(block={block}, window={window_blocks}, globals={global_blocks}, "
                     f"random={random_blocks}, seed={seed}{', causal=True' if causal else ''})")
        self._cache: dict[int, tuple[Tensor, MaskSpec]] = {}

    def check(self, n):
        if self.g * self.b > n:
            raise ValueError(f"bigbird: global_blocks * block = {self.g} * {self.b} = "
                             f"{self.g * self.b} global tokens exceeds n={n} tokens")

    def _base(self, nb: int) -> Tensor:
        """Window and global blocks, (nb, nb) bool (causal: no later key blocks)."""
        i = torch.arange(nb)
        d = i[:, None] - i[None, :]
        out = (d.abs() <= self.wb) | (i[:, None] < self.g) | (i[None, :] < self.g)
        return out & (d >= 0) if self.causal else out

    def random_blocks(self, n: int) -> Tensor:
        """(nb, random_blocks) key blocks drawn for each query block (-1 = none left):
        uniform without replacement among blocks not in its window or global (causal:
        earlier blocks only), from ``seed``."""
        nb = math.ceil(_int("n", n, 1) / self.b)
        i = torch.arange(nb)
        taken = self._base(nb) | (i[:, None] < self.g)               # global rows see all
        if self.causal:
            taken = taken | (i[None, :] > i[:, None])
        gen = torch.Generator().manual_seed(self.seed)
        score = torch.rand(nb, nb, generator=gen, dtype=torch.float64).masked_fill(taken, -1.0)
        top = score.topk(min(self.r, nb), dim=1)
        return torch.where(top.values >= 0, top.indices, -1)

    def blocks(self, n: int) -> Tensor:
        """The block-level mask (nb, nb) bool: window | global | random."""
        return self._at(n)[0]

    def at(self, n: int) -> MaskSpec:
        """The plain mask spec of this pattern drawn for n tokens (composable); it also
        serves Tk < n as the prefix of those positions (cached decoding), never Tk > n."""
        return self._at(n)[1]

    def _at(self, n: int):
        self.check(_int("n", n, 1))
        if n not in self._cache:
            nb = math.ceil(n / self.b)
            blk = self._base(nb)
            R = self.random_blocks(n)
            rows = torch.arange(nb)[:, None].expand_as(R)
            blk[rows[R >= 0], R[R >= 0]] = True
            spec = _BlockMatrix(blk, self.b, n)
            self._cache[n] = (blk, spec & M.causal() if self.causal else spec)
        return self._cache[n]

    def _allowed(self, b, h, q, k, off):
        raise TypeError("bigbird: its random blocks depend on n; to combine it with other "
                        "masks use pattern.at(n) (a plain spec for n tokens)")

    def tile(self, q0, q1, k0, k1, *, Tq, Tk, device=None):
        return self.at(Tk).tile(q0, q1, k0, k1, Tq=Tq, Tk=Tk, device=device)

    def block_map(self, Tq, Tk, block_q, block_k, *, device=None):
        return self.at(Tk).block_map(Tq, Tk, block_q, block_k)

    def mask_mod(self, Tq, Tk):
        return self.at(Tk).mask_mod(Tq, Tk)

    def pairs(self, n):
        blk = self.blocks(n).double()
        lens = torch.full((blk.shape[0],), float(self.b), dtype=torch.float64)
        lens[-1] = n - self.b * (blk.shape[0] - 1)
        full = lens[:, None] * lens[None, :] * blk
        if not self.causal:
            return int(full.sum())
        # causal: strictly-lower blocks count whole, diagonal blocks a triangle
        return int(full.tril(-1).sum() + (lens * (lens + 1) / 2 * blk.diagonal()).sum())

    def components(self, n):
        return [_TiledPiece(self.at(n), cfg=TileConfig(self.b, self.b, max(1024, self.b)))]


class _LogSparse(Pattern):
    """LogSparse (Li et al. 2019): i sees itself and i - 1, i - 2, i - 4, i - 8, ..."""
    name = "log_sparse()"

    def _allowed(self, b, h, q, k, off):
        d = q + off - k
        return (d == 0) | ((d > 0) & (torch.bitwise_and(d, d - 1) == 0))

    def _block(self, q0, q1, k0, k1, off):
        dmin, dmax = (q0 + off) - (k1 - 1), (q1 - 1 + off) - k0
        lo = dmin.clamp(min=1).double()
        top = torch.exp2(torch.floor(torch.log2(dmax.clamp(min=1).double())))  # 2^k <= dmax
        hit = ((dmin <= 0) & (dmax >= 0)) | ((dmax >= 1) & (top >= lo))
        return torch.where(hit, PARTIAL, EMPTY)

    def offsets(self, n: int) -> tuple[int, ...]:
        return (0,) + tuple(2 ** j for j in range(max(n - 1, 1).bit_length()) if 2 ** j < n)

    def pairs(self, n):
        return sum(n - d for d in self.offsets(_int("n", n, 1)))

    def components(self, n):
        return [_OffsetPiece(self.offsets(n))]


# ---------------------------------------------------------------------------
# constructors (the one-liners)
# ---------------------------------------------------------------------------
def local(window: int, *, causal: bool = True) -> Pattern:
    """Sliding window: position p sees p-window..p (causal) or p-window..p+window."""
    return _Local(_int("window", window, 0), bool(causal))


def strided(stride: int) -> Pattern:
    """Sparse Transformer strided (causal): the last ``stride`` keys and every
    ``stride``-th one before. ~ n^1.5 pairs with ``stride = math.isqrt(n)``."""
    return _Strided(_int("stride", stride, 1))


def fixed(stride: int, summary: int = 1) -> Pattern:
    """Sparse Transformer fixed (causal): keys in the query's block of ``stride``, plus
    the last ``summary`` positions of every block."""
    _int("stride", stride, 1)
    if _int("summary", summary, 1) > stride:
        raise ValueError(f"summary: expected 1 <= summary <= stride={stride}, got {summary}")
    return _Fixed(stride, summary)


def dilated(window: int, dilation: int, *, causal: bool = True) -> Pattern:
    """Keys at distance 0, d, 2d, ..., window*d (both sides if not causal)."""
    return _DilatedP(_int("window", window, 0), _int("dilation", dilation, 1), bool(causal))


def longformer(window: int, globals: int | Sequence[int] = 1, *, causal: bool = False) -> Pattern:
    """Longformer: window plus global tokens (attend to and attended by all; with
    ``causal``, all earlier). ``globals`` is a count (the first tokens) or positions."""
    _int("window", window, 0)
    if isinstance(globals, int) and not isinstance(globals, bool):
        idx, label = torch.arange(_int("globals", globals, 0)), str(globals)
    else:
        idx = torch.as_tensor(list(globals), dtype=torch.long)
        if idx.numel() and int(idx.min()) < 0:
            raise ValueError(f"globals: positions must be >= 0, got {int(idx.min())}")
        idx, label = torch.unique(idx), str(list(globals))
    return _Longformer(window, idx, label, bool(causal))


def bigbird(block: int = 64, window_blocks: int = 1, global_blocks: int = 1,
            random_blocks: int = 2, seed: int = 0, *, causal: bool = False) -> Pattern:
    """BigBird (Zaheer et al. 2020), block-level: each query block sees the
    ``window_blocks`` blocks either side, the first ``global_blocks`` blocks (which see
    everything), and ``random_blocks`` key blocks drawn with ``seed`` (reproducible).
    ``causal``: keys after the query are masked and random blocks are drawn from
    earlier blocks."""
    return _BigBird(_int("block", block, 1), _int("window_blocks", window_blocks, 0),
                    _int("global_blocks", global_blocks, 0),
                    _int("random_blocks", random_blocks, 0), _int("seed", seed, 0),
                    bool(causal))


def log_sparse() -> Pattern:
    """LogSparse (causal): itself and the keys at distance 1, 2, 4, 8, ..."""
    return _LogSparse()


# ---------------------------------------------------------------------------
# execution
# ---------------------------------------------------------------------------
class _SparseFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, pieces, scale, cfg):
        B, H, n, _ = q.shape
        acc = _acc(q.dtype)
        lse = q.new_full((B, H, n), NEG_INF, dtype=acc)
        out = q.new_zeros(B, H, n, v.shape[-1], dtype=acc)
        states = []
        for piece in pieces:
            rows, o, l, st = piece.forward(q, k, v, scale, cfg)
            states.append(st)
            l = torch.where(l == math.inf, NEG_INF, l)          # kernel: +inf = empty row
            if rows is not None:
                rows = rows.to(out.device)
                o = out.new_zeros(out.shape).index_copy_(2, rows, o.to(acc))
                l = lse.new_full(lse.shape, NEG_INF).index_copy_(2, rows, l.to(acc))
            new = torch.logaddexp(lse, l)
            safe = torch.where(new == NEG_INF, 0.0, new)
            out = out * torch.exp(lse - safe)[..., None] + o * torch.exp(l - safe)[..., None]
            lse = new
        lse = torch.where(lse == NEG_INF, math.inf, lse)         # kernel convention
        ctx.save_for_backward(out, lse)
        ctx.pieces, ctx.states, ctx.inputs = pieces, states, (q, k, v)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        out, lse = ctx.saved_tensors
        q, k, v = ctx.inputs
        acc = out.dtype
        dout = dout.contiguous()
        dq, dk, dv = (torch.zeros(t.shape, dtype=acc, device=t.device) for t in (q, k, v))
        for piece, st in zip(ctx.pieces, ctx.states):
            piece.backward(st, dout.to(acc), out, lse, dq, dk, dv)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


def sparse_attention(q: Tensor, k: Tensor, v: Tensor, pattern: MaskSpec, *,
                     scale: float | None = None, cfg: TileConfig | None = None) -> Tensor:
    """Self-attention restricted to ``pattern`` in time and memory that follow its pairs.

    q (B, H, n, D), k (B, Hkv, n, D), v (B, Hkv, n, Dv) -> (B, H, n, Dv); GQA allowed.
    ``pattern``: a :class:`Pattern` (run by its components) or any mask spec (run by the
    tiled kernel in natural order). ``cfg`` overrides the tile sizes of every piece.
    Exact: equals ``attention(q, k, v, mask=pattern)``; differentiable (custom backward).
    For decoding (Tq < Tk) use ``attention(..., mask=pattern)``.
    """
    if not isinstance(pattern, MaskSpec):
        raise TypeError(f"pattern: expected a Pattern or MaskSpec, got {type(pattern).__name__}")
    call = make_call(q, k, v, mask=pattern, scale=scale)  # validates shapes and the pattern
    if call.Tq != call.Tk:
        raise ValueError(f"q, k: sparse_attention is self-attention and expects Tq == Tk, got "
                         f"Tq={call.Tq}, Tk={call.Tk} (use attnkit.attention for decoding)")
    pieces = pattern.components(call.Tk) if isinstance(pattern, Pattern) else [
        _TiledPiece(pattern)]
    pieces = [p for p in pieces if not getattr(p, "empty", False)]  # e.g. no summary keys
    p0 = pieces[0]
    if len(pieces) == 1 and isinstance(p0, _TiledPiece) and p0.q_index is None and (
            p0.k_index is None):
        one = make_call(q, k, v, mask=p0.spec, scale=call.scale)
        return tiled_attention(one, cfg or p0.cfg)[0]
    return _SparseFunction.apply(q, k, v, pieces, call.scale, cfg)
