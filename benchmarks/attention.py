"""Backends side by side on causal and causal window-256 attention (B 1, H 8, D 64, fp32).

Default (interleaved, one process): for each N the inputs are built once, every
(backend, mask) variant is warmed up (compiled, for flex; block maps cached), then timed
in rounds -- each round runs every variant once, in a rotated order, so a burst of load
from other processes hits all alike -- with --threads torch threads (default 1: times
that do not swing with other processes' load). A variant stops repeating once it has
spent --budget-s seconds (at least --min-runs runs); one whose warm-up alone exceeded
the budget counts that call as its only run (flex: its second call, after the compile). Printed per variant: min / median /
max wall time, the speed relative to SDPA's *causal* kernel at the same N (its median
over the variant's, with the interval [q1_sdpa/q3_v, q3_sdpa/q1_v]; "within noise" when
it contains 1), flex vs auto, and the fitted exponent of each variant's median time over
--fit (least squares of log time on log N, with its standard error).

    python benchmarks/attention.py                                   # window-256, 4k-64k
    python benchmarks/attention.py --backward                        # forward+backward
    python benchmarks/attention.py --n 4096,16384 --modes causal,window --backends tiled,sdpa
    python benchmarks/attention.py --isolated --n 16384              # + peak memory

--isolated runs each point in its own process instead (peak extra memory per point,
no interleaving), as before.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

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


def quartiles(xs):
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def ratio(base, x):
    """median(base)/median(x) and its interval [q1_base/q3_x, q3_base/q1_x]."""
    (b1, b3), (x1, x3) = quartiles(base), quartiles(x)
    return statistics.median(base) / statistics.median(x), b1 / x3, b3 / x1


def fit(ns, ts):
    """Slope of log t on log n and its standard error (None below 2 / 3 points)."""
    if len(ns) < 2:
        return None, None
    lx, ly = [math.log(n) for n in ns], [math.log(t) for t in ts]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    b = sum((a - mx) * (c - my) for a, c in zip(lx, ly)) / sxx
    if len(ns) < 3:
        return b, None
    res = sum((c - my - b * (a - mx)) ** 2 for a, c in zip(lx, ly))
    return b, math.sqrt(res / (len(ns) - 2) / sxx)


def interleaved(a) -> dict:
    import attnkit
    from attnkit import masks as M
    torch.set_num_threads(a.threads)
    masks = {"causal": M.causal(), "window": M.causal() & M.window(a.window)}
    variants = [("sdpa", "causal")] + [(b, m) for m in a.modes for b in a.backends
                                       if (b, m) != ("sdpa", "causal")]
    results = {}
    for n in a.n:
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, a.heads, n, a.head_dim, generator=g).requires_grad_(a.backward)
                   for _ in range(3))

        def call(backend, mode):
            t0 = time.perf_counter()
            with torch.set_grad_enabled(a.backward):
                out = attnkit.attention(q, k, v, mask=masks[mode], backend=backend)
                if a.backward:
                    out.backward(torch.ones_like(out))
                    for t in (q, k, v):
                        t.grad = None
            return time.perf_counter() - t0

        live, times = [], {}
        for b, m in variants:
            key = (b, m, n)
            if b == "sdpa" and m == "window" and n > 16384:
                results[key] = {"skipped": "SDPA: a dense N x N mask and full N^2 compute"}
                continue
            try:
                first = call(b, m)                 # warm-up (compile, caches), not counted
                if b == "flex":                    # the compile is no sample, ever
                    first = call(b, m)
            except attnkit.UnsupportedCall as e:
                results[key] = {"skipped": str(e).split(": ", 1)[-1]}
                print(f"{b:>6} {m:>6} N={n:>6}  refused: {results[key]['skipped']}", flush=True)
                continue
            except Exception as e:  # reported (e.g. out of memory), the sweep goes on
                results[key] = {"skipped": f"failed: {type(e).__name__}: {str(e)[:160]}"}
                print(f"{b:>6} {m:>6} N={n:>6}  {results[key]['skipped']}", flush=True)
                continue
            live.append((b, m))
            times[(b, m)] = [first] if first > a.budget_s else []  # too slow to repeat
        for r in range(a.rounds):
            order = live[r % len(live):] + live[:r % len(live)] if live else []
            for bm in order:
                ts = times[bm]
                if len(ts) >= a.min_runs and sum(ts) >= a.budget_s:
                    continue
                ts.append(call(*bm))
        for bm in live:
            ts = times[bm]
            results[bm + (n,)] = {"times": ts, "median_s": statistics.median(ts)}
            print(f"{bm[0]:>6} {bm[1]:>6} N={n:>6}  {min(ts):8.4f} / {statistics.median(ts):8.4f}"
                  f" / {max(ts):8.4f} s  ({len(ts)} runs)", flush=True)
    return results


def report(a, results) -> str:
    kind = "forward+backward" if a.backward else "forward"
    out = [f"Machine: {machine()}; {a.threads} thread(s); B=1 H={a.heads} D={a.head_dim} fp32; "
           f"{kind}; interleaved rounds ({a.rounds}, budget {a.budget_s:.0f} s per variant); "
           f"load average at end {os.getloadavg()[0]:.2f}.", "",
           "| backend | mask | N | min / median / max (s) | runs | vs SDPA causal (interval) |",
           "|---|---|---:|---:|---:|---|"]
    for (b, m, n), r in results.items():
        mask = "causal" if m == "causal" else f"causal window-{a.window}"
        if "skipped" in r:
            out.append(f"| {b} | {mask} | {n} | — | — | {r['skipped']} |")
            continue
        ts, base = r["times"], results.get(("sdpa", "causal", n), {}).get("times")
        cell = f"{min(ts):.4f} / {statistics.median(ts):.4f} / {max(ts):.4f}"
        vs = "—"
        if base and (b, m) != ("sdpa", "causal"):
            x, lo, hi = ratio(base, ts)
            vs = f"{x:.2f}x ({lo:.2f}–{hi:.2f})" + (", within noise" if lo <= 1 <= hi else "")
        out.append(f"| {b} | {mask} | {n} | {cell} | {len(ts)} | {vs} |")
    lines = []
    for m in a.modes:
        for n in a.n:
            fx = results.get(("flex", m, n), {}).get("times")
            au = results.get(("auto", m, n), {}).get("times")
            if fx and au:
                x, lo, hi = ratio(fx, au)
                lines.append(f"- auto vs flex, {m}, N={n}: {x:.2f}x ({lo:.2f}–{hi:.2f})"
                             + (", within noise" if lo <= 1 <= hi else ""))
        for b, mm in [(b, m) for b in a.backends] + ([("sdpa", "causal")] if m == a.modes[-1]
                                                      and "causal" not in a.modes else []):
            pts = [(n, results[(b, mm, n)]["median_s"]) for n in a.n
                   if a.fit[0] <= n <= a.fit[1] and "median_s" in results.get((b, mm, n), {})]
            e, se = fit([p[0] for p in pts], [p[1] for p in pts])
            if e is not None:
                lines.append(f"- exponent of {b}, {mm}, N {pts[0][0]}–{pts[-1][0]}: {e:.3f}"
                             + (f" ± {se:.3f}" if se is not None else ""))
    return "\n".join(out + [""] + lines)


def isolated(a) -> list:
    from attnkit.bench.measure import run_isolated
    rows = []
    for n in a.n:
        base = run_isolated("attnkit.bench.points:attention_point",
                            dict(backend="sdpa", n=n, mode="causal", backward=a.backward,
                                 heads=a.heads, head_dim=a.head_dim, repeats=a.repeats),
                            timeout=a.timeout)
        for mode in a.modes:
            for b in a.backends:
                r = base if (b, mode) == ("sdpa", "causal") else run_isolated(
                    "attnkit.bench.points:attention_point",
                    dict(backend=b, n=n, mode=mode, backward=a.backward, heads=a.heads,
                         head_dim=a.head_dim, repeats=a.repeats, window=a.window),
                    timeout=a.timeout)
                row = {"backend": b, "mode": mode, "n": n, **r}
                if "median_s" in r and "median_s" in base:
                    row["speedup_vs_sdpa_causal"] = base["median_s"] / r["median_s"]
                mem = r.get("peak_bytes")
                print(f"{b:>9} {mode:>6} N={n:>6} " + (
                    f"{r['median_s']:9.4f} s  x{row['speedup_vs_sdpa_causal']:6.2f} vs SDPA "
                    f"causal  peak +{(mem or 0) / 2**20:8.1f} MiB" if "median_s" in r
                    else f" -- {r.get('skipped') or r.get('error')}"), flush=True)
                rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="4096,8192,16384,32768,65536", help="sequence lengths")
    ap.add_argument("--backends", default="sdpa,flex,tiled,auto")
    ap.add_argument("--modes", default="window", help="causal and/or window")
    ap.add_argument("--window", type=int, default=256, help="keys back in the window mode")
    ap.add_argument("--backward", action="store_true", help="time forward+backward")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-runs", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=60.0, help="seconds per variant and N")
    ap.add_argument("--fit", default="4096,32768", help="N range of the fitted exponent")
    ap.add_argument("--isolated", action="store_true", help="one process per point (+memory)")
    ap.add_argument("--repeats", type=int, default=3, help="--isolated: runs per point")
    ap.add_argument("--timeout", type=float, default=900, help="--isolated: s per point")
    ap.add_argument("--out", help="directory for results.json and results.md")
    a = ap.parse_args(argv)
    try:
        a.n = [int(x) for x in a.n.split(",")]
        a.fit = [int(x) for x in a.fit.split(",")]
    except ValueError:
        ap.error("--n and --fit: expected comma-separated integers")
    a.backends, a.modes = a.backends.split(","), a.modes.split(",")
    for m in a.modes:
        if m not in ("causal", "window"):
            ap.error(f"--modes: expected causal and/or window, got {m!r}")
    print(f"# {machine()}; command: {' '.join(['python'] + sys.argv)}", flush=True)
    if a.isolated:
        rows, text = isolated(a), ""
        payload = {"rows": rows}
    else:
        results = interleaved(a)
        text = report(a, results)
        print("\n" + text)
        payload = {"rows": [{"backend": b, "mode": m, "n": n, **r}
                            for (b, m, n), r in results.items()]}
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump({"machine": machine(), "args": vars(a), **payload}, f, indent=1)
        with open(os.path.join(a.out, "results.md"), "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
