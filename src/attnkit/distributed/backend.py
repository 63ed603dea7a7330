"""The ``ring`` backend: ``attention(q, k, v, mask=causal(), backend="ring")`` on local
shards runs :func:`~attnkit.distributed.ring_attention` on a process group (registered
when this module is imported; ``attnkit.get_backend("ring")`` imports it on first use).

The mask is read at *global* positions; the global length, layout and group come from
the active :func:`ring_context` (default: no padding, ``zigzag``, the world group).
:func:`local_positions` gives a model the global positions of its shard.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch.distributed as dist
from torch import Tensor

from ..backends.base import Backend, register_backend
from ..call import AttentionCall
from .ring import ring_attention
from .sharding import _check_layout, positions

__all__ = ["RingBackend", "RingContext", "ring_context", "local_positions", "current_context"]


@dataclass(frozen=True)
class RingContext:
    length: int | None = None   # global (unpadded) length; None: T_local * world
    layout: str = "zigzag"
    group: object = None        # process group; None: the world


_state = threading.local()


def current_context() -> RingContext:
    return getattr(_state, "ctx", None) or RingContext()


@contextlib.contextmanager
def ring_context(*, length: int | None = None, layout: str = "zigzag", group=None):
    """Within the block, the ``ring`` backend uses this global length, layout and group."""
    _check_layout(layout)
    old = getattr(_state, "ctx", None)
    _state.ctx = RingContext(length, layout, group)
    try:
        yield _state.ctx
    finally:
        _state.ctx = old


def local_positions(t_local: int | None = None, *, device=None,
                    clamp: bool = False) -> Tensor | None:
    """Global positions (int64 ``(T_local,)``; padding ``>= length``) of this rank's shard
    under the active :func:`ring_context`, or None outside one -- so a model can write
    ``pos = local_positions(T) ; pos = torch.arange(T) if pos is None else pos``.
    ``clamp=True`` maps padding positions to ``length - 1`` (they are masked anyway), so
    they index position tables safely."""
    ctx = getattr(_state, "ctx", None)
    if ctx is None:
        return None
    world, rank = dist.get_world_size(ctx.group), dist.get_rank(ctx.group)
    length = ctx.length
    if length is None:
        if t_local is None:
            raise ValueError("t_local: needed when the ring context has no length, got None")
        length = t_local * world
    pos = positions(rank, world, length, ctx.layout, device=device)
    return pos.clamp_max(length - 1) if clamp else pos


class RingBackend(Backend):
    name = "ring"
    description = "ring attention across the ranks of a torch.distributed group (masks global)"

    def unsupported(self, call: AttentionCall) -> str | None:
        if not dist.is_available() or not dist.is_initialized():
            return "torch.distributed is not initialised (no process group)"
        if call.dropout_p > 0:
            return "dropout is not supported"
        if call.bias is not None:
            return "biases (ALiBi, tensors, additive masks) are not supported"
        if call.Tq != call.Tk:
            return f"q and k shards must have the same length, got Tq={call.Tq}, Tk={call.Tk}"
        return None

    def forward(self, call: AttentionCall) -> Tensor:
        ctx = current_context()
        return ring_attention(call.q, call.k, call.v, group=ctx.group, mask=call.mask,
                              layout=ctx.layout, length=ctx.length, scale=call.scale,
                              softcap=call.softcap)


register_backend(RingBackend(), replace=True)


