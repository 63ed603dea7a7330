"""``attnkit tour``: the engine in four live measurements (the first part of ``make demo``).

1. The quadratic wall: how many scores one head forms, and what the weights weigh.
2. One call per backend on the same causal problem: time, peak memory, error
   against the float64 reference (each backend in its own process).
3. What ``auto`` picks for a few workloads, and why.
4. A sparse mask: causal window-256 on the tiled backend vs SDPA's causal kernel.
"""
from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from .. import masks as M
from ..bench.measure import PeakMemory, run_isolated, timed
from ..engine.functional import attention, make_call, select_backend

__all__ = ["tour_point", "add_arguments", "run"]


def tour_point(*, backend: str, n: int, mode: str = "causal", heads: int = 8, dim: int = 64,
               seed: int = 0) -> dict:
    """One backend on one causal problem, in its own process: time, memory, error."""
    torch.manual_seed(seed)
    q, k, v = (torch.randn(1, heads, n, dim) for _ in range(3))
    mask = M.causal() if mode == "causal" else M.causal() & M.window(256)
    with torch.no_grad():
        with PeakMemory() as pm:
            out = attention(q, k, v, mask=mask, backend=backend)
        t = timed(lambda: attention(q, k, v, mask=mask, backend=backend), repeats=3, warmup=0)
        err = None
        if n <= 4096:
            ref = attention(q.double(), k.double(), v.double(), mask=mask, backend="reference")
            err = float((out.double() - ref).abs().max() / ref.abs().max())
    return {**t, "peak_bytes": pm.peak_bytes, "rel_err": err}


def _mib(b) -> str:
    return "?" if b is None else f"{b / 2**20:,.1f} MiB"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=2048,
                    help="sequence length of the backend tour (default 2048; >= 257)")


def run(a: argparse.Namespace, con: Console | None = None) -> int:
    """The four sections, printed to ``con``."""
    from ..core.errors import UsageError
    if isinstance(a.n, bool) or not isinstance(a.n, int) or a.n < 257:
        raise UsageError(f"--n: expected a sequence length >= 257 (the window is 256), got {a.n}")
    con = con or Console()
    con.rule("[bold]attnkit: the attention engine")

    # 1. the quadratic wall --------------------------------------------------------
    t = Table(title="Scores per head grow as n^2 (fp32 weights, one head / 32 heads)")
    for c in ("tokens n", "scores per head (n^2)", "weights, 1 head", "weights, 32 heads"):
        t.add_column(c, justify="right")
    for n in (512, 2048, 8192, 32768, 131072):
        t.add_row(f"{n:,}", f"{n * n:,}", _mib(4 * n * n), _mib(32 * 4 * n * n))
    con.print(t)

    # 2. one call per backend --------------------------------------------------------
    backends = ["reference", "sdpa", "tiled"]
    rows = {}
    with Progress(console=con, transient=True) as prog:
        task = prog.add_task("measuring backends (one process each)", total=len(backends) + 1)
        for be in backends + ["tiled:window"]:
            name, mode = (be.split(":") + ["causal"])[:2]
            rows[be] = run_isolated("attnkit.commands.tour:tour_point",
                                    {"backend": name, "n": a.n, "mode": mode}, timeout=600)
            prog.advance(task)
    t = Table(title=f"One causal call per backend: B=1, H=8, n={a.n:,}, D=64, fp32, forward")
    for c in ("backend", "median time", "peak extra memory", "max rel. error vs fp64"):
        t.add_column(c, justify="right")
    for be in backends:
        r = rows[be]
        if "error" in r:
            t.add_row(be, "-", "-", r["error"])
            continue
        err = "-" if r["rel_err"] is None else f"{r['rel_err']:.1e}"
        t.add_row(be, f"{r['median_s'] * 1e3:,.1f} ms", _mib(r["peak_bytes"]), err)
    con.print(t)
    if "median_s" in rows["reference"] and "median_s" in rows["tiled"]:
        con.print(f"The reference materialises {8 * a.n * a.n:,} scores; the tiled kernel never "
                  f"holds more than one (tile x chunk) block of them.")

    # 3. auto ---------------------------------------------------------------------
    t = Table(title="What backend='auto' picks")
    t.add_column("workload")
    t.add_column("backend")
    t.add_column("why")
    for label, kw in [("no mask", {}), ("causal", {"mask": M.causal()}),
                      ("causal window-256", {"mask": M.causal() & M.window(256)}),
                      ("softcap 30", {"softcap": 30.0}),
                      ("padding + causal", {"mask": M.padding([12000]) & M.causal()})]:
        kq = torch.empty(1, 8, 16384, 64)
        name, why = select_backend(make_call(kq, kq, kq, **kw))
        t.add_row(f"n=16,384, {label}", name, why)
    con.print(t)

    # 4. sparse ---------------------------------------------------------------------
    w, c = rows["tiled:window"], rows["sdpa"]
    if "median_s" in w and "median_s" in c:
        con.print(f"[bold]Causal window-256 at n={a.n:,}[/]: tiled {w['median_s'] * 1e3:,.1f} ms vs "
                  f"SDPA causal {c['median_s'] * 1e3:,.1f} ms = "
                  f"[bold]{c['median_s'] / w['median_s']:.1f}x[/] SDPA's speed; pairs "
                  f"{a.n * 257 - 256 * 257 // 2:,} vs {a.n * (a.n + 1) // 2:,}.")
    con.print("Full grid: python benchmarks/attention.py (see README).")
    return 0



def add_parser(sub) -> None:
    """``attnkit tour``: the subcommand's options (the same as ``make demo``'s first part)."""
    p = sub.add_parser("tour", help="a short tour of the engine with live measurements "
                       "(the first part of `make demo`)", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=run)
