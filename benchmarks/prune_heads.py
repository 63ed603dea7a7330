"""The pruning curve of a BERT-family encoder (default: the bundled MiniLM), attnkit inside.

    python benchmarks/prune_heads.py [--model minilm] [--seq 128] [--out docs/heads]

1. Importance: every head zero-ablated on the first ``--calib`` windows of the shipped
   text (``attnkit/data/bench_text.txt``), 1 - cos of the pooled embedding, averaged.
2. Curve: heads removed (masked) in that order, least important first; bench's fidelity
   (token cosine, pooled-embedding cosine) against the full model on the *other* windows
   (held out). The largest count whose pooled cosine stays >= ``--min-cosine`` on every
   held-out window (worst window) is the pruning point.
3. Real removal: that model saved with the heads sliced out of the projections
   (:func:`attnkit.bench.prune.save_pruned`), reloaded (:func:`load_pruned`), checked
   equal to the masked model, and timed against the full model (interleaved rounds, one
   thread, a batch of the held-out windows).
Writes ``pruning-{zero,mean}.json`` and ``.png`` to ``--out``; times are wall and thread CPU time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch


def windows(tok, text: str, seq: int) -> list[dict]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n = seq - 2
    out = []
    for s in range(0, len(ids) - n + 1, n):
        w = torch.tensor([[tok.cls_token_id, *ids[s:s + n], tok.sep_token_id]])
        out.append({"input_ids": w, "attention_mask": torch.ones_like(w)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--calib", type=int, default=2)
    ap.add_argument("--max-heldout", type=int, default=8)
    ap.add_argument("--min-cosine", type=float, default=0.99)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ablate", choices=("zero", "mean"), default="zero",
                    help="how a removed head is replaced: zero, or its mean output on the "
                    "calibration windows folded into the output projection's bias")
    ap.add_argument("--rounds", type=int, default=15, help="timing rounds")
    ap.add_argument("--out", default="docs/heads")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from importlib.resources import files

    from attnkit.analysis import causal as C
    from attnkit.bench import prune as P
    from attnkit.analysis.causal_report import open_model
    from attnkit.bench.timing import interleaved, ratio
    model, tok, plan, _ = open_model(a.model, "prune")
    text = (files("attnkit") / "data" / "bench_text.txt").read_text()
    ws = windows(tok, text, a.seq)
    calib, held = ws[:a.calib], ws[a.calib:a.calib + a.max_heldout]
    t0 = time.perf_counter()
    means = P.head_means(model, calib) if a.ablate == "mean" else None
    mlist = None if means is None else [means[li] for li in range(len(means))]
    eff = None
    for w in calib:                  # mean: the calibration mean the pruned model will use
        res = C.head_importance(C.Probe(model, w, C.Target("embedding", "pooled")),
                                a.ablate, gradient=False, means=mlist)
        e = {(r["layer"], r["head"]): r["effect"] for r in res["rows"]}
        eff = e if eff is None else {k: eff[k] + e[k] for k in eff}
    order = sorted(eff, key=lambda k: eff[k])                    # least important first
    t_imp = time.perf_counter() - t0
    n = len(order)
    curve = P.pruning_curve(model, held, order, list(range(0, n + 1, 2)), means)
    ok = [r for r in curve if r["embedding_cosine_min"] >= a.min_cosine]
    best = max(ok, key=lambda r: r["removed"]) if ok else curve[0]
    k = best["removed"]
    points = sorted({k, n // 2})                 # the bound, and half the heads for scale
    smalls, sizes, diffs = {}, {}, {}
    for kk in points:
        removed = _removed(order[:kk])
        with tempfile.TemporaryDirectory() as d:
            P.save_pruned(model, removed, d, means)
            smalls[kk] = P.load_pruned(d)
            sizes[kk] = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)
                            if f.endswith(".safetensors"))
        with torch.no_grad(), P.masked(model, removed, means):
            ref = [model(**w).last_hidden_state for w in held]
        with torch.no_grad():
            diffs[kk] = max(float((smalls[kk](**w).last_hidden_state - r).abs().max())
                            for w, r in zip(held, ref))
    removed = _removed(order[:k])
    batch = {key: torch.cat([w[key] for w in held]) for key in held[0]}
    fns = {"full": lambda: model(**batch)}
    fns.update({f"pruned_{kk}": (lambda m: lambda: m(**batch))(smalls[kk]) for kk in points})
    with torch.no_grad():
        t = interleaved(fns, budget_s=40.0, min_runs=7)
        cpu = _cpu_times(fns, a.rounds)
    speed = {kk: ratio(t["full"], t[f"pruned_{kk}"]) for kk in points}
    cpu_speed = {kk: ratio(cpu["full"], cpu[f"pruned_{kk}"]) for kk in points}
    diff, small, size = diffs[k], smalls[k], sizes[k]
    doc = {"model": a.model, "ablate": a.ablate, "seq": a.seq, "cpu_time": cpu,
           "cpu_speed": {str(kk): cpu_speed[kk] for kk in points}, "calibration_windows": len(calib),
           "heldout_windows": len(held), "min_cosine": a.min_cosine, "order": order,
           "importance_seconds": t_imp, "curve": curve, "removed_at_bound": k,
           "fraction_at_bound": k / n, "point": best, "pruned_heads": removed,
           "pruned_vs_masked_max_abs_diff": diff, "pruned_safetensors_bytes": size,
           "full_params": sum(p.numel() for p in model.parameters()),
           "pruned_params": sum(p.numel() for p in small.parameters()),
           "timing": t, "speed": speed[k], "speed_points": {str(kk): {
               "removed": kk, "speed": speed[kk], "max_abs_diff_vs_masked": diffs[kk],
               "safetensors_bytes": sizes[kk], "fidelity": curve[kk // 2]} for kk in points},
           "threads": a.threads,
           "batch": list(batch["input_ids"].shape), "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine()}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f"pruning-{a.ablate}.json"), "w") as f:
        json.dump(doc, f, indent=1)
    _plot(doc, os.path.join(a.out, f"pruning-{a.ablate}.png"))
    print(f"{k} of {n} heads ({k / n:.0%}) removable at pooled cosine >= {a.min_cosine} "
          f"(worst held-out window {best['embedding_cosine_min']:.4f}, mean "
          f"{best['embedding_cosine']:.4f}, token cosine {best['cosine']:.4f}); pruned vs "
          f"masked max |diff| {diff:.1e}; forward {t['full']['median_s'] * 1e3:.0f} ms -> "
          f"{t[f'pruned_{k}']['median_s'] * 1e3:.0f} ms ({doc['speed']['ratio']:.2f}x, "
          f"{doc['speed']['low']:.2f}-{doc['speed']['high']:.2f})")
    for kk in points:
        sp = speed[kk]
        cs = cpu_speed[kk]
        print(f"  {kk} heads removed: forward {sp['ratio']:.2f}x ({sp['low']:.2f}-"
              f"{sp['high']:.2f}) wall, {cs['ratio']:.2f}x ({cs['low']:.2f}-{cs['high']:.2f}) "
              f"thread CPU time, pooled cosine {curve[kk // 2]['embedding_cosine']:.4f}, "
              f"pruned vs masked {diffs[kk]:.1e}, {sizes[kk] / 1e6:.1f} MB")
    return 0


def _cpu_times(fns: dict, rounds: int) -> dict:
    """Thread CPU time per call (``time.thread_time``), rotated rounds: on a shared
    machine it counts this thread's work, not the time other processes held the core."""
    from attnkit.bench.timing import summary
    names = list(fns)
    for f in fns.values():
        f()
    ts: dict = {nm: [] for nm in names}
    for r in range(rounds):
        for nm in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.thread_time()
            fns[nm]()
            ts[nm].append(time.thread_time() - t0)
    return {nm: summary(v) for nm, v in ts.items()}


def _removed(heads) -> dict:
    out: dict = {}
    for li, h in heads:
        out.setdefault(li, []).append(h)
    return out


def _plot(doc, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    c = doc["curve"]
    x = [r["fraction"] for r in c]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(x, [r["embedding_cosine"] for r in c], "o-", ms=3, label="pooled cosine (mean)")
    ax.plot(x, [r["embedding_cosine_min"] for r in c], "s-", ms=3,
            label="pooled cosine (worst window)")
    ax.plot(x, [r["cosine"] for r in c], "^-", ms=3, label="token cosine (mean)")
    ax.axhline(doc["min_cosine"], color="grey", lw=0.8, ls="--")
    ax.axvline(doc["fraction_at_bound"], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("fraction of heads removed (least important first)")
    ax.set_ylabel("cosine to the full model")
    ax.set_ylim(max(0.0, min(min(r["cosine"], r["embedding_cosine_min"]) for r in c) - 0.02),
                1.002)
    ax.set_title(f"{doc['model']}: heads removed ({doc['ablate']}) vs fidelity on {doc['heldout_windows']} "
                 f"held-out windows of {doc['seq']} tokens", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
