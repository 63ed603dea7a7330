"""Running a model context-parallel: :func:`context_parallel` wraps a module.

It shards the input along the sequence and runs the module on the local shard with
every attention call on the ``ring`` backend (``attnkit.use_backends("ring",
override=True)`` -- the modules themselves are not touched) inside a
:func:`~attnkit.distributed.ring_context`. A module whose ``forward`` takes
``position_ids`` (attnkit's GPT and BERT, Hugging Face models) receives the global
positions of its shard, so learned and rotary positions are those of the full
sequence. The output is the local shard; :meth:`ContextParallel.gather` rebuilds the
full sequence; :meth:`ContextParallel.reduce_gradients` sums the parameter gradients
over the group (each rank holds its tokens' share).
"""
from __future__ import annotations

import inspect

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..backends.selection import use_backends
from .backend import ring_context
from .sharding import _check_layout, positions, shard, unshard

__all__ = ["context_parallel", "ContextParallel"]


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
        if "position_ids" in inspect.signature(self.module.forward).parameters and \
                "position_ids" not in kwargs:  # padding positions: the last real one (masked)
            kwargs["position_ids"] = self.positions(device=x.device).clamp_max(self.length - 1)
        with use_backends("ring", override=True), \
                ring_context(length=self.length, layout=self.layout, group=self.group):
            return self.module(x_local, *args, **kwargs)

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

