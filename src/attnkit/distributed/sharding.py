"""Splitting one sequence across ``world`` ranks, and putting it back together.

Two layouts of a (padded) sequence of length ``Tp``:

* ``contiguous``: ``world`` equal chunks; rank r holds chunk r. With a causal
  mask the last rank attends to everything and rank 0 to one chunk: unbalanced.
* ``zigzag``: ``2 * world`` equal chunks; rank r holds chunks r and
  ``2*world-1-r`` (one early, one late), so every rank sees the same number of
  causal (query, key) pairs.

Lengths not divisible by the number of chunks are padded at the end (zeros);
ring attention masks the padded keys and :func:`unshard` drops the padded rows.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["LAYOUTS", "padded_length", "segments", "shard", "unshard", "positions"]

LAYOUTS = ("zigzag", "contiguous")


def _check_layout(layout) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    return layout


def _check_rank(rank, world) -> None:
    for name, val, lo in (("world", world, 1), ("rank", rank, 0)):
        if isinstance(val, bool) or not isinstance(val, int) or val < lo:
            raise ValueError(f"{name}: expected an int >= {lo}, got {val!r}")
    if rank >= world:
        raise ValueError(f"rank: expected 0 <= rank < world={world}, got {rank}")


def _chunks(world: int, layout: str) -> int:
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"world: expected an int >= 1, got {world!r}")
    return 2 * world if _check_layout(layout) == "zigzag" else world


def padded_length(length: int, world: int, layout: str = "zigzag") -> int:
    """``length`` rounded up to a multiple of the number of chunks (world or 2*world)."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length: expected an int >= 1, got {length!r}")
    n = _chunks(world, layout)
    return math.ceil(length / n) * n


def segments(rank: int, world: int, padded: int,
             layout: str = "zigzag") -> list[tuple[int, int, int]]:
    """The runs of global positions rank ``rank`` holds, as (local_start, global_start, size)."""
    _check_rank(rank, world)
    n = _chunks(world, layout)
    if padded % n:
        raise ValueError(f"padded: expected a multiple of {n} ({layout}, world={world}), "
                         f"got {padded}")
    c = padded // n
    if layout == "contiguous":
        return [(0, rank * c, c)]
    return [(0, rank * c, c), (c, (n - 1 - rank) * c, c)]


def positions(rank: int, world: int, length: int, layout: str = "zigzag", *,
              device=None) -> Tensor:
    """Global positions (int64, ``(T_local,)``) of the local entries; padded ones are >= length."""
    tp = padded_length(length, world, layout)
    return torch.cat([torch.arange(g, g + s, device=device)
                      for _, g, s in segments(rank, world, tp, layout)])


def shard(x: Tensor, rank: int, world: int, layout: str = "zigzag", *, dim: int = 2) -> Tensor:
    """The part of the full sequence ``x`` (sequence along ``dim``) that ``rank`` holds.

    ``x`` is padded with zeros to :func:`padded_length` first; the result has
    ``padded_length(T) // world`` entries along ``dim`` and is contiguous.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim: expected a dimension of x (shape {tuple(x.shape)}), got {dim}")
    _check_rank(rank, world)
    dim = dim % x.dim()
    T = x.shape[dim]
    tp = padded_length(T, world, layout)
    if tp > T:
        pad = list(x.shape)
        pad[dim] = tp - T
        x = torch.cat([x, x.new_zeros(pad)], dim)
    return torch.cat([x.narrow(dim, g, s) for _, g, s in segments(rank, world, tp, layout)],
                     dim).contiguous()


def unshard(parts: Sequence[Tensor], layout: str = "zigzag", *, length: int | None = None,
            dim: int = 2) -> Tensor:
    """Inverse of :func:`shard`: ``parts[r]`` is rank r's shard; padded rows past
    ``length`` (default: keep all) are dropped."""
    if not isinstance(parts, (list, tuple)) or not parts or not all(
            isinstance(p, Tensor) for p in parts):
        raise TypeError("parts: expected a non-empty list of tensors (one per rank), got "
                        f"{type(parts).__name__}")
    world = len(parts)
    shapes = {tuple(p.shape) for p in parts}
    if len(shapes) != 1:
        raise ValueError(f"parts: expected equal shapes on every rank, got {sorted(shapes)}")
    x0 = parts[0]
    if not -x0.dim() <= dim < x0.dim():
        raise ValueError(f"dim: expected a dimension of the parts (shape {tuple(x0.shape)}), "
                         f"got {dim}")
    dim = dim % x0.dim()
    tp = x0.shape[dim] * world
    if length is None:
        length = tp
    if padded_length(length, world, layout) != tp:
        raise ValueError(f"length: expected a length that pads to {tp} ({world} shards of "
                         f"{x0.shape[dim]}, {layout}), got {length}")
    pieces = []
    for r, p in enumerate(parts):
        for loc, g, s in segments(r, world, tp, layout):
            pieces.append((g, p.narrow(dim, loc, s)))
    full = torch.cat([t for _, t in sorted(pieces, key=lambda gt: gt[0])], dim)
    return full.narrow(dim, 0, length)
