"""Writing an ``attnkit bench --model`` result: rich tables, bench.md, bench.json, PNGs.

PNGs: ``mass_vs_window.png`` (attention mass within w tokens vs w, per layer, every head
faint and the layer mean bold; dashed lines at the window variants measured),
``layers.png`` (each variant's attention-output error per layer on the dense run's
q/k/v, and the mass each sparse pattern keeps per layer) and ``fidelity_speed.png``
(fidelity against model-forward speed vs dense, with the quartile interval); with
``--adapt N`` also the adapted table and ``adapt_curve.png`` (:mod:`.adapted`).
"""
from __future__ import annotations

import json
import os

from . import adapted
from .timing import fmt_ratio, fmt_spread

__all__ = ["tables", "markdown", "write", "NOTES"]

NOTES = [
    "Fidelity: measured inside the model on the text, against the dense model on the same "
    "windows (float64). Encoders: cosine = mean over tokens of the cosine of final hidden "
    "states (min: worst token); emb. cosine = cosine of mean-pooled sentence embeddings, mean "
    "over windows. Decoders: KL(dense || variant) of the next-token distribution in nats per "
    "token, top-1 agreement, perplexity change on the text's next tokens. Worst layer error = "
    "max over layers of ||A_variant - A_dense|| / ||A_dense||, A = that layer's attention "
    "output on the dense run's own q/k/v.",
    "Timing: interleaved rounds (every variant once per round, rotated order) until each "
    "median's standard error is <= {tol:.0%} or {budget:g} s per length is spent; min / median "
    "/ max in ms over the runs ('*': the median had not settled). Speed vs dense = dense median "
    "/ variant median, with the interval [q1_dense / q3_variant, q3_dense / q1_variant]; 'within "
    "noise' when it contains 1 (the interquartile ranges overlap): no difference shown.",
    "Attention: layer {layer}'s attention operation alone (no projections) on its real q/k/v at "
    "the model's shapes; model: one forward of a whole window. A sparse pattern served by "
    "'sdpa: mask materialised' runs SDPA's masked path, which is slower than dense's fused "
    "kernel: patterns pay off only once the tiled kernel can skip most tiles (long inputs).",
]


def _kernel(served: str) -> str:
    name, _, why = served.partition(":")
    name = name.split(" ")[0]
    return "sdpa (masked)" if "materialised" in why else "linear" if "linear" in name else name


def _fid_cells(r: dict, kind: str) -> list[str]:
    f = r["fidelity"]
    worst = (f"{f['worst_layer_error']:.2e} (L{f['worst_layer']})"
             if f["worst_layer_error"] else "0")
    if kind == "encoder":
        return [f"{f['cosine']:.4f} ({f['cosine_min']:.3f})",
                f"{f['embedding_cosine']:.4f} ({f['embedding_cosine_min']:.3f})", worst]
    return [f"{f['kl']:.2e}", f"{f['top1_agreement']:.3f}", f"{f['ppl_change']:+.2%}", worst]


def _heads_fid(kind: str) -> list[str]:
    return (["cosine (min)", "emb. cosine (min)", "worst layer err"] if kind == "encoder"
            else ["KL nats/tok", "top-1 agree", "ppl change", "worst layer err"])


HEAD_TAIL = ["attention ms min/med/max", "attention speed vs dense", "model ms min/med/max",
             "model speed vs dense", "peak MiB (vs dense)", "kernel"]


def _rows(res: dict, n: int) -> list[list[str]]:
    out = []
    for r in res["rows"]:
        if r["n"] != n:
            continue
        mem = "?" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**20:,.1f}"
        if "memory_ratio" in r:
            mem += f" ({r['memory_ratio']:.2f}x)"
        base = r["variant"] == "dense"
        out.append([r["variant"]] + _fid_cells(r, res["kind"]) + [
            fmt_spread(r["attention_time"]),
            "baseline" if base else fmt_ratio(r["attention_speedup"]),
            fmt_spread(r["model_time"]), "baseline" if base else fmt_ratio(r["model_speedup"]),
            mem, _kernel(r["served_by"])])
    return out


def _head_rows(h: dict) -> tuple[list[str], list[list[str]]]:
    names = list(h["layers"][0]["kept"]) if h["layers"] else []
    head = ["layer", "local heads", "sink heads", "mass on first", "mass on last"] + \
           [f"kept by {v} (min head)" for v in names]
    rows = []
    for row in h["layers"]:
        rows.append([str(row["layer"]), ",".join(map(str, row["local_heads"])) or "-",
                     ",".join(map(str, row["sink_heads"])) or "-", f"{row['first_mass']:.2f}",
                     f"{row['last_mass']:.2f}"] +
                    [f"{row['kept'][v]['mean']:.2f} ({row['kept'][v]['min']:.2f})" for v in names])
    return head, rows


def title(res: dict) -> str:
    s = res["shapes"]
    kv = f"/{s['kv_heads']} KV" if s["kv_heads"] != s["heads"] else ""
    m = res["machine"]
    return (f"{res['model']} ({res['kind']}, {s['layers']} layers, {s['heads']}{kv} heads x "
            f"{s['head_dim']}, {s['positions']} positions) on {res['text_name']} "
            f"({res['text_tokens']:,} tokens); {m['device']}, torch {m['torch']}, "
            f"{m['threads']} thread(s)")


def _lengths(res: dict) -> list[int]:
    return sorted({r["n"] for r in res["rows"]})


def _short_ratio(r: dict, variant: str = "") -> str:
    if variant == "dense":
        return "baseline"
    return f"{r['ratio']:.2f}x" + (" noise" if r["within_noise"] else "")


def _short_time(t: dict) -> str:
    return f"{t['median_s'] * 1e3:,.2f}" + ("" if t.get("stable") in (True, None) else "*")


def tables(res: dict) -> list:
    """Rich tables for a terminal: per length fidelity, then speed and memory; then the
    per-head analysis of the largest length."""
    from rich.table import Table
    out = []
    for n in _lengths(res):
        rows = [r for r in res["rows"] if r["n"] == n]
        t = Table(title=f"Fidelity to dense at n = {n:,} ({rows[0]['windows']} window(s))")
        for c in ["variant"] + _heads_fid(res["kind"]):
            t.add_column(c, justify="left" if c == "variant" else "right")
        for r in rows:
            t.add_row(r["variant"], *_fid_cells(r, res["kind"]))
        out.append(t)
        t = Table(title=f"Speed and memory at n = {n:,}: median ms ('*' not settled), speed "
                        f"vs dense ('noise' = within noise); spreads and intervals in bench.md")
        for c in ("variant", "attn ms", "attn speed", "model ms", "model speed", "MiB",
                  "kernel"):
            t.add_column(c, justify="left" if c in ("variant", "kernel") else "right")
        for r in rows:
            mem = "?" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**20:,.1f}"
            t.add_row(r["variant"], _short_time(r["attention_time"]),
                      _short_ratio(r["attention_speedup"], r["variant"]),
                      _short_time(r["model_time"]), _short_ratio(r["model_speedup"], r["variant"]),
                      mem, _kernel(r["served_by"]))
        out.append(t)
    n = _lengths(res)[-1]
    h = res["heads"][str(n)]
    head, rows = _head_rows(h)
    t = Table(title=f"Per layer at n = {n:,}: local heads (90% of mass within "
                    f"{h['local_reach']} tokens), sink heads (>= {h['sink_mass']:.0%} on one "
                    f"key), mass each pattern keeps: mean (weakest head)")
    for c in head:
        c = c.replace("kept by ", "").replace(" (min head)", "").replace("mass on ", "")
        t.add_column(c.replace(":", "\n:"), justify="right")
    for row in rows:
        t.add_row(*row)
    out.append(t)
    return out


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(head) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"] +
            ["| " + " | ".join(r) + " |" for r in rows])


def notes(res: dict) -> list[str]:
    c = res["config"]
    layer = c["layers"][0] if c["layers"] else 0
    return [NOTES[0], NOTES[1].format(tol=c["rel_tol"], budget=c["time_budget_s"]),
            NOTES[2].format(layer=layer),
            f"Memory: peak extra memory of one forward ({res['rows'][0]['memory_method']})."] + \
        (adapted.notes(res) if "adaptation" in res else [])


def markdown(res: dict) -> str:
    lines = [f"### attnkit bench: {title(res)}", "",
             f"Command: `{res.get('command', '')}`", ""]
    for n in _lengths(res):
        lines += [f"**n = {n:,}**", ""] + \
                 _md_table(["variant"] + _heads_fid(res["kind"]) + HEAD_TAIL, _rows(res, n)) + [""]
    n = _lengths(res)[-1]
    head, rows = _head_rows(res["heads"][str(n)])
    lines += [f"**Per layer at n = {n:,}** (local: 90% of a head's mass within "
              f"{res['heads'][str(n)]['local_reach']} tokens; sink: >= "
              f"{res['heads'][str(n)]['sink_mass']:.0%} of its mass on one key)", ""]
    lines += _md_table(head, rows) + [""]
    rec = res["recommendation"]
    lines += [f"**Recommendation:** {rec['text']}", ""]
    if "adaptation" in res:
        lines += adapted.markdown_lines(res)
    lines += ["![mass vs window](mass_vs_window.png)", "![per layer](layers.png)",
              "![fidelity vs speed](fidelity_speed.png)", ""]
    lines += [f"* {x}" for x in notes(res)] + [""]
    return "\n".join(lines)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_mass(res: dict, path: str) -> None:
    plt = _plt()
    n = _lengths(res)[-1]
    h = res["heads"][str(n)]
    grid = [max(w, 0.5) for w in h["grid"]]   # w = 0 (the token itself) drawn at 0.5
    L = len(h["layers"])
    cols = min(L, 3)
    rows = (L + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.1 * rows), squeeze=False)
    windows = [int(v.split(":")[1]) for v in res["variants"] if v.startswith("window:")]
    for layer in range(L):
        ax = axes[layer // cols][layer % cols]
        mine = [x for x in h["heads"] if x["layer"] == layer]
        for x in mine:
            ax.plot(grid, x["mass_within"], color="tab:blue", alpha=0.25, lw=0.8)
        mean = [sum(x["mass_within"][j] for x in mine) / len(mine) for j in range(len(grid))]
        ax.plot(grid, mean, color="black", lw=2, label="mean over heads")
        for w in windows:
            ax.axvline(max(w, 0.5), color="tab:red", ls="--", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("window w (tokens back)" if h["causal"] else "window w (tokens each side)")
        ax.set_ylabel("attention mass within w")
        ax.grid(True, alpha=0.3)
    for j in range(L, rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{res['model']}, n = {n:,}: mass captured vs window size (faint: heads; "
                 f"dashed: measured windows)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_layers(res: dict, path: str) -> None:
    plt = _plt()
    n = _lengths(res)[-1]
    rows = [r for r in res["rows"] if r["n"] == n and r["variant"] != "dense"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        errs = r["fidelity"]["layer_errors"]
        a1.plot(range(len(errs)), errs, "o-", label=r["variant"])
    a1.set_xlabel("layer")
    a1.set_ylabel("relative error of the attention output")
    a1.set_title("attention-output error on the dense run's q/k/v", fontsize=9)
    layers = res["heads"][str(n)]["layers"]
    for name in (layers[0]["kept"] if layers else {}):
        a2.plot([x["layer"] for x in layers], [x["kept"][name]["mean"] for x in layers], "o-",
                label=name)
    a2.set_ylim(0, 1.02)
    a2.set_xlabel("layer")
    a2.set_ylabel("mass inside the pattern (mean over heads)")
    a2.set_title("mass each sparse pattern keeps", fontsize=9)
    for ax in (a1, a2):
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(f"{res['model']}, n = {n:,}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_fidelity_speed(res: dict, path: str) -> None:
    plt = _plt()
    enc = res["kind"] == "encoder"
    c = res["config"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for n in _lengths(res):
        for r in (x for x in res["rows"] if x["n"] == n):
            s, f = r["model_speedup"], r["fidelity"]
            y = min(f["cosine"], f["embedding_cosine"]) if enc else max(f["kl"], 1e-12)
            ax.errorbar([s["ratio"]], [y], xerr=[[s["ratio"] - s["low"]], [s["high"] - s["ratio"]]],
                        fmt="o", capsize=3)
            ax.annotate(f"{r['variant']} @{n}", (s["ratio"], y), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    adapted.bound_axis(ax, enc, c, "fidelity: min(cosine, embedding cosine)",
               "KL(dense || variant), nats/token")
    ax.axvline(1.0, color="gray", lw=0.8)
    ax.set_xlabel("model forward speed vs dense (quartile interval)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(res: dict, out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f) for f in ("bench.md", "bench.json", "mass_vs_window.png",
                                                 "layers.png", "fidelity_speed.png")]
    with open(paths[0], "w") as f:
        f.write(markdown(res))
    with open(paths[1], "w") as f:
        json.dump({**res, "title": title(res), "notes": notes(res)}, f, indent=1)
    plot_mass(res, paths[2])
    plot_layers(res, paths[3])
    plot_fidelity_speed(res, paths[4])
    if "adaptation" in res:
        paths.append(os.path.join(out_dir, adapted.CURVE_PNG))
        adapted.plot_curve(res, paths[-1])
    return paths

