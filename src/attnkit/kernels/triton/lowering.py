"""An AttentionCall's mask and bias, lowered to what the Triton kernels take.

Masks (one function, :func:`lower_mask`). Tiles are classified by ``call.block_map(BLOCK_M,
BLOCK_N)``: EMPTY tiles are left out of the schedule (never loaded), FULL ones run
unmasked, PARTIAL ones are masked by

* the window predicate ``lo <= (q + Tk - Tq) - k <= hi`` evaluated in the kernel, for
  masks recognised as a window (``causal()``, ``window(l, r)``, ``full()`` and their
  ``&``-intersections: :func:`recognise_window`), or
* a tile-local boolean mask gathered from ``call.mask.tile(...)`` for every PARTIAL tile
  only, stored as ``(slots, Bm, Hm, BLOCK_M, BLOCK_N)`` int8 and indexed per slot, batch
  and head. Memory follows the number of partial tiles, not Tq * Tk; translation-
  invariant specs (the spec's ``toeplitz`` flag: strided, dilated, ...) share one slot
  per diagonal offset.

Recognition asks the specs (their capability queries): ``mask.band()`` (an exact band
of distances: causal, window, full and their ``&``) and ``bias.distance_slopes()``
(ALiBi); every other mask is gathered (exact for every spec) and any other bias is made
dense (float32, differentiable, so tensor biases get exact gradients).

The schedules: ``rows`` (CSR over query tiles, for the forward and dQ kernels) and
``cols`` (CSC over key tiles, for dK/dV), int32 on the call's device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ...masks import EMPTY, FULL, PARTIAL

__all__ = ["Schedule", "MaskLowering", "BiasLowering", "lower_mask", "lower_bias",
           "recognise_window", "recognise_alibi"]

MASK_NONE, MASK_WINDOW, MASK_TILES = 0, 1, 2
BIAS_NONE, BIAS_ALIBI, BIAS_DENSE = 0, 1, 2


@dataclass
class Schedule:
    """Non-empty tiles grouped by query tile (rows) or key tile (cols)."""
    ptr: Tensor    # (n_groups + 1,) int32: group g's tiles are [ptr[g], ptr[g+1])
    index: Tensor  # (nnz,) int32: the other tile coordinate
    kind: Tensor   # (nnz,) int32: FULL or PARTIAL
    slot: Tensor   # (nnz,) int32: slot of the gathered mask (0 when unused)


@dataclass
class MaskLowering:
    block_m: int
    block_n: int
    mode: int                       # MASK_NONE / MASK_WINDOW / MASK_TILES
    rows: Schedule
    cols: Schedule
    win_lo: int = 0                 # window bounds on (q + off) - k (MASK_WINDOW)
    win_hi: int = 0
    tiles: Tensor | None = None     # (slots, Bm, Hm, block_m, block_n) int8 (MASK_TILES)
    n_partial: int = 0              # partial tiles in the block map
    n_tiles: int = 0                # non-empty tiles
    how: str = "no mask"

    def tile_strides(self) -> tuple[int, int, int]:
        """(slot, batch, head) strides of ``tiles``; 0 where the mask does not vary."""
        if self.tiles is None:
            return 0, 0, 0
        s, bm, hm = self.tiles.shape[:3]
        st = self.tiles.stride()
        return st[0], st[1] if bm > 1 else 0, st[2] if hm > 1 else 0


@dataclass
class BiasLowering:
    mode: int                       # BIAS_NONE / BIAS_ALIBI / BIAS_DENSE
    slopes: Tensor | None = None    # (H,) float32 (BIAS_ALIBI)
    dense: Tensor | None = None     # (Bb, Hb, Tq, Tk) float32, may require grad (BIAS_DENSE)
    how: str = "no bias"


# ---------------------------------------------------------------------------
# recognition: the specs' capability queries
# ---------------------------------------------------------------------------
def recognise_window(call) -> tuple[int, int] | None:
    """Integer bounds (lo, hi) with ``allowed == lo <= (q + Tk - Tq) - k <= hi`` when the
    call's mask is exactly a band (``spec.band()``: causal, window, full and their
    ``&``), clipped to the distances that occur; else None."""
    band = None if call.mask is None else call.mask.band()
    if band is None:
        return None
    Tq, Tk = call.Tq, call.Tk
    lo = max(math.ceil(band[0]), -Tq) if band[0] > -math.inf else -Tq  # d >= 1 - Tq
    hi = min(math.floor(band[1]), Tk) if band[1] < math.inf else Tk    # d <= Tk - 1
    return int(lo), int(hi)


def recognise_alibi(call) -> Tensor | None:
    """Per-head slopes (H,) float64 when ``call.bias`` is exactly ALiBi
    (``bias.distance_slopes()``), else None."""
    slopes = None if call.bias is None else call.bias.distance_slopes()
    return None if slopes is None else slopes.to(call.device, torch.float64)


# ---------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------
def _schedule(bm: Tensor, slot_of: Tensor, device) -> tuple[Schedule, Schedule]:
    nz = bm != EMPTY                                              # (nq, nk)

    def build(nzm: Tensor, bmm: Tensor, slots: Tensor) -> Schedule:
        g, o = nzm.nonzero(as_tuple=True)                         # group-major order
        ptr = torch.zeros(nzm.shape[0] + 1, dtype=torch.int64)
        ptr[1:] = torch.cumsum(nzm.sum(1), 0)
        cast = lambda t: t.to(device=device, dtype=torch.int32)  # noqa: E731
        return Schedule(cast(ptr), cast(o), cast(bmm[g, o]), cast(slots[g, o].clamp_min(0)))

    return build(nz, bm, slot_of), build(nz.t(), bm.t(), slot_of.t())


def _gather(call, bm: Tensor, BM: int, BN: int) -> tuple[Tensor, Tensor]:
    """Tile-local masks of the PARTIAL tiles: (slots, Bm, Hm, BM, BN) int8 on the call's
    device, and the slot of each tile (nq, nk) int64 (-1 where not partial)."""
    spec, Tq, Tk, dev = call.mask, call.Tq, call.Tk, call.device
    off = Tk - Tq
    slot_of = torch.full(bm.shape, -1, dtype=torch.int64)
    where = (bm == PARTIAL).nonzero().tolist()                    # row-major
    if not where:
        return torch.zeros(1, 1, 1, BM, BN, dtype=torch.int8, device=dev), slot_of
    share = getattr(spec, "toeplitz", False) is True

    def bounds(i, j):
        return i * BM, min(Tq, (i + 1) * BM), j * BN, min(Tk, (j + 1) * BN)

    # assign slots (shared along diagonals for translation-invariant specs)
    keys: dict = {}
    firsts = []                                                    # (slot, i, j) to compute
    for i, j in where:
        q0, q1, k0, k1 = bounds(i, j)
        key = (q0 + off - k0, q1 - q0, k1 - k0) if share else (i, j)
        s = keys.get(key)
        if s is None:
            s = keys[key] = len(firsts)
            firsts.append((i, j))
        slot_of[i, j] = s
    Bm, Hm = spec.tile(*bounds(*firsts[0]), Tq=Tq, Tk=Tk, device=dev).shape[:2]
    if Bm not in (1, call.B) or Hm not in (1, call.H):
        raise ValueError(f"mask: spec.tile gave a (Bm, Hm) = ({Bm}, {Hm}) tile for B={call.B}, "
                         f"H={call.H}; expected 1 or the full size")
    tiles = torch.zeros(len(firsts), Bm, Hm, BM, BN, dtype=torch.int8, device=dev)
    # group the tiles to compute by query row: one spec.tile call per row strip when the
    # row's partial tiles are dense enough in it, else one call per tile
    by_row: dict[int, list[tuple[int, int]]] = {}
    for s, (i, j) in enumerate(firsts):
        by_row.setdefault(i, []).append((s, j))
    for i, items in by_row.items():
        js = [j for _, j in items]
        lo, hi = min(js), max(js)
        q0, q1 = i * BM, min(Tq, (i + 1) * BM)
        if len(items) > 1 and (hi - lo + 1) <= 4 * len(items):
            k0, k1 = lo * BN, min(Tk, (hi + 1) * BN)
            strip = spec.tile(q0, q1, k0, k1, Tq=Tq, Tk=Tk, device=dev)  # (Bm, Hm, tq, span)
            for s, j in items:
                a, e = j * BN - k0, min(Tk, (j + 1) * BN) - k0
                tiles[s, :, :, :q1 - q0, :e - a] = strip[:, :, :, a:e]
        else:
            for s, j in items:
                k0, k1 = j * BN, min(Tk, (j + 1) * BN)
                tiles[s, :, :, :q1 - q0, :k1 - k0] = spec.tile(q0, q1, k0, k1, Tq=Tq, Tk=Tk,
                                                               device=dev)
    return tiles, slot_of


def lower_mask(call, block_m: int, block_n: int) -> MaskLowering:
    """The schedules and mask data for ``call`` at tiles ``block_m x block_n``."""
    nq, nk = math.ceil(call.Tq / block_m), math.ceil(call.Tk / block_n)
    if call.mask is None:
        bm = torch.full((nq, nk), FULL, dtype=torch.int8)
    else:
        bm = call.block_map(block_m, block_n).to("cpu", torch.int8)  # (nq, nk)
    n_partial = int((bm == PARTIAL).sum())
    n_tiles = int((bm != EMPTY).sum())
    none = torch.full(bm.shape, -1, dtype=torch.int64)
    if call.mask is None or n_partial == 0:
        rows, cols = _schedule(bm, none, call.device)
        how = "no mask" if call.mask is None else "no partial tiles (block map only)"
        return MaskLowering(block_m, block_n, MASK_NONE, rows, cols, n_partial=0,
                            n_tiles=n_tiles, how=how)
    win = recognise_window(call)
    if win is not None:
        rows, cols = _schedule(bm, none, call.device)
        return MaskLowering(block_m, block_n, MASK_WINDOW, rows, cols, win[0], win[1],
                            n_partial=n_partial, n_tiles=n_tiles,
                            how=f"window {win[0]} <= p - k <= {win[1]} in-kernel")
    tiles, slot_of = _gather(call, bm, block_m, block_n)
    rows, cols = _schedule(bm, slot_of, call.device)
    return MaskLowering(block_m, block_n, MASK_TILES, rows, cols, tiles=tiles,
                        n_partial=n_partial, n_tiles=n_tiles,
                        how=f"{tiles.shape[0]} gathered tile masks for {n_partial} partial tiles")


# ---------------------------------------------------------------------------
# biases
# ---------------------------------------------------------------------------
def lower_bias(call) -> BiasLowering:
    """ALiBi -> slopes evaluated in the kernel; any other bias -> dense float32
    ``(Bb, Hb, Tq, Tk)``, built with autograd on so gradients reach tensor biases."""
    if call.bias is None:
        return BiasLowering(BIAS_NONE)
    slopes = recognise_alibi(call)
    if slopes is not None:
        return BiasLowering(BIAS_ALIBI, slopes=slopes.to(torch.float32).contiguous(),
                            how="ALiBi slopes in-kernel")
    dense = call.bias.dense(call.Tq, call.Tk, device=call.device, dtype=torch.float32)
    return BiasLowering(BIAS_DENSE, dense=dense, how=f"dense bias {tuple(dense.shape)}")
