"""Measurement primitives shared by ``benchmarks/`` and ``attnkit bench``.

* :func:`timed` -- median wall time of repeats after warm-up (synchronising CUDA).
* :class:`PeakMemory` -- peak *extra* memory of a block: CUDA's allocator peak on GPU;
  on CPU the process high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``)
  minus the resident size before the block.
* :func:`run_isolated` -- run ``module:function(**kwargs)`` in a fresh Python process
  (so one measurement's memory never pollutes another's) and return its JSON result.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch

__all__ = ["timed", "PeakMemory", "run_isolated", "sync"]


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], *, repeats: int = 3, warmup: int = 1, device="cpu",
          budget_s: float | None = None) -> dict:
    """Median/min seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs.
    With ``budget_s``, stops repeating once that much time has been spent (>= 1 run)."""
    for _ in range(warmup):
        fn()
        sync(device)
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.peak_bytes`` (extra over the start)."""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.peak_bytes: int | None = None
        self.method = ""

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated"
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset the high-water mark to the current RSS
                self.method = "VmHWM after clear_refs"
            except OSError:
                self.method = "VmHWM (not resettable: upper bound)"
            self._start = (_status_kb("VmRSS") or 0) * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._start
        else:
            hwm = _status_kb("VmHWM")
            self.peak_bytes = None if hwm is None else max(0, hwm * 1024 - self._start)
        return False


def run_isolated(target: str, kwargs: dict, *, timeout: float | None = None) -> dict:
    """Run ``target`` ("package.module:function") with ``kwargs`` in a new interpreter.

    The function must return a JSON-serialisable dict. Errors and time-outs come back
    as ``{"error": "..."}`` so a sweep can report them and go on.
    """
    code = ("import json, sys, importlib; mod, fn = sys.argv[1].split(':'); "
            "res = getattr(importlib.import_module(mod), fn)(**json.loads(sys.argv[2])); "
            "print('@@RESULT@@' + json.dumps(res))")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    try:
        proc = subprocess.run([sys.executable, "-c", code, target, json.dumps(kwargs)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail}"}
