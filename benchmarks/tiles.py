"""Sweep ``TileConfig`` (block_q, block_k, max_chunk) of the tiled kernel on CPU.

For each workload (dense causal and causal window-256 (--window), B 1, H 8, D 64, fp32, forward
or --backward forward+backward) and each N, every configuration is timed in interleaved
rounds (each round runs every configuration once, in a rotated order, so a burst of
load from other processes hits all alike), in this one process with --threads torch
threads. Printed per configuration: wall time min / median / max over the rounds, the
median CPU time of the process (less sensitive to other processes' load), and the
median relative to the default configuration with its interval
[q1_cfg/q3_default, q3_cfg/q1_default] ("within noise" when it contains 1).

    python benchmarks/tiles.py                                  # the default sweep
    python benchmarks/tiles.py --n 16384 --modes window --block-q 32,64,128 --block-k 64
    python benchmarks/tiles.py --max-chunk 256,512,1024,2048 --block-q 64 --block-k 64
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time

import torch

from attention import machine  # the sibling script (benchmarks/ is on sys.path)


def ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise SystemExit(f"expected comma-separated integers, got {text!r}") from None


def quartiles(xs):
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="4096,16384", help="sequence lengths")
    ap.add_argument("--modes", default="causal,window", help="causal and/or window")
    ap.add_argument("--window", type=int, default=256, help="keys back of the window mode")
    ap.add_argument("--block-q", default="32,64,128,256")
    ap.add_argument("--block-k", default="32,64,128")
    ap.add_argument("--max-chunk", default="1024")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backward", action="store_true", help="time forward+backward")
    a = ap.parse_args(argv)
    from attnkit import masks as M
    from attnkit.call import make_call
    from attnkit.kernels.tiled import tiled_attention
    from attnkit.kernels.tiles import TileConfig

    torch.set_num_threads(a.threads)
    default = TileConfig()
    cfgs = [TileConfig(bq, bk, mc) for bq, bk, mc in itertools.product(
        ints(a.block_q), ints(a.block_k), ints(a.max_chunk)) if mc >= bk]
    if default not in cfgs:
        cfgs.insert(0, default)
    print(f"# {machine()}; {a.threads} thread(s); B=1 H=8 D=64 fp32; "
          f"{'forward+backward' if a.backward else 'forward'}; {a.rounds} interleaved rounds; "
          f"default {default}; load average {os.getloadavg()[0]:.2f}", flush=True)
    for mode in a.modes.split(","):
        mask = {"causal": M.causal(), "window": M.causal() & M.window(a.window)}.get(mode)
        if mask is None:
            raise SystemExit(f"--modes: expected causal and/or window, got {mode!r}")
        for n in ints(a.n):
            g = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(1, 8, n, 64, generator=g, requires_grad=a.backward)
                       for _ in range(3))

            def once(cfg):
                t0, c0 = time.perf_counter(), time.process_time()
                with torch.set_grad_enabled(a.backward):
                    out = tiled_attention(make_call(q, k, v, mask=mask), cfg)[0]
                    if a.backward:
                        out.backward(torch.ones_like(out))
                        for t in (q, k, v):
                            t.grad = None
                return time.perf_counter() - t0, time.process_time() - c0

            for cfg in cfgs:  # warm-up (and block maps cached), not counted
                once(cfg)
            wall = {c: [] for c in cfgs}
            cpu = {c: [] for c in cfgs}
            for r in range(a.rounds):
                for c in cfgs[r % len(cfgs):] + cfgs[:r % len(cfgs)]:
                    w, p = once(c)
                    wall[c].append(w)
                    cpu[c].append(p)
            d1, d3 = quartiles(wall[default])
            dmed = statistics.median(wall[default])
            what = f"window-{a.window}" if mode == "window" else mode
            print(f"\n{what}, N={n}\n\n| block_q | block_k | max_chunk | wall min / median / max (s) "
                  "| CPU median (s) | vs default (interval) |\n|---:|---:|---:|---:|---:|---|")
            for c in sorted(cfgs, key=lambda c: statistics.median(wall[c])):
                x = wall[c]
                c1, c3 = quartiles(x)
                ratio, lo, hi = statistics.median(x) / dmed, c1 / d3, c3 / d1
                note = "default" if c == default else (
                    "within noise" if lo <= 1 <= hi else ("faster" if hi < 1 else "slower"))
                print(f"| {c.block_q} | {c.block_k} | {c.max_chunk} | {min(x):.4f} / "
                      f"{statistics.median(x):.4f} / {max(x):.4f} | "
                      f"{statistics.median(cpu[c]):.4f} | {ratio:.3f} ({lo:.2f}–{hi:.2f}) {note} |",
                      flush=True)
    print(f"\n# load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
