"""Backends side by side: time and peak memory per N, causal and causal window-256.

Each point runs in its own process. Ratios are SDPA's *causal* kernel time at the
same N divided by the backend's time (> 1 = faster than SDPA causal), measured in
the same run, forward and (with --backward) forward+backward.

    python benchmarks/attention.py                       # the issue's grid (long on CPU)
    python benchmarks/attention.py --n 1024,4096 --modes causal --backends sdpa,tiled
    python benchmarks/attention.py --backward --n 8192 --out bench-out
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

from attnkit.bench.measure import run_isolated

HERE = os.path.dirname(os.path.abspath(__file__))


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def skip_reason(backend: str, n: int, mode: str, backward: bool, mem_budget: float) -> str | None:
    """Points we know in advance are out of budget on this kind of machine."""
    if backend == "reference" and 8 * n * n * 4 * 3 > mem_budget:
        return f"reference needs ~{8 * n * n * 12 / 2**30:.0f} GiB of scores/weights"
    if backend == "sdpa" and mode == "window" and n > 16384:
        return "SDPA has no sparse kernel: dense N x N mask and full N^2 compute"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="1024,4096,16384,65536", help="sequence lengths, comma separated")
    ap.add_argument("--backends", default="auto,sdpa,tiled,flex,reference")
    ap.add_argument("--modes", default="causal,window", help="causal and/or window (causal, 256 back)")
    ap.add_argument("--backward", action="store_true", help="time forward+backward")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per point")
    ap.add_argument("--mem-budget-gb", type=float, default=16)
    ap.add_argument("--out", help="directory for results.json and results.md")
    a = ap.parse_args(argv)
    ns = [int(x) for x in a.n.split(",")]
    backends = a.backends.split(",")
    modes = a.modes.split(",")
    rows = []

    def point(backend, n, mode):
        why = skip_reason(backend, n, mode, a.backward, a.mem_budget_gb * 2**30)
        if why:
            return {"skipped": why}
        kw = dict(backend=backend, n=n, mode=mode, backward=a.backward, heads=a.heads,
                  head_dim=a.head_dim, device=a.device, repeats=a.repeats)
        return run_isolated("attnkit.bench.points:attention_point", kw, timeout=a.timeout)

    print(f"machine: {machine()}; B=1 H={a.heads} D={a.head_dim} fp32, "
          f"{'forward+backward' if a.backward else 'forward'}", flush=True)
    for n in ns:
        base = point("sdpa", n, "causal")
        for mode in modes:
            for backend in backends:
                r = base if (backend == "sdpa" and mode == "causal") else point(backend, n, mode)
                row = {"backend": backend, "mode": mode, "n": n, **r}
                if "median_s" in r and "median_s" in base:
                    row["speedup_vs_sdpa_causal"] = base["median_s"] / r["median_s"]
                rows.append(row)
                print(fmt(row), flush=True)
    table = markdown(rows, a)
    print("\n" + table)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump({"machine": machine(), "args": vars(a), "rows": rows}, f, indent=1)
        with open(os.path.join(a.out, "results.md"), "w") as f:
            f.write(table + "\n")
    return 0


def fmt(r) -> str:
    head = f"{r['backend']:>9} {r['mode']:>6} N={r['n']:>6}"
    if "median_s" in r:
        mem = r.get("peak_bytes")
        mem = f"{mem / 2**20:8.1f} MiB" if mem is not None else "       ?"
        sp = r.get("speedup_vs_sdpa_causal")
        via = f" (via {r['served_by']})" if r.get("served_by") != r["backend"] else ""
        return f"{head} {r['median_s']:9.4f} s  x{sp:6.2f} vs SDPA causal  peak +{mem}{via}"
    return f"{head}  -- {r.get('skipped') or r.get('error')}"


def markdown(rows, a) -> str:
    lines = [f"Machine: {machine()}. B=1, H={a.heads}, D={a.head_dim}, fp32, "
             f"{'forward+backward' if a.backward else 'forward'}; median of up to {a.repeats}.",
             "", "| backend | mask | N | time (s) | speed vs SDPA causal | peak extra memory |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        mask = "causal" if r["mode"] == "causal" else "causal window-256"
        if "median_s" in r:
            mem = r.get("peak_bytes")
            mem = f"{mem / 2**20:.0f} MiB" if mem is not None else "?"
            lines.append(f"| {r['backend']} | {mask} | {r['n']} | {r['median_s']:.4f} | "
                         f"{r['speedup_vs_sdpa_causal']:.2f}x | {mem} |")
        else:
            lines.append(f"| {r['backend']} | {mask} | {r['n']} | — | — | "
                         f"{r.get('skipped') or r.get('error')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
