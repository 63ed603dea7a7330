"""One prepared GPU run for the ``triton`` backend (issue 17): about 5 minutes on an H100/H200.

Measures, in one process and one run:

* the bf16 GEMM throughput of this GPU (8192^3 matmul), the yardstick for "% of GEMM";
* dense causal attention, bf16, head dims 64 and 128, N = 1k..16k (B * N = 16k tokens,
  H * d = 2048), forward and forward+backward: torch SDPA (FlashAttention/cuDNN),
  compiled FlexAttention, attnkit ``triton``;
* causal window-256 and causal packed documents (``document(ids) & causal()``) at 16k,
  d 128: compiled FlexAttention and ``triton`` (SDPA with the dense mask as the
  correctness reference, timed too);
* TFLOP/s from the exact count of attended pairs (4 * d flops per pair forward,
  x 3.5 forward+backward), the fraction of the GEMM rate, median and spread (min-max)
  over repeats, and each output (and gradient) against SDPA's in the same run.

Masks are prepared once per workload, outside the timing, for every backend: Flex's
``create_block_mask``, SDPA's dense mask, and ``triton``'s lowering (``make_plan``: block
map, tile schedules, gathered tile masks), whose own time is reported per workload.
Prints a markdown table, writes JSON (``--out``). Without CUDA it refuses in one line;
``--dry-run`` runs the same code on CPU under the Triton interpreter with tiny shapes
(eager FlexAttention), to check the script, not to measure anything.

    python benchmarks/gpu.py --out bench-out/gpu.json
    python benchmarks/gpu.py --dry-run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

DRY = "--dry-run" in sys.argv
if DRY:  # before anything imports triton: the interpreter for every kernel
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import attnkit  # noqa: E402
import attnkit.backends.triton  # noqa: E402,F401  (registers "triton")
from attnkit import masks as M  # noqa: E402

TOL = {"fwd": 2e-2, "fwd+bwd": 5e-2}  # bf16 vs bf16 SDPA, normwise (max|x-ref| / max|ref|)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes")
    ap.add_argument("--n", default="1024,2048,4096,8192,16384", help="dense causal lengths")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--sparse-n", type=int, default=16384, help="length for window/document")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per point")
    ap.add_argument("--budget-s", type=float, default=280.0, help="skip points after this")
    ap.add_argument("--out", default="bench-out/gpu.json")
    a = ap.parse_args(argv)
    if a.dry_run:
        a.n, a.dims, a.sparse_n, a.window, a.repeats = "64", "32", 96, 16, 1
    return a


class Clock:
    """Median and spread of per-call times; CUDA events on the GPU, perf_counter on CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn, repeats: int, target_s: float = 0.05) -> tuple[float, float, float]:
        fn()
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        one = max(time.perf_counter() - t0, 1e-6)
        inner = max(1, min(50, int(target_s / one)))
        per = []
        for _ in range(repeats):
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                for _ in range(inner):
                    fn()
                b.record()
                torch.cuda.synchronize()
                per.append(a.elapsed_time(b) / 1e3 / inner)
            else:
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                per.append((time.perf_counter() - t0) / inner)
        return statistics.median(per), min(per), max(per)


def gemm_tflops(device, dtype, clock, dry) -> float:
    n = 256 if dry else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    med, _, _ = clock.time(lambda: a @ b, 3 if dry else 10)
    return 2 * n ** 3 / med / 1e12


# ---------------------------------------------------------------------------
# workloads: the attnkit spec, a FlexAttention mask_mod, the dense bool mask, pair count
# ---------------------------------------------------------------------------
def doc_ids(n: int, mean: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    lens, total = [], 0
    while total < n:
        ln = int(torch.randint(mean // 4, 2 * mean, (1,), generator=g))
        lens.append(min(ln, n - total))
        total += lens[-1]
    return torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens)).to(device), lens


def workload(kind: str, n: int, window: int, device):
    if kind == "causal":
        return (M.causal(), lambda b, h, q, k: q >= k, n * (n + 1) // 2, None)
    if kind == "window":
        w = window
        pairs = sum(min(i, w) + 1 for i in range(n))
        return (M.causal() & M.window(w), lambda b, h, q, k: (q >= k) & (q - k <= w), pairs, None)
    ids, lens = doc_ids(n, max(16, n // 8), device)
    pairs = sum(ln * (ln + 1) // 2 for ln in lens)
    return (M.document(ids) & M.causal(),
            lambda b, h, q, k: (q >= k) & (ids[q] == ids[k]), pairs, ids)


def make_runners(kind, spec, mask_mod, q, k, v, dry):
    """name -> f(q, k, v) -> out, for SDPA, FlexAttention and triton; triton's lowering ms."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from attnkit.kernels.triton.launch import make_plan, run_plan
    n, device = q.shape[2], q.device
    flex = flex_attention if dry else torch.compile(flex_attention)
    block_mask = create_block_mask(mask_mod, None, None, n, n, device=device)
    t0 = time.perf_counter()
    plan = make_plan(attnkit.make_call(q, k, v, mask=spec))
    if device.type == "cuda":
        torch.cuda.synchronize()
    lower_ms = (time.perf_counter() - t0) * 1e3
    dense = None if kind == "causal" else spec.dense(n, n, device=device)  # (1, 1, n, n)
    run = {
        "sdpa": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        if dense is None else (lambda q, k, v: F.scaled_dot_product_attention(q, k, v,
                                                                             attn_mask=dense)),
        "flex": lambda q, k, v: flex(q, k, v, block_mask=block_mask),
        "triton": lambda q, k, v: run_plan(plan, q, k, v)[0],
    }
    return run, lower_ms


def rel(x, ref) -> float:
    x, ref = x.detach().float(), ref.detach().float()
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-6))


def bench_point(kind, n, d, passes, a, device, dtype, clock, gemm, t_start, rows):
    B, H = (1, 2) if a.dry_run else (max(1, 16384 // n), 2048 // d)
    if kind != "causal":
        B = 1
    spec, mask_mod, pairs, _ = workload(kind, n, a.window, device)
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(B, H, n, d, device=device, dtype=dtype, generator=g).requires_grad_()
               for _ in range(3))
    dout = torch.randn(B, H, n, d, device=device, dtype=dtype, generator=g)
    runners, lower_ms = make_runners(kind, spec, mask_mod, q, k, v, a.dry_run)
    flops_fwd = 4.0 * d * pairs * B * H
    for ps in passes:
        ref = None
        results = {}
        for name, f in runners.items():
            row = dict(workload=kind, n=n, d=d, B=B, H=H, phase=ps, backend=name)
            if name == "triton":
                row["lowering_ms"] = lower_ms
            if time.perf_counter() - t_start > a.budget_s:
                row["skipped"] = f"time budget ({a.budget_s:.0f} s) spent"
                rows.append(row)
                continue
            if a.dry_run and name == "flex" and ps != "fwd":
                rows.append(dict(row, skipped="FlexAttention has no CPU backward (dry run)"))
                continue
            try:
                if ps == "fwd":
                    qd, kd, vd = q.detach(), k.detach(), v.detach()
                    with torch.no_grad():
                        out = f(qd, kd, vd)
                        fn = lambda: f(qd, kd, vd)  # noqa: E731
                    got = [out]
                else:
                    out = f(q, k, v)
                    got = [out, *torch.autograd.grad(out, (q, k, v), dout)]

                    def fn():
                        o = f(q, k, v)
                        torch.autograd.grad(o, (q, k, v), dout)
                if ps == "fwd":
                    with torch.no_grad():
                        med, lo, hi = clock.time(fn, a.repeats)
                else:
                    med, lo, hi = clock.time(fn, a.repeats)
            except Exception as e:  # a point that fails is reported, the run goes on
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                rows.append(row)
                continue
            if name == "sdpa":
                ref = got
            results[name] = med
            flops = flops_fwd * (1.0 if ps == "fwd" else 3.5)
            row.update(ms=med * 1e3, ms_min=lo * 1e3, ms_max=hi * 1e3, tflops=flops / med / 1e12)
            row["gemm_frac"] = row["tflops"] / gemm
            if ref is not None:
                row["err_vs_sdpa"] = max(rel(x, r) for x, r in zip(got, ref))
                row["ok"] = row["err_vs_sdpa"] < TOL[ps]
            rows.append(row)
        for row in rows[-len(runners):]:
            if "ms" in row:
                for other in ("sdpa", "flex"):
                    if other in results and other != row["backend"]:
                        row[f"x_{other}"] = results[other] / (row["ms"] / 1e3)


def table(rows, gemm) -> str:
    head = ("| workload | N | d | B×H | pass | backend | ms (median) | spread | TFLOP/s | % of GEMM "
            "| vs SDPA | vs flex | err vs SDPA |")
    out = [head, "|" + "---|" * 13]
    for r in rows:
        base = (f"| {r['workload']} | {r['n']} | {r['d']} | {r['B']}×{r['H']} | {r['phase']} "
                f"| {r['backend']} ")
        if "ms" not in r:
            out.append(base + f"| {r.get('skipped') or r.get('error')} |" + " |" * 6)
            continue
        x = lambda key: f"{r[key]:.2f}×" if key in r else "—"  # noqa: E731
        err = f"{r['err_vs_sdpa']:.1e}" + ("" if r.get("ok", True) else " ✗") \
            if "err_vs_sdpa" in r else "—"
        out.append(base + f"| {r['ms']:.3f} | {r['ms_min']:.3f}–{r['ms_max']:.3f} "
                   f"| {r['tflops']:.1f} | {100 * r['gemm_frac']:.0f}% | {x('x_sdpa')} "
                   f"| {x('x_flex')} | {err} |")
    out.append(f"\nbf16 GEMM in the same run: {gemm:.1f} TFLOP/s")
    return "\n".join(out)


def main(argv=None) -> int:
    a = parse(argv)
    if not a.dry_run and not torch.cuda.is_available():
        print("benchmarks/gpu.py: needs a CUDA GPU and none is visible (--dry-run checks the "
              "script on CPU under the Triton interpreter)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if not a.dry_run else "cpu")
    dtype = torch.bfloat16
    why = attnkit.backends.get_backend("triton").unsupported(attnkit.make_call(
        *(torch.zeros(1, 1, 16, 16, device=device, dtype=dtype),) * 3))
    if why:
        print(f"benchmarks/gpu.py: the triton backend cannot run here: {why}", file=sys.stderr)
        return 2
    if a.dry_run:
        torch.set_num_threads(1)
    dynamo = __import__("torch._dynamo", fromlist=["config"])
    for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):  # one compile per shape: never fall back
        if hasattr(dynamo.config, knob):
            setattr(dynamo.config, knob, 256)
    clock = Clock(device)
    t_start = time.perf_counter()
    gemm = gemm_tflops(device, dtype, clock, a.dry_run)
    rows: list[dict] = []
    # the points the targets name come first, so the time budget cuts the others:
    # window and documents at 16k, then dense causal from the largest head dim and N down
    dims = sorted(map(int, a.dims.split(",")), reverse=True)
    for kind in ("window", "document"):
        bench_point(kind, a.sparse_n, dims[0], ("fwd", "fwd+bwd"), a, device, dtype, clock,
                    gemm, t_start, rows)
    for d in dims:
        for n in sorted(map(int, a.n.split(",")), reverse=True):
            bench_point("causal", n, d, ("fwd", "fwd+bwd"), a, device, dtype, clock, gemm,
                        t_start, rows)
    order = {"causal": 0, "window": 1, "document": 2}
    rows.sort(key=lambda r: (order[r["workload"]], r["d"], r["n"], r["phase"]))
    try:
        import triton
        tv = triton.__version__
    except ImportError:  # pragma: no cover
        tv = None
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()} (dry run, Triton interpreter)"
    meta = dict(device=name, torch=torch.__version__, triton=tv, gemm_tflops=gemm,
                wall_s=time.perf_counter() - t_start, dry_run=a.dry_run)
    print(f"{name}; torch {torch.__version__}; triton {tv}; {meta['wall_s']:.0f} s")
    print(table(rows, gemm))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(dict(meta=meta, points=rows), f, indent=1)
    print(f"wrote {a.out}")
    bad = [r for r in rows if r.get("ok") is False or "error" in r]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
