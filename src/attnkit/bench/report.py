"""Writing a ``bench --inputs random`` result: rich table, markdown, JSON and log-log
plots (PNG). Times are min / median / max over the runs; speed ratios carry their
quartile interval and say "within noise" when it contains 1; exponents carry their
standard error."""
from __future__ import annotations

import json
import os

from rich.table import Table

from .timing import fmt_ratio

NOTE = ("Inputs: random q/k/v (not a model's): their attention is spread over every key, so "
        "each approximation's error here is an upper bound, not what a trained model sees "
        "(use --model). Sparse patterns run on attnkit's tiled kernel (PyTorch ops per tile) "
        "while dense runs SDPA's fused kernel: below the length where most tiles are skipped, a "
        "pattern is slower than dense whatever its pair count. Exponent: slope of log(time) on "
        "log(n) over every run, +- its standard error.")


def _ms(r) -> str:
    if "median_s" not in r:
        return "—"
    if "max_s" not in r:
        return f"{r['median_s'] * 1e3:,.1f}"
    return f"{r['min_s'] * 1e3:,.1f} / {r['median_s'] * 1e3:,.1f} / {r['max_s'] * 1e3:,.1f}"


def _mib(r) -> str:
    b = r.get("peak_bytes")
    return "?" if b is None else f"{b / 2**20:,.1f}"


def _cells(result: dict) -> list[list[str]]:
    rows = []
    for r in result["rows"]:
        s = result["variants"][r["variant"]]
        exp = "—" if s["exponent"] is None else f"{s['exponent']:.2f}"
        if s.get("exponent_stderr") is not None and s["exponent_stderr"] == s["exponent_stderr"]:
            exp += f" ± {s['exponent_stderr']:.2f}"
        err = "—" if "rel_error" not in r else f"{r['rel_error']:.1e}"
        sp = (fmt_ratio(r["speedup"]) if "speedup" in r else
              f"{r['speedup_vs_dense']:.2f}x" if "speedup_vs_dense" in r else "—")
        note = r.get("error", "")
        rows.append([r["variant"], f"{r['n']:,}", _ms(r), sp, _mib(r), exp, err, note])
    return rows


HEAD = ["variant", "n", "ms min / med / max", "speed vs dense", "peak MiB", "exponent",
        "rel. error (random q/k/v)", "note"]


def rich_table(result: dict, title: str) -> Table:
    """Fits an 80-column terminal: cells wrap at spaces, and where a column is narrower than
    a number the number folds onto the next line ('fold'), never cut to '…'."""
    t = Table(title=title)
    for h in HEAD:
        t.add_column(h, justify="left" if h in ("variant", "note") else "right",
                     no_wrap=h == "variant", overflow="fold")
    for row in _cells(result):
        t.add_row(*row)
    return t


def markdown(result: dict, title: str, recommendation: str) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(HEAD) + " |",
             "|" + "|".join("---" if h in ("variant", "note") else "---:" for h in HEAD) + "|"]
    lines += ["| " + " | ".join(c) + " |" for c in _cells(result)]
    lines += ["", f"**Recommendation:** {recommendation}", "", NOTE, ""]
    return "\n".join(lines)


def plot(result: dict, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, s in result["variants"].items():
        pts = [r for r in result["rows"] if r["variant"] == name and "median_s" in r]
        if not pts:
            continue
        ns = [r["n"] for r in pts]
        exp = "" if s["exponent"] is None else f" (n^{s['exponent']:.2f})"
        if s.get("exponent_stderr") is not None and s["exponent_stderr"] == s["exponent_stderr"]:
            exp = f" (n^{s['exponent']:.2f}±{s['exponent_stderr']:.2f})"
        med = [r["median_s"] for r in pts]
        lo = [m - r.get("min_s", m) for m, r in zip(med, pts)]
        hi = [r.get("max_s", m) - m for m, r in zip(med, pts)]
        ax_t.errorbar(ns, med, yerr=[lo, hi], fmt="o-", capsize=3, label=name + exp)
        mem = [(r["n"], r["peak_bytes"] / 2**20) for r in pts if r.get("peak_bytes")]
        if mem:
            ax_m.plot(*zip(*mem), "o-", label=name)
    for ax, lab in ((ax_t, "time (s): median, bars min-max"), (ax_m, "peak extra memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length n")
        ax.set_ylabel(lab)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict, out_dir: str, title: str, recommendation: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f) for f in ("bench.md", "bench.json", "bench.png")]
    with open(paths[0], "w") as f:
        f.write(markdown(result, title, recommendation))
    with open(paths[1], "w") as f:
        json.dump({**result, "title": title, "recommendation": recommendation, "note": NOTE}, f,
                  indent=1)
    plot(result, paths[2], title)
    return paths
