"""Tiles: the tile sizes of the tiled kernels and the plan of which key chunks each query
tile visits (empty blocks of the mask's block map skipped, partial ones marked)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..call import AttentionCall
from ..masks import EMPTY, FULL, PARTIAL

__all__ = ["TileConfig", "Chunk", "plan"]


@dataclass(frozen=True)
class TileConfig:
    """Tile sizes. ``block_q`` x ``block_k`` is the block map's granularity (what is
    skipped or masked); ``max_chunk`` caps the keys one matmul handles. Defaults
    chosen by measurement on CPU (``python benchmarks/tiles.py`` sweeps them)."""
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


@dataclass(frozen=True)
class Chunk:
    """Keys [k0, k1) visited in one matmul; ``partial``: the ranges that need the mask."""
    k0: int
    k1: int
    partial: tuple[tuple[int, int], ...]  # key ranges (absolute) that need the mask


def plan(call: AttentionCall, cfg: TileConfig) -> list[list[Chunk]]:
    """For each query tile, the key chunks to visit (empty blocks skipped)."""
    bq, bk, Tq, Tk = cfg.block_q, cfg.block_k, call.Tq, call.Tk
    nq, nk = math.ceil(Tq / bq), math.ceil(Tk / bk)
    per_chunk = max(1, cfg.max_chunk // bk)
    bm = call.block_map(bq, bk)
    bm = [[FULL] * nk] * nq if bm is None else bm.tolist()
    out = []
    for row in bm:
        chunks, j = [], 0
        while j < nk:
            if row[j] == EMPTY:
                j += 1
                continue
            start = j
            while j < nk and row[j] != EMPTY and j - start < per_chunk:
                j += 1
            partial, p = [], start
            while p < j:  # merge consecutive partial blocks into ranges
                if row[p] == PARTIAL:
                    a = p
                    while p < j and row[p] == PARTIAL:
                        p += 1
                    partial.append((a * bk, min(Tk, p * bk)))
                else:
                    p += 1
            chunks.append(Chunk(start * bk, min(Tk, j * bk), tuple(partial)))
        out.append(chunks)
    return out


