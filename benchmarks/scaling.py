"""Scaling of attention variants with sequence length: time, peak memory, exponents.

For N = --min-n, 2*min-n, ..., --max-n and every variant (dense SDPA, sparse patterns via
attnkit.sparse_attention, linear attention), each point runs in its own
subprocess: inputs (B, H, N, D) float32 are allocated, then one warm-up call and
>= --repeats timed calls (more while under 0.3 s in total); the time is their median.
Peak memory: on CPU the growth of ru_maxrss after the inputs were allocated (the
process's high-water mark, so import-time peaks can hide small values), on CUDA
torch.cuda.max_memory_allocated minus the inputs. A point is skipped, with the reason,
when extrapolating the variant's previous points predicts more than --budget-s seconds
or --budget-mb of memory, or when the subprocess exceeds its time limit.

The exponent of each variant is the least-squares slope of log(time) vs log(N) over
its measured points ("tail": over the last three only, where fixed overheads matter
least). Targets: dense ~ 2.0, strided/fixed ~ 1.5, window-like and linear <= 1.1,
log-sparse ~ 1 (n log n).

    python benchmarks/scaling.py --out bench-out/scaling --max-n 16384          # forward only
    python benchmarks/scaling.py --out bench-out/scaling-bwd --backward --max-n 8192

Writes DIR/scaling.json, DIR/scaling.md and DIR/scaling.png (log-log, matplotlib Agg).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

B, H, D = 1, 4, 64

# name: (variant (attnkit.engine.variants grammar), causal, description, target exponent)
VARIANTS = {
    "dense": ("dense", False, "softmax, no mask, torch SDPA", "~2.0"),
    "dense-causal": ("dense", True, "softmax, causal, torch SDPA", "~2.0"),
    "local": ("window:256", True, "window(256), causal", "<=1.1"),
    "strided": ("strided", True, "strided(isqrt(N))", "~1.5"),
    "fixed": ("fixed", True, "fixed(isqrt(N), summary=1)", "~1.5"),
    "dilated": ("dilated:64:4", True, "dilated(64, 4), causal", "<=1.1"),
    "longformer": ("longformer:128:2", False, "longformer(128, globals=2)", "<=1.1"),
    "bigbird": ("bigbird:64", False, "bigbird(block=64, window=1, globals=1, random=2)", "<=1.1"),
    "log-sparse": ("logsparse", True, "log_sparse(), causal", "~1.0 (n log n)"),
    "linear-elu": ("linear:elu", False, "linear elu+1, non-causal", "<=1.1"),
    "linear-elu-causal": ("linear:elu", True, "linear elu+1, causal, chunk 64", "<=1.1"),
    "linear-favor-causal": ("linear:favor:64", True,
                            "linear FAVOR+ (64 features), causal, chunk 64", "<=1.1"),
}


def build(name: str, n: int):
    """fn(q, k, v) -> out for variant ``name`` at length n, and its pair count (or None)."""
    from attnkit.engine.variants import parse_variant
    if name not in VARIANTS:
        raise ValueError(f"variant: expected one of {list(VARIANTS)}, got {name!r}")
    text, causal = VARIANTS[name][:2]
    v = parse_variant(text)
    return (lambda q, k, v_: v.attend(q, k, v_, causal=causal)), v.pairs(n, causal)


# ---------------------------------------------------------------------------
# one point, in a subprocess
# ---------------------------------------------------------------------------
def worker(name: str, n: int, backward: bool, repeats: int, threads: int, device: str) -> dict:
    import torch
    torch.set_num_threads(threads)
    fn, pairs = build(name, n)
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(B, H, n, D, generator=g, device=device) for _ in range(3))
    dout = torch.randn(B, H, n, D, generator=g, device=device) if backward else None
    if backward:
        for t in (q, k, v):
            t.requires_grad_()
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def once():
        sync()
        t0 = time.perf_counter()
        if backward:
            fn(q, k, v).backward(dout)
            for t in (q, k, v):
                t.grad = None
        else:
            with torch.inference_mode():
                fn(q, k, v)
        sync()
        return time.perf_counter() - t0

    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    once()                                                     # warm-up, not counted
    times = []
    while len(times) < repeats or (sum(times) < 0.3 and len(times) < 20):
        times.append(once())
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return {"variant": name, "n": n, "time_s": statistics.median(times), "times": times,
            "peak_mb": peak, "pairs": pairs}


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------
def slope(xs, ys) -> float | None:
    """Least-squares slope of log(y) against log(x)."""
    if len(xs) < 2:
        return None
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-12)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx


def predict(points, n, key, default_exp):
    """Extrapolate ``key`` to n from the variant's last measured points."""
    if not points:
        return None
    e = slope([p["n"] for p in points[-2:]], [p[key] for p in points[-2:]]) or default_exp
    e = max(e, default_exp if key == "time_s" else 0.0)
    last = points[-1]
    return last[key] * (n / last["n"]) ** e


def run_point(args, name, n):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, str(n),
           "--repeats", str(args.repeats), "--threads", str(args.threads),
           "--device", args.device] + (["--backward"] if args.backward else [])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.point_timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"subprocess exceeded {args.point_timeout_s} s"
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"failed (rc={r.returncode}): {tail}"
    return json.loads(r.stdout.strip().splitlines()[-1]), None


def drive(args):
    ns = []
    n = args.min_n
    while n <= args.max_n:
        ns.append(n)
        n *= 2
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    for name in names:
        if name not in VARIANTS:
            raise SystemExit(f"--variants: unknown {name!r}; expected some of {list(VARIANTS)}")
    results, skipped = {name: [] for name in names}, []
    t_start = time.time()
    for name in names:
        dead = None
        for n in ns:
            pts = results[name]
            if dead:
                skipped.append({"variant": name, "n": n, "reason": dead})
                continue
            t_pred = predict(pts, n, "time_s", 1.0)
            m_pred = predict(pts, n, "peak_mb", 0.0)
            calls = 1 + args.repeats
            if t_pred is not None and t_pred * calls > args.budget_s:
                dead = (f"predicted {t_pred:.1f} s/call x {calls} calls > budget "
                        f"{args.budget_s:.0f} s")
            elif m_pred is not None and m_pred > args.budget_mb:
                dead = f"predicted peak {m_pred:.0f} MiB > budget {args.budget_mb:.0f} MiB"
            if dead:
                skipped.append({"variant": name, "n": n, "reason": dead})
                print(f"  skip {name:22s} N={n:6d}: {dead}", flush=True)
                continue
            point, why = run_point(args, name, n)
            if point is None:
                dead = why
                skipped.append({"variant": name, "n": n, "reason": why})
                print(f"  skip {name:22s} N={n:6d}: {why}", flush=True)
                continue
            pts.append(point)
            print(f"  {name:22s} N={n:6d}  {point['time_s'] * 1e3:9.1f} ms  "
                  f"{point['peak_mb']:8.1f} MiB   [{time.time() - t_start:5.0f} s]", flush=True)
    fits = {}
    for name, pts in results.items():
        xs, ts = [p["n"] for p in pts], [p["time_s"] for p in pts]
        pairs = [p["pairs"] for p in pts]
        fits[name] = {"exponent": slope(xs, ts), "tail_exponent": slope(xs[-3:], ts[-3:]),
                      "pairs_exponent": slope(xs, pairs) if pts and pairs[0] else None,
                      "ns_per_pair": (1e9 * ts[-1] / (B * H * pairs[-1])
                                      if pts and pairs[-1] else None),
                      "memory_exponent": slope(xs, [max(p["peak_mb"], 1e-3) for p in pts]),
                      "target": VARIANTS[name][3], "description": VARIANTS[name][2]}
    return ns, results, skipped, fits


def write(args, ns, results, skipped, fits):
    os.makedirs(args.out, exist_ok=True)
    import platform
    meta = {"B": B, "H": H, "D": D, "dtype": "float32", "backward": args.backward,
            "threads": args.threads, "device": args.device, "repeats": args.repeats,
            "machine": platform.processor() or platform.machine(),
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    with open(os.path.join(args.out, "scaling.json"), "w") as f:
        json.dump({"meta": meta, "points": results, "skipped": skipped, "fits": fits}, f,
                  indent=1)
    fmt = lambda e: "-" if e is None else f"{e:.2f}"  # noqa: E731
    mode = "forward + backward" if args.backward else "forward"
    lines = [f"# Scaling ({mode}; B={B}, H={H}, D={D}, float32, {args.threads} thread(s), "
             f"{args.device})", "", f"Command: `{meta['command']}`", "",
             "Time exponent: least-squares slope of log time vs log N (all points / last 3). "
             "Pairs exponent: the same for the attended-pair count. ns/pair: time per "
             "(query, key, head) pair at the largest N. Cells: median time / peak memory.",
             "",
             "| variant | what | time exp. (all) | time exp. (last 3) | pairs exp. | target | "
             "ns/pair | " + " | ".join(f"N={n}" for n in ns) + " |",
             "|---|---|---:|---:|---:|---|---:|" + "---:|" * len(ns)]
    for name, pts in results.items():
        by_n = {p["n"]: p for p in pts}
        cells = [f"{by_n[n]['time_s'] * 1e3:.1f} ms / {by_n[n]['peak_mb']:.0f} MiB"
                 if n in by_n else "skipped" for n in ns]
        f = fits[name]
        lines.append(f"| {name} | {f['description']} | {fmt(f['exponent'])} | "
                     f"{fmt(f['tail_exponent'])} | {fmt(f['pairs_exponent'])} | {f['target']} | "
                     f"{fmt(f['ns_per_pair'])} | " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", "Skipped points:", ""] + [f"- {s['variant']} N={s['n']}: {s['reason']}"
                                                for s in skipped]
    with open(os.path.join(args.out, "scaling.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(args, results, fits)
    print("\n".join(lines))


def plot(args, results, fits):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 5.5))
    colors, marks = plt.get_cmap("tab20").colors, "osD^v<>phX*P"
    for i, (name, pts) in enumerate(results.items()):
        if not pts:
            continue
        xs = [p["n"] for p in pts]
        e = fits[name]["exponent"]
        label = f"{name} ({'-' if e is None else f'{e:.2f}'})"
        style = dict(color=colors[2 * i % 20 + (i >= 10)], marker=marks[i % len(marks)])
        ax_t.plot(xs, [p["time_s"] for p in pts], "-", label=label, **style)
        ax_m.plot(xs, [max(p["peak_mb"], 0.1) for p in pts], "-", label=name, **style)
    for ax, title, unit in ((ax_t, "time per call (exponent)", "seconds"),
                            (ax_m, "peak memory above inputs", "MiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N (tokens)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=7)
    ax_m.legend(fontsize=7)
    fig.suptitle(f"attnkit scaling ({'fwd+bwd' if args.backward else 'forward'}, "
                 f"B={B} H={H} D={D})")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "scaling.png"), dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench-out/scaling", help="output folder")
    ap.add_argument("--min-n", type=int, default=1024)
    ap.add_argument("--max-n", type=int, default=65536, help="cap on N (e.g. 16384 for quick runs)")
    ap.add_argument("--variants", default="", help="comma-separated subset of: "
                    + ",".join(VARIANTS))
    ap.add_argument("--backward", action="store_true", help="time forward + backward")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per point")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget-s", type=float, default=60.0,
                    help="skip a point predicted to need more seconds (all its calls)")
    ap.add_argument("--budget-mb", type=float, default=8192.0,
                    help="skip a point predicted to need more peak memory (MiB)")
    ap.add_argument("--point-timeout-s", type=float, default=300.0)
    ap.add_argument("--worker", nargs=2, metavar=("VARIANT", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.min_n < 1 or args.max_n < args.min_n:
        raise SystemExit(f"--min-n/--max-n: expected 1 <= min-n <= max-n, got "
                         f"{args.min_n}, {args.max_n}")
    if args.worker:
        res = worker(args.worker[0], int(args.worker[1]), args.backward, args.repeats,
                     args.threads, args.device)
        print(json.dumps(res))
        return
    write(args, *drive(args))


if __name__ == "__main__":
    main()
