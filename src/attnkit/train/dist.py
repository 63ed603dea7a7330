"""Data parallelism over torch.distributed, for ``torchrun -m attnkit.train``.

Every process builds the same model from the same seed and generates the same global
batch (tasks are pure functions of the step), then keeps its slice: rank r of P takes
rows ``[r * B/P, (r + 1) * B/P)``. Gradients are averaged by
:class:`~torch.nn.parallel.DistributedDataParallel`; the loss is divided by the
global count of scored targets, so a step equals the single-process step on the
whole batch up to the order of floating-point sums.

``attnkit adapt`` (:mod:`attnkit.adaptation.run`) uses the same environment without DDP:
each process computes its additive share of the global loss and :meth:`DistEnv.sum_grads`
sums the gradients explicitly (see there why).

Failure: the process group is created with a timeout (``--dist-timeout``, default
60 s), so a collective whose peer died raises instead of hanging; under torchrun the
agent also stops the surviving workers when one exits with an error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistEnv"]


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls, device: str, timeout_s: float) -> "DistEnv":
        """Single process unless torchrun (or the caller) set WORLD_SIZE > 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        dev = torch.device(device)
        if world <= 1:
            return cls(0, 1, dev)
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                    timeout=timedelta(seconds=timeout_s))
        return cls(dist.get_rank(), dist.get_world_size(), dev)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def check_batch(self, batch_size: int, option: str = "batch_size") -> None:
        """ValueError naming ``option`` unless ``batch_size`` splits evenly."""
        if batch_size % self.world:
            raise ValueError(f"{option}: expected a multiple of the {self.world} processes "
                             f"(each takes an equal slice of the global batch), got {batch_size}")

    def shard(self, batch: dict) -> dict:
        """This rank's rows of every tensor in ``batch`` (dim 0)."""
        if self.world == 1:
            return batch
        out = {}
        for k, v in batch.items():
            n = v.shape[0] // self.world
            out[k] = v[self.rank * n:(self.rank + 1) * n]
        return out

    def all_sum(self, t: Tensor) -> Tensor:
        if self.world > 1:
            t = t.to(self.device)
            dist.all_reduce(t)
            t = t.cpu()
        return t

    def sum_grads(self, params) -> None:
        """Sum the ``.grad`` of ``params`` over the processes, in place, one collective per
        dtype. For a loss that each process computes as its *additive share* of the global
        loss, the result is the global gradient on every process. Parameters without a
        gradient are skipped (the same ones on every process: the same graph runs on
        every process, on its rows)."""
        if self.world == 1:
            return
        by_dtype: dict = {}
        for p in params:
            if p.grad is not None:
                by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            for g, x in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(x.view_as(g))

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
