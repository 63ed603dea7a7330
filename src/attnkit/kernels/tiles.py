"""Tiles: the tile sizes of the tiled kernels, the plan of which key chunks each query
tile visits (empty blocks of the mask's block map skipped, partial ones marked), and the
distribution of tiles over threads (:func:`run_parallel`)."""
from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
from dataclasses import dataclass

import torch
from torch import Tensor

from ..call import AttentionCall
from ..masks import EMPTY, PARTIAL

__all__ = ["TileConfig", "config_for", "Chunk", "plan", "run_parallel", "single_threaded_caller",
           "workers"]


@dataclass(frozen=True)
class TileConfig:
    """Tile sizes. ``block_q`` x ``block_k`` is the block map's granularity (what is
    skipped or masked); ``max_chunk`` caps the keys one matmul handles. Defaults
    chosen by measurement on CPU (``python benchmarks/tiles.py`` sweeps them; narrow
    bands get ``block_q`` 64 when no config is given, see :func:`config_for`)."""
    block_q: int = 128
    block_k: int = 64
    max_chunk: int = 1024

    def __post_init__(self):
        for name in ("block_q", "block_k", "max_chunk"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"TileConfig: {name} must be a positive int, got {v!r}")
        if self.max_chunk < self.block_k:
            raise ValueError(f"TileConfig: max_chunk ({self.max_chunk}) must be >= block_k "
                             f"({self.block_k})")


# A narrow band (a sliding window) wastes block_q keys per query row on the two partial
# edges of every tile: at window 256, 384 keys computed per 257 needed with block_q 128,
# 320 with 64. Measured (benchmarks/tiles.py, forward, 16k tokens): block_q 64 is 11%
# faster at window 256, 9% at 512, 3% at 1024; causal stays faster at 128 (10% at 4k).
BAND_BLOCK_Q = 64
BAND_MAX_WIDTH = 1024


def config_for(call: AttentionCall) -> TileConfig:
    """The tiles a call gets when none are given (worked out once per call): ``TileConfig()``,
    with ``block_q`` :data:`BAND_BLOCK_Q` when the mask bounds ``(q + offset) - k`` within
    a band of at most :data:`BAND_MAX_WIDTH` (``distance_bounds``)."""
    return call.once("tile_config", lambda: _config_for(call))


def _config_for(call: AttentionCall) -> TileConfig:
    cfg = TileConfig()
    if call.mask is not None:
        lo, hi = call.mask.distance_bounds()
        if math.isfinite(lo) and math.isfinite(hi) and hi - lo <= BAND_MAX_WIDTH:
            return TileConfig(BAND_BLOCK_Q, cfg.block_k, cfg.max_chunk)
    return cfg


@dataclass(frozen=True)
class Chunk:
    """Keys [k0, k1) visited in one matmul; ``partial``: the ranges that need the mask."""
    k0: int
    k1: int
    partial: tuple[tuple[int, int], ...]  # key ranges (absolute) that need the mask


def plan(call: AttentionCall, cfg: TileConfig) -> list[list[Chunk]]:
    """For each query tile, the key chunks to visit (empty blocks skipped); kept with the
    block map in its cache entry (:meth:`AttentionCall.blocks`), never to be modified.

    A chunk is a run of consecutive non-empty blocks, cut every ``max_chunk // block_k``
    blocks; its ``partial`` ranges are the runs of PARTIAL blocks inside it. The Python
    work is proportional to the number of runs and chunks (O(nQ) for a window), not to
    nQ * nK: the runs are found by tensor ops on the block map."""
    if call.mask is None:
        return call.once(("plan", cfg), lambda: _plan(None, cfg, call.Tq, call.Tk))
    with single_threaded_caller():
        entry = call.blocks(cfg.block_q, cfg.block_k)
        out = entry.plans.get(cfg.max_chunk)
        if out is None:
            out = entry.plans[cfg.max_chunk] = _plan(entry.map, cfg, call.Tq, call.Tk)
    return out


def _plan(bm: Tensor | None, cfg: TileConfig, Tq: int, Tk: int) -> list[list[Chunk]]:
    bq, bk = cfg.block_q, cfg.block_k
    nq, nk = math.ceil(Tq / bq), math.ceil(Tk / bk)
    per_chunk = max(1, cfg.max_chunk // bk)
    if bm is None:  # unmasked: every block FULL, the same chunks in every row
        row = [Chunk(a * bk, min(Tk, min(a + per_chunk, nk) * bk), ())
               for a in range(0, nk, per_chunk)]
        return [list(row) for _ in range(nq)]
    visit = _runs(bm != EMPTY, nq)   # per row: [(start, end)) block runs
    part = _runs(bm == PARTIAL, nq)
    out = []
    for runs, pruns in zip(visit, part):
        chunks, p = [], 0
        for s, e in runs:
            for a in range(s, e, per_chunk):
                b = min(e, a + per_chunk)
                while p < len(pruns) and pruns[p][1] <= a:
                    p += 1
                partial, r = [], p
                while r < len(pruns) and pruns[r][0] < b:
                    partial.append((max(a, pruns[r][0]) * bk, min(Tk, min(b, pruns[r][1]) * bk)))
                    r += 1
                chunks.append(Chunk(a * bk, min(Tk, b * bk), tuple(partial)))
        out.append(chunks)
    return out


def _runs(flags: Tensor, nq: int) -> list[list[tuple[int, int]]]:
    """Runs of True in each row of a (nQ, nK) bool tensor: per row, [(start, end)) pairs."""
    edge = torch.nn.functional.pad(flags.to(torch.int8), (1, 1))   # (nQ, nK + 2)
    step = edge[:, 1:] - edge[:, :-1]                              # +1 run start, -1 run end
    starts, ends = (step == 1).nonzero().tolist(), (step == -1).nonzero().tolist()
    rows: list[list[tuple[int, int]]] = [[] for _ in range(nq)]
    for (i, s), (_, e) in zip(starts, ends):  # both row-major: the n-th start pairs the n-th end
        rows[i].append((s, e))
    return rows


# ---------------------------------------------------------------------------
# tiles over threads
# ---------------------------------------------------------------------------
# With torch's intra-op parallelism every small per-tile op (a 64-row matmul, an exp2)
# is its own OpenMP parallel region ending in a barrier; when another process holds one
# of the cores, every barrier waits for a time slice while the other thread spins, and
# a tiled call swung by up to 10x (and burnt 10x its CPU time) under 2 threads on a
# loaded machine. So the tiles are distributed instead: one worker thread per torch
# thread, each running its tiles with 1 intra-op thread (coarse parallelism, as SDPA's
# kernel does); the caller waits. Below MIN_PARALLEL_FLOPS a call runs inline.
MIN_PARALLEL_FLOPS = 5e7

_pools: dict = {}
_pools_lock = threading.Lock()


def _single_threaded_worker(jobs: queue.SimpleQueue, ready: queue.SimpleQueue) -> None:
    torch.get_num_threads()   # torch's lazy per-thread init first (it would reset the count)
    torch.set_num_threads(1)  # this thread's OpenMP/MKL count; the global one is restored
    ready.put(None)
    while True:
        fn, done = jobs.get()
        try:
            fn()
        except BaseException as e:  # re-raised in the caller
            done.put(e)
        else:
            done.put(None)


class _Pool:
    """``n`` daemon threads that run torch ops with one intra-op thread each."""

    def __init__(self, n: int):
        self.n, self.pid = n, os.getpid()
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        ready: queue.SimpleQueue = queue.SimpleQueue()
        before = torch.get_num_threads()
        self.threads = [threading.Thread(target=_single_threaded_worker, args=(self.jobs, ready),
                                         daemon=True, name=f"attnkit-tiles-{i}")
                        for i in range(n)]
        for t in self.threads:
            t.start()
        for _ in range(n):  # every worker has set its own count: restore the global one
            ready.get()
        torch.set_num_threads(before)

    def run(self, fns) -> None:
        done: queue.SimpleQueue = queue.SimpleQueue()
        for fn in fns:
            self.jobs.put((fn, done))
        errors = [e for e in (done.get() for _ in fns) if e is not None]
        if errors:
            raise errors[0]


def run_parallel(fns: list) -> None:
    """Run the callables ``fns`` (they must not write to the same memory) at once, one per
    single-threaded worker thread (inline when there is one); re-raise the first error."""
    if len(fns) <= 1:
        for fn in fns:
            fn()
        return
    n = len(fns)
    # the workers run under the caller's autograd modes (thread-local in torch)
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def under_callers_modes(fn):
        def run():
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                fn()
        return run
    fns = [under_callers_modes(fn) for fn in fns]
    with _pools_lock:
        pool = _pools.get(n)
        if pool is None or pool.pid != os.getpid():  # a fork has no threads: new pool
            pool = _pools[n] = _Pool(n)
    pool.run(fns)


@contextlib.contextmanager
def single_threaded_caller():
    """Within the block the calling thread runs torch ops on one intra-op thread (its own
    OpenMP/MKL count; other threads keep theirs): a kernel's few whole-tensor ops then
    never wait at an OpenMP barrier either, and its tiles go to :func:`run_parallel`."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def workers(flops: float) -> int:
    """How many workers a tile loop of ``flops`` should use: torch's intra-op thread count
    (1 inside a worker), or 1 below ``MIN_PARALLEL_FLOPS``."""
    return 1 if flops < MIN_PARALLEL_FLOPS else max(1, torch.get_num_threads())
