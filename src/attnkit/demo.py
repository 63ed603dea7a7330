"""``make demo``: a tour of the engine, then the workbench on its embedded defaults.

1. The quadratic wall: how many scores one head forms, and what the weights weigh.
2. One call per backend on the same causal problem: time, peak memory, error
   against the float64 reference (each backend in its own process).
3. What ``auto`` picks for a few workloads, and why.
4. A sparse mask: causal window-256 on the tiled backend vs SDPA's causal kernel.
5. ``attnkit inspect`` on the seed sentence with the bundled MiniLM (which heads link
   "it" to "cat"), ``attnkit bench`` (dense vs window vs linear, 1k-8k tokens) and
   ``attnkit train --sweep`` (does each variant learn induction heads? dense, a short
   window, linear attention and the SSM, 1000 steps each); everything lands in
   ``./attnkit-report/`` with an ``index.html``.
"""
from __future__ import annotations

import argparse
import sys

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from . import masks as M
from .bench.measure import PeakMemory, run_isolated, timed
from .functional import attention, make_call, select_backend


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attnkit.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2048, help="sequence length of the backend tour")
    ap.add_argument("--report", default="attnkit-report", help="where inspect/bench write")
    ap.add_argument("--no-report", action="store_true", help="only the engine tour")
    a = ap.parse_args(argv)
    con = Console()
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
            rows[be] = run_isolated("attnkit.demo:tour_point",
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
    if a.no_report:
        return 0
    return report(a.report, con)


SENTENCE = "The cat sat on the mat because it was tired."


def report(out: str, con: Console) -> int:
    """Run inspect and bench into ``out`` and write ``out/index.html`` linking them."""
    import html
    import json
    import os

    from .cli import main as cli
    con.rule("[bold]attnkit inspect: what does MiniLM attend to?")
    rc = cli(["inspect", SENTENCE, "--from", "it", "--to", "cat", "--out",
              os.path.join(out, "inspect")])
    con.rule("[bold]attnkit bench: dense vs window vs linear")
    rc = rc or cli(["bench", "--seq", "1k,2k,4k,8k", "--variants", "dense,window:256,linear:elu",
                    "--out", os.path.join(out, "bench")])
    con.rule("[bold]attnkit train: which variants learn induction heads?")
    rc = rc or cli(["train", "--sweep", "--tasks", "induction", "--variants",
                    "dense,window:4,linear:elu,ssm", "--widths", "32", "--steps", "1000",
                    "--lr", "1e-3", "--eval-every", "500", "--ckpt-every", "500", "--jobs", "2",
                    "--threads", "1", "--out", os.path.join(out, "train")])
    if rc:
        return rc
    quality = json.load(open(os.path.join(out, "train", "quality.json")))
    qrows = "".join(f"<tr><td>{html.escape(c['variant'])}</td><td>{c['score']:.3f}</td>"
                    f"<td>{c['final_loss']:.3f}</td><td>{c['train_time_s']:.0f}</td></tr>"
                    for c in quality["cells"])
    ins = json.load(open(os.path.join(out, "inspect", "inspect.json")))
    bench = json.load(open(os.path.join(out, "bench", "bench.json")))
    layer, head, score = ins["ranked"][0]
    rows = "".join(f"<tr><td>{i + 1}</td><td>{r[0]}</td><td>{r[1]}</td><td>{r[2]:.3f}</td></tr>"
                   for i, r in enumerate(ins["ranked"][:5]))
    brows = "".join(
        f"<tr><td>{html.escape(r['variant'])}</td><td>{r['n']:,}</td>"
        f"<td>{r['median_s'] * 1e3:,.1f}</td><td>{r.get('speedup_vs_dense', 0):.2f}x</td>"
        f"<td>{(r.get('peak_bytes') or 0) / 2**20:,.1f}</td>"
        f"<td>{r.get('rel_error', float('nan')):.1e}</td></tr>"
        for r in bench["rows"] if "median_s" in r)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>attnkit report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:
collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}img{{max-width:100%}}
</style></head><body><h1>attnkit report</h1>
<h2>inspect: {html.escape(ins['text'])}</h2>
<p>Model: {html.escape(ins['model'])}. Heads ranked by how much "it" attends to "cat"
(word pieces merged):</p><table><tr><th>rank</th><th>layer</th><th>head</th>
<th>attention</th></tr>{rows}</table>
<p><img src="inspect/layer{layer}_head{head}.png" alt="best head">
<img src="inspect/layer{layer}.png" alt="layer {layer}"></p>
<p><a href="inspect/attention.html#layer={layer}&head={head}">Interactive viewer</a>
(every layer and head; hover a token). All numbers: <a href="inspect/inspect.json">inspect.json</a></p>
<h2>bench: {html.escape(bench['title'])}</h2><table><tr><th>variant</th><th>n</th>
<th>median ms</th><th>speed vs dense</th><th>peak MiB</th><th>rel. error</th></tr>{brows}</table>
<p><b>Recommendation:</b> {html.escape(bench['recommendation'])}</p>
<p><img src="bench/bench.png" alt="scaling plot"></p>
<p>Tables: <a href="bench/bench.md">bench.md</a>, <a href="bench/bench.json">bench.json</a></p>
<h2>train: induction heads (H3), 2-layer width-32 models, 1000 steps</h2>
<table><tr><th>variant</th><th>accuracy</th><th>final loss</th><th>seconds</th></tr>{qrows}</table>
<p><img src="train/quality.png" alt="quality table"></p>
<p>Runs (checkpoints, metrics.json): <a href="train/runs/">train/runs/</a>;
table: <a href="train/quality.md">quality.md</a></p>
</body></html>"""
    path = os.path.join(out, "index.html")
    with open(path, "w") as f:
        f.write(page)
    con.print(f"[bold]Report:[/] {os.path.abspath(path)} (best it->cat head: layer {layer} "
              f"head {head}, {score:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
