"""``make demo``: a tour of the engine, then the workbench on its embedded defaults.

1. The quadratic wall: how many scores one head forms, and what the weights weigh.
2. One call per backend on the same causal problem: time, peak memory, error
   against the float64 reference (each backend in its own process).
3. What ``auto`` picks for a few workloads, and why.
4. A sparse mask: causal window-256 on the tiled backend vs SDPA's causal kernel.
5. ``attnkit inspect`` on the seed sentence with the bundled MiniLM (which heads link
   "it" to "cat"), ``attnkit bench --model minilm`` (which variant MiniLM can use: fidelity
   on the shipped text, speed, per-head evidence) and
   ``attnkit train --sweep`` (does each variant learn induction heads? dense, a short
   window, linear attention and the SSM, 1000 steps each); everything lands in
   ``./attnkit-report/`` with an ``index.html``.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

from rich.console import Console

from . import tour
from ..core.errors import UsageError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attnkit.commands.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    tour.add_arguments(ap)
    ap.add_argument("--report", default="attnkit-report", help="where inspect/bench/train write")
    ap.add_argument("--no-report", action="store_true", help="only the engine tour")
    a = ap.parse_args(argv)
    con = Console()
    try:
        rc = tour.run(a, con)
    except UsageError as e:
        print(f"python -m attnkit.commands.demo: error: {e}", file=sys.stderr)
        return 2
    if rc or a.no_report:
        return rc
    return report(a.report, con)


def _attnkit(*args: str) -> int:
    """Run ``attnkit ARGS`` as a user would (its own process, its own exit code)."""
    return subprocess.run([sys.executable, "-m", "attnkit", *args]).returncode


SENTENCE = "The cat sat on the mat because it was tired."
BENCH_VARIANTS = "dense,window:16,window:64,bigbird:16,linear:elu"


def quality_rows(quality: dict, esc) -> str:
    """HTML rows (variant, score, final loss, seconds) of a sweep's ``quality.json``: a
    cell's score is its mean over seeds; its loss the mean of its runs' final losses."""
    rows = []
    for c in quality["cells"]:
        losses = [r["final_loss"] for r in c.get("runs", []) if r.get("final_loss") is not None]
        loss = f"{sum(losses) / len(losses):.3f}" if losses else "—"
        score = "—" if c.get("score") is None else f"{c['score']:.3f}"
        rows.append(f"<tr><td>{esc(c['variant'])}</td><td>{score}</td><td>{loss}</td>"
                    f"<td>{c.get('train_time_s', 0):.0f}</td></tr>")
    return "".join(rows)


def report(out: str, con: Console) -> int:
    """Run inspect and bench into ``out`` and write ``out/index.html`` linking them."""
    import html
    import json
    import os

    con.rule("[bold]attnkit inspect: what does MiniLM attend to?")
    rc = _attnkit("inspect", SENTENCE, "--from", "it", "--to", "cat", "--versus", "mat",
                  "--out", os.path.join(out, "inspect"))
    con.rule("[bold]attnkit bench: which attention variant can MiniLM use?")
    rc = rc or _attnkit("bench", "--model", "minilm", "--variants", BENCH_VARIANTS,
                        "--out", os.path.join(out, "bench"))
    con.rule("[bold]attnkit train: which variants learn induction heads?")
    rc = rc or _attnkit("train", "--sweep", "--tasks", "induction", "--variants",
                    "dense,window:4,linear:elu,ssm", "--widths", "32", "--steps", "1000",
                    "--lr", "1e-3", "--eval-every", "500", "--ckpt-every", "500", "--jobs", "2",
                    "--threads", "1", "--out", os.path.join(out, "train"))
    if rc:
        return rc
    quality = json.load(open(os.path.join(out, "train", "quality.json")))
    qrows = quality_rows(quality, html.escape)
    ins = json.load(open(os.path.join(out, "inspect", "inspect.json")))
    bench = json.load(open(os.path.join(out, "bench", "bench.json")))
    layer, head, score = ins["ranked"][0]
    rows = "".join(f"<tr><td>{i + 1}</td><td>{r[0]}</td><td>{r[1]}</td><td>{r[2]:.3f}</td></tr>"
                   for i, r in enumerate(ins["ranked"][:5]))
    brows = "".join(_bench_row(r, html.escape) for r in bench["rows"])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>attnkit report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:
collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}img{{max-width:100%}}
</style></head><body><h1>attnkit report</h1>
<h2>inspect: {html.escape(ins['text'])}</h2>
<p>Model: {html.escape(ins['model'])}. Heads ranked by contrast: how much more "it" attends
to "cat" than the sentence's other words do (word pieces merged; a head where every word
attends to "cat" is not a coreference head):</p><table><tr><th>rank</th><th>layer</th>
<th>head</th><th>contrast</th></tr>{rows}</table>
<p><img src="inspect/layer{layer}_head{head}.png" alt="best head">
<img src="inspect/layer{layer}.png" alt="layer {layer}"></p>
<p><a href="inspect/attention.html#layer={layer}&head={head}">Interactive viewer</a>
(every layer and head; hover a token). All numbers: <a href="inspect/inspect.json">inspect.json</a></p>
<h2>bench: {html.escape(bench['title'])}</h2>
<p>Each variant swapped into every attention layer of MiniLM and run on the shipped text,
against the dense model: cosine of final hidden states and of sentence embeddings (1 = the
same), and the worst layer's attention-output error on the dense run's own q/k/v. Times are
medians of interleaved runs; a ratio is "within noise" when the spreads overlap.</p>
<table><tr><th>variant</th><th>n</th><th>cosine</th><th>emb. cosine</th>
<th>worst layer error</th><th>attention vs dense</th><th>model ms</th><th>model vs dense</th>
<th>peak MiB</th></tr>{brows}</table>
<p><b>Recommendation:</b> {html.escape(bench['recommendation']['text'])}</p>
<p><img src="bench/mass_vs_window.png" alt="attention mass vs window size per layer">
<img src="bench/layers.png" alt="per-layer error and mass kept">
<img src="bench/fidelity_speed.png" alt="fidelity vs speed"></p>
<p>Tables and notes: <a href="bench/bench.md">bench.md</a>,
<a href="bench/bench.json">bench.json</a></p>
<h2>train: induction heads (H3), 2-layer width-32 models, 1000 steps</h2>
<table><tr><th>variant</th><th>accuracy</th><th>final loss</th><th>seconds</th></tr>{qrows}</table>
<p><img src="train/quality.png" alt="quality table"></p>
<p>Runs (checkpoints, metrics.json): <a href="train/runs/">train/runs/</a>;
table: <a href="train/quality.md">quality.md</a></p>
</body></html>"""
    path = os.path.join(out, "index.html")
    with open(path, "w") as f:
        f.write(page)
    con.print(f"[bold]Report:[/] {os.path.abspath(path)} (the head that most singles out "
              f"it->cat: layer {layer} head {head}, contrast {score:+.2f})")
    return 0


def _bench_row(r: dict, esc) -> str:
    """One ``bench --model`` row of the report page."""
    def sp(x):
        return "baseline" if r["variant"] == "dense" else \
            f"{x['ratio']:.2f}x" + (" (within noise)" if x["within_noise"] else "")
    f = r["fidelity"]
    worst = f"{f['worst_layer_error']:.2e} (layer {f['worst_layer']})" \
        if f["worst_layer_error"] else "0"
    return (f"<tr><td>{esc(r['variant'])}</td><td>{r['n']:,}</td><td>{f['cosine']:.4f}</td>"
            f"<td>{f['embedding_cosine']:.4f}</td><td>{worst}</td>"
            f"<td>{sp(r['attention_speedup'])}</td>"
            f"<td>{r['model_time']['median_s'] * 1e3:,.1f}</td><td>{sp(r['model_speedup'])}</td>"
            f"<td>{(r.get('peak_bytes') or 0) / 2**20:,.1f}</td></tr>")


if __name__ == "__main__":
    sys.exit(main())
