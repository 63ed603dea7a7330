"""Running a model's attention context-parallel: the ``ring`` backend and a wrapper.

* ``attention(q, k, v, mask=causal(), backend="ring")`` on local shards runs
  :func:`ring_attention` on the default group (registered when
  ``attnkit.distributed`` is imported). The mask is read at *global* positions;
  the global length, layout and group come from the active :func:`ring_context`
  (default: no padding, ``zigzag``, the world group).
* :func:`context_parallel` wraps a module: it shards the input along the
  sequence, sets every submodule's ``backend`` attribute (as attnkit's
  attention modules have) to ``"ring"`` for the call, and runs it inside a
  :func:`ring_context`. The output is the local shard; :meth:`ContextParallel.gather`
  rebuilds the full sequence; :meth:`ContextParallel.reduce_gradients` sums the
  parameter gradients over the group (each rank holds its tokens' share).

Position embeddings: a model that builds positions with ``arange(T)`` must take
them from :func:`local_positions` instead (the global positions of its shard;
None outside a ring context, so the same code runs single-process).
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..backends.base import AttentionCall, Backend, register_backend
from .ring import ring_attention
from .sharding import _check_layout, positions, shard, unshard

__all__ = ["RingBackend", "RingContext", "ring_context", "local_positions", "context_parallel",
           "ContextParallel"]


@dataclass(frozen=True)
class RingContext:
    length: int | None = None   # global (unpadded) length; None: T_local * world
    layout: str = "zigzag"
    group: object = None        # process group; None: the world


_state = threading.local()


def _current() -> RingContext:
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
        ctx = _current()
        return ring_attention(call.q, call.k, call.v, group=ctx.group, mask=call.mask,
                              layout=ctx.layout, length=ctx.length, scale=call.scale,
                              softcap=call.softcap)


register_backend(RingBackend(), replace=True)


class ContextParallel(nn.Module):
    """``module`` run on this rank's shard of the sequence, its attention on the ring."""

    def __init__(self, module: nn.Module, *, layout: str = "zigzag", group=None,
                 seq_dim: int = 1):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
        self.module, self.layout, self.group = module, _check_layout(layout), group
        self.seq_dim = seq_dim
        self.length: int | None = None  # of the last input

    def forward(self, x: Tensor, *args, **kwargs):
        """``x``: the full input (same on every rank), sequence along ``seq_dim``;
        returns the module's output on the local shard (sequence along ``seq_dim``)."""
        if not dist.is_initialized():
            raise RuntimeError("ContextParallel: torch.distributed is not initialised")
        world, rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        self.length = x.shape[self.seq_dim]
        x_local = shard(x, rank, world, self.layout, dim=self.seq_dim)
        mods = [m for m in self.module.modules() if isinstance(getattr(m, "backend", None), str)]
        old = [m.backend for m in mods]
        try:
            for m in mods:
                m.backend = "ring"
            with ring_context(length=self.length, layout=self.layout, group=self.group):
                return self.module(x_local, *args, **kwargs)
        finally:
            for m, b in zip(mods, old):
                m.backend = b

    def positions(self, *, device=None) -> Tensor:
        """Global positions of the local shard of the last input (padded ones >= length)."""
        world, rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        return positions(rank, world, self.length, self.layout, device=device)

    def valid(self, *, device=None) -> Tensor:
        """Bool ``(T_local,)``: which local entries are real (not padding)."""
        return self.positions(device=device) < self.length

    def gather(self, y: Tensor, *, dim: int | None = None) -> Tensor:
        """The full (unpadded) sequence from every rank's local output (not differentiable)."""
        dim = self.seq_dim if dim is None else dim
        world = dist.get_world_size(self.group)
        parts = [torch.empty_like(y) for _ in range(world)]
        dist.all_gather(parts, y.detach().contiguous(), group=self.group)
        return unshard(parts, self.layout, length=self.length, dim=dim)

    def reduce_gradients(self) -> None:
        """Sum parameter gradients over the group (each rank computed its tokens' share)."""
        for p in self.module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, group=self.group)


def context_parallel(module: nn.Module, *, layout: str = "zigzag", group=None,
                     seq_dim: int = 1) -> ContextParallel:
    """Wrap ``module`` so its attention runs context-parallel (see :class:`ContextParallel`)."""
    return ContextParallel(module, layout=layout, group=group, seq_dim=seq_dim)

