"""One measured point per process: ``attention_point`` times one backend on one workload.

Called through :func:`attnkit.bench.measure.run_isolated`, so each point's peak
memory is its own.
"""
from __future__ import annotations

import torch

from .. import masks as M
from ..backends import get_backend
from ..engine.functional import make_call, select_backend
from .measure import PeakMemory, timed

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          "fp64": torch.float64}


def workload_mask(mode: str, window: int = 256):
    """``dense`` (no mask), ``causal``, or ``window`` (causal, ``window`` keys back)."""
    if mode == "dense":
        return None
    if mode == "causal":
        return M.causal()
    if mode == "window":
        return M.causal() & M.window(window)
    raise ValueError(f"mode: expected 'dense', 'causal' or 'window', got {mode!r}")


def attention_point(*, backend: str, n: int, mode: str, backward: bool = False, batch: int = 1,
                    heads: int = 8, kv_heads: int | None = None, head_dim: int = 64,
                    dtype: str = "fp32", device: str = "cpu", window: int = 256,
                    repeats: int = 3, budget_s: float = 60.0, seed: int = 0) -> dict:
    """Median time and peak extra memory of one backend on one workload."""
    torch.manual_seed(seed)
    dt = DTYPES[dtype]
    kvh = kv_heads or heads
    q = torch.randn(batch, heads, n, head_dim, device=device, dtype=dt, requires_grad=backward)
    k = torch.randn(batch, kvh, n, head_dim, device=device, dtype=dt, requires_grad=backward)
    v = torch.randn(batch, kvh, n, head_dim, device=device, dtype=dt, requires_grad=backward)
    mask = workload_mask(mode, window)
    call = make_call(q, k, v, mask=mask)
    name = backend
    if backend == "auto":
        name, _ = select_backend(call)
    be = get_backend(name)
    why = be.unsupported(call)
    if why:
        return {"skipped": why, "served_by": name}

    def step():
        out = be.forward(make_call(q, k, v, mask=mask))
        if backward:
            out.backward(torch.ones_like(out))
            q.grad = k.grad = v.grad = None

    if name == "flex":  # compile outside the measurement
        step()
    with PeakMemory(device) as pm:  # first (or first compiled) call: warm-up and memory
        step()
    t = timed(step, repeats=repeats, warmup=0, device=device, budget_s=budget_s)
    return {**t, "peak_bytes": pm.peak_bytes, "memory_method": pm.method, "served_by": name}
