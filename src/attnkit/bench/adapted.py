"""The adapted part of an ``attnkit bench --adapt N`` report, drawn from data.

``res["adaptation"]`` is filled above this layer (:mod:`attnkit.adaptation.sweep`: bench
does not import the trainer): ``steps``, ``every``, ``held_out`` (which text the adapted
fidelity is measured on), ``dir`` and ``runs``, one per (variant, length)::

    {"variant", "n", "learned", "status": "adapted" | "not adapted", "reason",
     "steps", "stage1_steps", "seconds", "held_out_windows", "dir",
     "history": [{"step": 0, <bench's metric names>}, ..., {"step": N, ...}],
     "zero_shot": history[0], "adapted": history[-1],
     "timing": {...}}     # learned variants only: speed/memory of the adapted directory

This module recommends from it (:func:`recommend_adapted`: which variant, at which length,
after how many steps keeps the bound), and writes its tables and ``adapt_curve.png``
(fidelity vs adaptation steps, one line per variant and length).
"""
from __future__ import annotations

import re

from .fidelity import passes

__all__ = ["recommend_adapted", "tables", "markdown_lines", "plot_curve", "CURVE_PNG"]

CURVE_PNG = "adapt_curve.png"


def _bound(res: dict, m: dict) -> tuple[bool, str]:
    c = res["config"]
    return passes(m, res["kind"], min_cosine=c["min_cosine"], max_kl=c["max_kl"])


def bounded(kind: str, m: dict) -> float:
    """The one number the bound checks: min(cosine, embedding cosine), or the KL."""
    return min(m["cosine"], m["embedding_cosine"]) if kind == "encoder" else m["kl"]


def speed(res: dict, run: dict) -> dict | None:
    """Speed and memory of the adapted model: a learned variant's own timing, else bench's
    zero-shot row of the variant at that length (the same operations at the same shapes)."""
    if run.get("timing"):
        return run["timing"]
    return next((r for r in res["rows"] if r["variant"] == run["variant"]
                 and r["n"] == run["n"]), None)


def kept_from(res: dict, run: dict) -> int | None:
    """The first evaluated step from which on the bound holds to the end (None: it does
    not hold at the last step)."""
    first = None
    for h in run["history"]:
        ok, _ = _bound(res, h)
        first = (h["step"] if first is None else first) if ok else None
    return first


def _value(why: str) -> str:
    """``cosine 0.9370 < 0.99`` -> ``cosine 0.9370``."""
    return re.split(r" [<>]=? ", why)[0]


def recommend_adapted(res: dict) -> dict:
    """``{"variant", "keeps", "n", "steps", "text", "reasons"}``: the fastest adapted
    variant keeping the bound (and ``--memory-budget``) at the largest length where one
    does; dense (exact) when its model forward is not measurably faster; ``variant`` None
    when none keeps it."""
    A, c = res["adaptation"], res["config"]
    budget = c.get("memory_budget")
    reasons, cands = [], {}
    for r in A["runs"]:
        tag = f"{r['variant']} at n={r['n']:,}"
        if r["status"] != "adapted":
            reasons.append(f"{tag}: not adapted ({r['reason']})")
            continue
        ok, why = _bound(res, r["adapted"])
        zero = _value(_bound(res, r["zero_shot"])[1])
        if not ok:
            reasons.append(f"{tag}: after {r['steps']} steps {why} (zero-shot {zero})")
            continue
        sp = speed(res, r) or {}
        peak = sp.get("peak_bytes")
        if budget is not None and peak is not None and peak > budget:
            reasons.append(f"{tag}: keeps the bound but its peak memory {peak / 2**20:,.1f} MiB "
                           f"> budget {budget / 2**20:,.1f} MiB")
            continue
        s = sp.get("model_speedup")
        cands.setdefault(r["n"], []).append((r, s))
        reasons.append(f"{tag}: keeps the bound from step {kept_from(res, r)} of {r['steps']} "
                       f"({why}; zero-shot {zero})" + (
                           f"; model forward {s['ratio']:.2f}x dense"
                           + (" (within noise)" if s["within_noise"] else "") if s else ""))
    steps = A["steps"]
    top = max((r["n"] for r in A["runs"]), default=None)
    if not cands:
        return {"variant": None, "keeps": None, "n": top, "steps": steps, "reasons": reasons,
                "text": f"none: no variant keeps the bound after {steps} adaptation steps at "
                        f"any length asked. " + "; ".join(reasons)}
    n = max(cands)
    r, s = max(cands[n], key=lambda t: t[1]["ratio"] if t[1] else 0.0)
    _, why = _bound(res, r["adapted"])
    zero = _value(_bound(res, r["zero_shot"])[1])
    keeps = (f"{r['variant']} at n={n:,} keeps the bound after {r['steps']} adaptation steps "
             f"(from step {kept_from(res, r)} on; held-out {why}, zero-shot {zero})")
    where = "" if n == top else f"; at n={top:,} no adapted variant keeps it"
    if s is None:
        head, best = f"{keeps}; its speed was not measured", r["variant"]
    elif s["within_noise"]:
        head, best = (f"dense at n={n:,}: {keeps}, but its model forward is not measurably "
                      f"faster ({s['ratio']:.2f}x, interval {s['low']:.2f}–{s['high']:.2f}); "
                      f"dense is exact"), "dense"
    else:
        head, best = (f"{keeps}; model forward {s['ratio']:.2f}x dense (interval "
                      f"{s['low']:.2f}–{s['high']:.2f})"), r["variant"]
    return {"variant": best, "keeps": r["variant"], "n": n, "steps": r["steps"],
            "reasons": reasons, "text": head + where + ". " + "; ".join(reasons)}


def _fid(kind: str, m: dict | None) -> str:
    if not m:
        return "—"
    if kind == "encoder":
        return (f"{m['cosine']:.4f} / {m['embedding_cosine']:.4f} "
                f"({m['embedding_cosine_min']:.3f})")
    return f"KL {m['kl']:.2e}, top-1 {m['top1_agreement']:.3f}, ppl {m['ppl_change']:+.1%}"


def _curve(kind: str, run: dict) -> str:
    fmt = "{:.3f}" if kind == "encoder" else "{:.2e}"
    return ", ".join(f"{h['step']}: " + fmt.format(bounded(kind, h)) for h in run["history"])


HEAD = ["variant", "n", "zero-shot (held-out)", "adapted (held-out)", "bound kept from step",
        "model speed vs dense", "peak MiB", "adapt time", "curve (step: fidelity)"]


def _rows(res: dict) -> list[list[str]]:
    kind, out = res["kind"], []
    for r in res["adaptation"]["runs"]:
        if r["status"] != "adapted":
            out.append([r["variant"], f"{r['n']:,}", "—", f"not adapted: {r['reason']}"] +
                       ["—"] * 5)
            continue
        sp = speed(res, r) or {}
        s = sp.get("model_speedup")
        ratio = "—" if not s else f"{s['ratio']:.2f}x" + (" noise" if s["within_noise"] else "")
        if r.get("timing"):
            ratio = r["timing"].get("error") or ratio + " (adapted dir)"
        peak = sp.get("peak_bytes")
        k = kept_from(res, r)
        out.append([r["variant"], f"{r['n']:,}", _fid(kind, r["zero_shot"]),
                    f"{_fid(kind, r['adapted'])} after {r['steps']}",
                    "—" if k is None else str(k), ratio,
                    "?" if peak is None else f"{peak / 2**20:,.1f}", f"{r['seconds']:.0f} s",
                    _curve(kind, r)])
    return out


def _what(res: dict) -> str:
    A = res["adaptation"]
    fid = ("cosine / emb. cosine (worst window); the curve and the bound: min(cosine, emb. "
           "cosine)" if res["kind"] == "encoder" else "KL nats/token, top-1 agreement, ppl "
           "change; the curve and the bound: KL")
    where = f"adapted models in {A['dir']}" if A.get("dir") else \
        "adapted models not kept (give --out or --adapt-dir to keep them)"
    return (f"each variant adapted for {A['steps']} steps with attnkit adapt (attention "
            f"transfer, then distillation), held-out fidelity every {A['every']} "
            f"step{'s' if A['every'] != 1 else ''} on "
            f"{A['held_out']}; zero-shot and adapted on the same held-out windows "
            f"(bench's tables above: the first windows of the text); {fid}; speed and memory: "
            f"bench's zero-shot row (same operations, same shapes), learned variants timed "
            f"on their adapted directory; {where}")


def tables(res: dict) -> list:
    """A compact terminal table (the full cells and the curve are in bench.md)."""
    from rich.table import Table
    kind, A = res["kind"], res["adaptation"]
    what = "min(cosine, emb. cosine)" if kind == "encoder" else "KL nats/token"
    t = Table(title=f"Held-out fidelity ({what}), zero-shot and after {A['steps']} adaptation "
                    f"steps; speed vs dense ('noise' = within noise, '+' = timed on the "
                    f"adapted directory)")
    for c in ("variant", "n", "zero-shot", "adapted", "kept from step", "model speed", "MiB",
              "adapt s"):
        t.add_column(c, justify="left" if c == "variant" else "right")
    fmt = "{:.4f}" if kind == "encoder" else "{:.2e}"
    for r in A["runs"]:
        if r["status"] != "adapted":
            t.add_row(r["variant"], f"{r['n']:,}", "—", "not adapted (below)", *["—"] * 4)
            continue
        sp = speed(res, r) or {}
        s, peak, k = sp.get("model_speedup"), sp.get("peak_bytes"), kept_from(res, r)
        t.add_row(r["variant"], f"{r['n']:,}", fmt.format(bounded(kind, r["zero_shot"])),
                  fmt.format(bounded(kind, r["adapted"])), "—" if k is None else str(k),
                  "—" if not s else f"{s['ratio']:.2f}x" + (" noise" if s["within_noise"]
                                                           else "")
                  + ("+" if r.get("timing") else ""),
                  "?" if peak is None else f"{peak / 2**20:,.1f}", f"{r['seconds']:.0f}")
    return [t]


def markdown_lines(res: dict) -> list[str]:
    rows = _rows(res)
    rec = res["adaptation"]["recommendation"]
    A = res["adaptation"]
    fid = ("cosine / emb. cosine (worst window); curve: min(cosine, emb. cosine), what the "
           "bound checks" if res["kind"] == "encoder" else "curve: KL, what the bound checks")
    return ([f"**After {A['steps']} adaptation steps** (held-out: {A['held_out']}; {fid}; "
             "see the notes)", "",
             "| " + " | ".join(HEAD) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(HEAD))) + "|"] +
            ["| " + " | ".join(r) + " |" for r in rows] +
            ["", f"**Recommendation after adaptation:** {rec['text']}", "",
             f"![fidelity vs adaptation steps]({CURVE_PNG})", ""])


def notes(res: dict) -> list[str]:
    return [f"Adaptation: {_what(res)}."]


def plot_curve(res: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    kind, c = res["kind"], res["config"]
    runs = [r for r in res["adaptation"]["runs"] if r["status"] == "adapted"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in runs:
        xs = [h["step"] for h in r["history"]]
        ax.plot(xs, [bounded(kind, h) for h in r["history"]], "o-", ms=3,
                label=f"{r['variant']} @{r['n']}")
    for s1 in sorted({r["stage1_steps"] for r in runs if 0 < r["stage1_steps"] < r["steps"]}):
        ax.axvline(s1, color="gray", ls=":", lw=1)
        ax.annotate("stage 1 | 2", (s1, 0.02), xycoords=("data", "axes fraction"), fontsize=7,
                    xytext=(3, 0), textcoords="offset points")
    bound_axis(ax, kind == "encoder", c, "held-out fidelity: min(cosine, embedding cosine)",
               "held-out KL(dense || adapted), nats/token")
    ax.set_xlabel("adaptation steps")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title(f"{res['model']}: fidelity vs adaptation steps", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def bound_axis(ax, encoder: bool, c: dict, enc_label: str, dec_label: str) -> None:
    """The fidelity axis of a plot: bench's bound as a dashed line (``--min-cosine`` for
    encoders; ``--max-kl`` on a log scale for decoders) and the axis label."""
    if encoder:
        ax.axhline(c["min_cosine"], color="tab:red", ls="--", lw=1, label="--min-cosine")
        ax.set_ylabel(enc_label)
    else:
        ax.set_yscale("log")
        ax.axhline(c["max_kl"], color="tab:red", ls="--", lw=1, label="--max-kl")
        ax.set_ylabel(dec_label)
