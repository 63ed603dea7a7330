"""Block maps, cached across calls: the one cache (:func:`blocks_for`), keyed by the
mask's :func:`fingerprint`, the problem size and the tiling. An entry holds the block
map and the plans the tiled kernel derives from it (:func:`attnkit.kernels.tiles.plan`);
a call keeps the entry it looked up (:meth:`AttentionCall.blocks`), so ``auto`` (which
reads the block map to choose a backend) and the backend it chooses share one lookup.

A spec without analytic tile classes (``Document``, a tensor mask) reduces its dense
mask to build its block map, O(Tq * Tk) -- 4 s at 16k tokens, 20x the forward itself;
opaque masks (``from_mask_mod``) cannot be fingerprinted and are evaluated once per call.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..masks import MaskSpec
from .bias import BiasSpec

__all__ = ["Blocks", "blocks_for", "fingerprint", "Uncacheable", "BLOCK_MAP_CACHE"]

BLOCK_MAP_CACHE = 64  # entries kept (LRU)
_entries: OrderedDict = OrderedDict()
_lock = threading.Lock()


@dataclass(eq=False)
class Blocks:
    """One mask's block map at one size and tiling, and what is planned from it."""
    map: Tensor                                # (nQ, nK) int8: EMPTY / PARTIAL / FULL
    plans: dict = field(default_factory=dict)  # max_chunk -> the tiled kernel's plan
    mask: MaskSpec | None = None               # keeps the key's tensors (their ids) alive


class Uncacheable(Exception):
    """Raised by :func:`fingerprint` for objects whose value it cannot vouch for."""


def fingerprint(obj, content: bool = True):
    """A hashable description of a mask or bias spec: its type and public attributes,
    recursively. Tensors by metadata and, with ``content``, by value (up to 4096
    elements) or by identity and version counter (larger ones: an in-place change makes
    a new fingerprint; a cache holding the key must keep the tensor alive). Functions
    and other objects by identity (``content``: raises :class:`Uncacheable`, since what
    a function reads may change behind it)."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.dtype)):
        return obj
    if isinstance(obj, Tensor):
        meta = ("tensor", str(obj.dtype), tuple(obj.shape), obj.stride(), str(obj.device))
        if not content:
            return meta
        if obj.numel() <= 4096:
            return meta + (tuple(obj.flatten().tolist()),)
        try:
            return meta + (id(obj), obj._version)
        except RuntimeError:  # inference tensors have no version counter
            raise Uncacheable(obj) from None
    if isinstance(obj, (tuple, list)):
        return (type(obj).__name__,) + tuple(fingerprint(x, content) for x in obj)
    if isinstance(obj, (MaskSpec, BiasSpec)) and not getattr(obj, "opaque", False):
        state = sorted((k, v) for k, v in vars(obj).items() if not k.startswith("_"))
        return (type(obj).__module__, type(obj).__qualname__) + tuple(
            (k, fingerprint(v, content)) for k, v in state)
    if content:
        raise Uncacheable(obj)
    return ("id", id(obj))


def blocks_for(mask: MaskSpec, Tq: int, Tk: int, block_q: int, block_k: int) -> Blocks:
    """The cache entry of ``mask`` for a (Tq, Tk) problem at this tiling, computed on a
    miss; a fresh, uncached entry when the mask cannot be fingerprinted."""
    try:
        key = (fingerprint(mask), Tq, Tk, block_q, block_k)
    except Uncacheable:
        return Blocks(mask.block_map(Tq, Tk, block_q, block_k))
    with _lock:
        hit = _entries.get(key)
        if hit is not None:
            _entries.move_to_end(key)
            return hit
    entry = Blocks(mask.block_map(Tq, Tk, block_q, block_k), mask=mask)
    with _lock:
        _entries[key] = entry
        while len(_entries) > BLOCK_MAP_CACHE:
            _entries.popitem(last=False)
    return entry
