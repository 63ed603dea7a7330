"""Ring attention at a fixed total length over P = 1, 2, 4 processes.

Per P: wall time of one causal forward+backward, and peak extra memory per rank
(inputs, grads and working buffers; VmHWM on CPU, CUDA allocator peak on GPU),
which should fall ~1/P. Load balance of the causal mask, contiguous vs zigzag:
tiles each rank computes (the plan ``ring_attention`` runs, from ``ring_work``)
and measured kernel-busy seconds per rank; max/min per layout.

    python benchmarks/ring.py                                 # gloo on CPU, P = 1, 2, 4
    python benchmarks/ring.py --length 16384 --procs 1,2 --json out.json
    python benchmarks/ring.py --exact-rss          # tighter CPU memory numbers, slower
    # GPUs (NCCL), one process per GPU, one P per launch:
    torchrun --standalone --nproc-per-node=4 benchmarks/ring.py --worker --backend nccl \
        --layouts zigzag --length 131072

Each rank runs ``--threads`` CPU threads (default 1): on a CPU with fewer cores
than P x threads the times are oversubscribed; tiles and memory are not affected.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from attnkit.bench.measure import PeakMemory
from attnkit.distributed import ring, ring_attention, ring_work


def worker(args) -> None:
    """One rank (env:// rendezvous, as torchrun sets it); rank 0 prints a JSON line."""
    dist.init_process_group(args.backend, timeout=timedelta(seconds=300))
    rank, P = dist.get_rank(), dist.get_world_size()
    if args.backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    layout = args.layouts.split(",")[0]  # one measurement per process
    busy = [0.0]

    class Timed(ring._Run):  # kernel-busy seconds of this rank (compute only, no waiting)
        def forward(self, *a):
            t0 = time.perf_counter()
            try:
                return super().forward(*a)
            finally:
                busy[0] += time.perf_counter() - t0

        def backward(self, *a):
            t0 = time.perf_counter()
            try:
                return super().backward(*a)
            finally:
                busy[0] += time.perf_counter() - t0

    ring._Run = Timed

    def step(T_local, layout):
        B, H, Hkv, D = 1, args.heads, args.kv_heads, args.dim
        q = torch.randn(B, H, T_local, D, device=device, dtype=dtype, requires_grad=True)
        k = torch.randn(B, Hkv, T_local, D, device=device, dtype=dtype, requires_grad=True)
        v = torch.randn(B, Hkv, T_local, D, device=device, dtype=dtype, requires_grad=True)
        ring_attention(q, k, v, causal=True, layout=layout).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step(2 * P, "zigzag")  # warm-up: lazy imports, first-call costs
    dist.barrier()
    busy[0] = 0.0
    with PeakMemory(device) as pm:  # one measurement per process: freed heap is not reset
        t0 = time.perf_counter()
        step(args.length // P, layout)
        wall = time.perf_counter() - t0
    rows = [dict(layout=layout, rank=rank, wall_s=wall, busy_s=busy[0],
                 peak_mib=pm.peak_bytes / 2**20, mem_method=pm.method)]
    everyone = [None] * P
    dist.all_gather_object(everyone, rows)
    if rank == 0:
        for r in (r for rs in everyone for r in rs):
            print(f"P={P} {layout} T={args.length} rank {r['rank']}: wall {r['wall_s']:.3f} s, "
                  f"busy {r['busy_s']:.3f} s, peak {r['peak_mib']:.1f} MiB ({r['mem_method']})")
        print("@@RESULT@@" + json.dumps([r for rs in everyone for r in rs]), flush=True)
    dist.destroy_process_group()


def launch(P: int, layout: str, args) -> list[dict]:
    """P local processes of this script in --worker mode (a minimal torchrun)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, os.path.abspath(__file__), "--worker", f"--layouts={layout}"] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
        if k not in ("worker", "procs", "json", "layouts", "exact_rss")]
    procs = []
    for r in range(P):
        env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(P),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        if args.exact_rss:  # glibc: mmap (and unmap on free) every block >= 1 MiB
            env["MALLOC_MMAP_THRESHOLD_"] = str(2**20)
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"P={P}: a rank failed (exit codes {[p.returncode for p in procs]})")
    line = next(l for l in outs[0].splitlines() if l.startswith("@@RESULT@@"))
    return json.loads(line[len("@@RESULT@@"):])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=8192, help="total sequence length")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--procs", default="1,2,4", help="process counts to sweep")
    ap.add_argument("--layouts", default="zigzag,contiguous",
                    help="layouts to sweep (--worker: the one layout to run)")
    ap.add_argument("--backend", default="gloo", help="gloo (CPU) or nccl (GPU)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per rank")
    ap.add_argument("--exact-rss", action="store_true",
                    help="CPU: return freed tensors to the OS at once (glibc's heap otherwise "
                         "keeps freed blocks, inflating VmHWM by tens of MiB; slower)")
    ap.add_argument("--worker", action="store_true", help="run as one rank (torchrun)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    print(f"causal, B=1 H={args.heads} Hkv={args.kv_heads} D={args.dim} T={args.length} "
          f"{args.dtype}, {args.backend}, {args.threads} thread(s)/rank, {os.cpu_count()} CPU "
          f"cores, torch {torch.__version__}")
    all_rows = []
    print(f"{'P':>2} {'layout':<10} {'wall s':>7} {'peak MiB/rank (max)':>20} "
          f"{'busy s per rank':<28} {'busy max/min':>12} {'tiles per rank':<26} {'max/min':>7}")
    for P in map(int, args.procs.split(",")):
        for layout in args.layouts.split(",")[:1 if P == 1 else None]:  # P=1: one layout
            rs = sorted(launch(P, layout, args), key=lambda r: r["rank"])
            work = ring_work(args.length, P, layout, causal=True)
            tiles = [w["tiles"] for w in work]
            busy = [r["busy_s"] for r in rs]
            print(f"{P:>2} {layout:<10} {max(r['wall_s'] for r in rs):>7.2f} "
                  f"{max(r['peak_mib'] for r in rs):>20.1f} "
                  f"{' '.join(f'{b:.2f}' for b in busy):<28} {max(busy) / min(busy):>12.2f} "
                  f"{' '.join(map(str, tiles)):<26} {max(tiles) / min(tiles):>7.2f}")
            all_rows += [dict(r, P=P, tiles=w["tiles"], pairs=w["pairs"])
                         for r, w in zip(rs, work)]
    print(f"memory: {all_rows[0]['mem_method']}{' (exact-rss)' if args.exact_rss else ''}; "
          "wall: one forward+backward, slowest rank")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_rows, f, indent=1)


if __name__ == "__main__":
    main()
