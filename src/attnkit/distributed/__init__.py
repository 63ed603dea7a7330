"""Context parallelism: one sequence split across processes (ring attention).

Each rank holds a shard of the sequence; K/V shards travel around a ring of
``torch.distributed`` point-to-point ops while every rank computes on the shard
it holds, and partial results merge exactly by log-sum-exp. Memory per rank is
O(T / P); causal work is balanced by the ``zigzag`` layout.

    import torch.distributed as dist
    from datetime import timedelta
    from attnkit.distributed import ring_attention, shard, unshard

    dist.init_process_group("gloo", timeout=timedelta(seconds=60))   # "nccl" on GPUs
    r, P = dist.get_rank(), dist.get_world_size()
    q, k, v = (shard(t, r, P, "zigzag") for t in (Q, K, V))          # (B, H, T/P, D)
    out = ring_attention(q, k, v, causal=True, layout="zigzag", length=Q.shape[2])

Always pass a ``timeout`` to ``init_process_group``: if a rank dies or hangs, the
others then fail with an error within it instead of waiting forever.

Models: ``context_parallel(model)`` shards the input along the sequence, runs the
model with every attention call on the ``ring`` backend (``use_backends("ring",
override=True)``; registered for ``attention(..., backend="ring")``), the global
positions passed as ``position_ids``, and returns the local output; see :mod:`.parallel`.

GPUs with NCCL (one process per GPU)::

    torchrun --standalone --nproc-per-node=4 train.py
    # in train.py:
    dist.init_process_group("nccl", timeout=timedelta(seconds=120))
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    # shards on torch.device("cuda", LOCAL_RANK); ring_attention as above

NCCL batches each step's sends and receives (``batch_isend_irecv``) and runs them
on its own stream, so they overlap the step's compute. Multi-node: use
``torchrun --nnodes=N --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT ...``. The
benchmark: ``torchrun --standalone --nproc-per-node=P benchmarks/ring.py --worker
--backend nccl --layouts zigzag`` (or ``python benchmarks/ring.py --backend nccl
--procs 1,2,4`` to sweep P; one GPU per process).
"""
from .backend import RingBackend, RingContext, local_positions, ring_context
from .parallel import ContextParallel, context_parallel
from .ring import ShiftedMask, ring_attention, ring_work
from .sharding import LAYOUTS, padded_length, positions, segments, shard, unshard

__all__ = ["ring_attention", "ring_work", "ShiftedMask", "shard", "unshard", "positions",
           "segments", "padded_length", "LAYOUTS", "context_parallel", "ContextParallel",
           "ring_context", "RingContext", "local_positions", "RingBackend"]
