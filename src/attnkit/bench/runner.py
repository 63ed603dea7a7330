"""``attnkit bench --inputs random``: time, memory, scaling exponent and error per
attention variant on *random* q/k/v (no model: see :mod:`attnkit.bench.model_bench`).

Every (variant, n) point runs in its own process (:func:`variant_point`); after a
warm-up, runs repeat until the median is stable or the time budget is spent
(:func:`attnkit.bench.timing.timed_stable`: min / quartiles / median / max); the dense
variant is always measured as the baseline, so speed ratios come from the same run and
carry an interval (``within_noise`` when it contains 1). The scaling exponent is the
least-squares slope of log(time) against log(n) over every run, with its standard
error; the error is ``||out - ref||_F / ||ref||_F`` against full softmax attention
(float64) on the same random inputs, at every n up to ``error_max_n`` -- random q/k/v
spread attention over all keys, so every approximation looks far off here; real
attention is measured by ``attnkit bench --model``.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import torch

from ..engine.variants import parse_variant
from .measure import PeakMemory, run_isolated
from .points import DTYPES
from .timing import fit_exponent
from .timing import ratio, timed_stable

__all__ = ["Workload", "variant_point", "run_bench", "recommend",
           "parse_size", "parse_seqs"]


@dataclass
class Workload:
    """The shape of the attention problem. Default: GPT-2 small (12 heads of 64), causal."""
    seqs: list[int] = field(default_factory=lambda: [1024, 2048, 4096])
    batch: int = 1
    heads: int = 12
    kv_heads: int | None = None
    head_dim: int = 64
    dtype: str = "fp32"
    device: str = "cpu"
    causal: bool = True
    backward: bool = False


def parse_seqs(text: str) -> list[int]:
    """``"1k,4k,16384"`` -> [1024, 4096, 16384] (k = 1024)."""
    out = []
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*([kK]?)\s*", part)
        if not m or int(m.group(1)) == 0:
            raise ValueError(f"--seq: expected positive lengths like '1k,4k,16384', got {part!r}")
        out.append(int(m.group(1)) * (1024 if m.group(2) else 1))
    return sorted(set(out))


def parse_size(text: str) -> int:
    """``"8GB"``, ``"512MiB"``, ``"1.5g"`` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), flags=re.I)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"--memory-budget: expected a size like '8GB' or '512MB', got {text!r}")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))


def variant_point(*, variant: str, n: int, batch: int, heads: int, kv_heads: int | None,
                  head_dim: int, dtype: str, device: str, causal: bool, backward: bool,
                  repeats: int = 5, error_max_n: int = 4096, seed: int = 0,
                  budget_s: float = 10.0, threads: int = 0) -> dict:
    """Measure one variant at one n (run in its own process by :func:`run_bench`);
    ``threads`` > 0 sets torch's CPU threads."""
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    var = parse_variant(variant)
    dt = DTYPES[dtype]
    kvh = kv_heads or heads
    q = torch.randn(batch, heads, n, head_dim, device=device, dtype=dt)
    k = torch.randn(batch, kvh, n, head_dim, device=device, dtype=dt)
    v = torch.randn(batch, kvh, n, head_dim, device=device, dtype=dt)
    if backward:
        for t in (q, k, v):
            t.requires_grad_()

    def step():
        out = var.attend(q, k, v, causal=causal)
        if backward:
            out.backward(torch.ones_like(out))
            q.grad = k.grad = v.grad = None
        return out

    with torch.set_grad_enabled(backward):
        with PeakMemory(device) as pm:
            out = step()
        sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else None
        t = timed_stable(step, min_runs=repeats, budget_s=budget_s, warmup=0, sync=sync)
    res = {**t, "peak_bytes": pm.peak_bytes, "pairs": var.pairs(n, causal)}
    if n <= error_max_n:
        from ..engine.functional import attention
        from .. import masks as M
        with torch.no_grad():
            q64, k64, v64 = (x.detach().double() for x in (q, k, v))
            ref = attention(q64, k64, v64, mask=M.causal() if causal else None, backend="sdpa")
            res["rel_error"] = float((out.detach().double() - ref).norm() / ref.norm())
    return res


def run_bench(wl: Workload, variants: list[str], *, repeats: int = 5, timeout: float = 600,
              error_max_n: int = 4096, on_point=None, budget_s: float = 10.0,
              threads: int = 0) -> dict:
    """Measure every (variant, n); returns {"workload", "rows", "variants"}.

    ``dense`` is always measured (the baseline for speed ratios). ``on_point(i, total,
    label)`` is called before each point (progress bars).
    """
    names = ["dense"] + [v for v in variants if v != "dense"]
    for v in names:
        parse_variant(v)  # fail early, before any process starts
    rows, total, i = [], len(names) * len(wl.seqs), 0
    for n in wl.seqs:
        base = None
        for name in names:
            if on_point:
                on_point(i, total, f"{name} at n={n:,}")
            i += 1
            kw = dict(variant=name, n=n, batch=wl.batch, heads=wl.heads, kv_heads=wl.kv_heads,
                      head_dim=wl.head_dim, dtype=wl.dtype, device=wl.device, causal=wl.causal,
                      backward=wl.backward, repeats=repeats, error_max_n=error_max_n,
                      budget_s=budget_s, threads=threads)
            r = run_isolated("attnkit.bench.runner:variant_point", kw, timeout=timeout)
            row = {"variant": name, "n": n, **r}
            if name == "dense":
                base = r
            if "median_s" in r and base and "median_s" in base:
                row["speedup_vs_dense"] = base["median_s"] / r["median_s"]
                row["speedup"] = ratio(base, r)
            rows.append(row)
    summary = {}
    for name in names:
        mine = [r for r in rows if r["variant"] == name and "median_s" in r]
        errs = [r["rel_error"] for r in mine if "rel_error" in r]
        fit = fit_exponent([r["n"] for r in mine], [r.get("times_s") or [r["median_s"]]
                                                 for r in mine])
        summary[name] = {
            "exponent": None if fit is None else fit["exponent"],
            "exponent_stderr": None if fit is None else fit["stderr"],
            "rel_error": max(errs) if errs else None,
        }
    return {"mode": "random", "inputs": "random", "workload": asdict(wl), "rows": rows,
            "variants": summary}


def recommend(result: dict, *, memory_budget: int | None = None,
              error_bound: float = 0.05) -> tuple[str | None, str]:
    """The fastest variant at the largest n whose error is within ``error_bound`` and whose
    peak memory fits ``memory_budget``; and the reason, with the numbers."""
    n = max(r["n"] for r in result["rows"])
    cands, refused = [], []
    for r in result["rows"]:
        if r["n"] != n or "median_s" not in r:
            continue
        err = result["variants"][r["variant"]]["rel_error"]
        err = 0.0 if r["variant"] == "dense" else err
        if err is None:
            refused.append(f"{r['variant']} (error not measured)")
        elif err > error_bound:
            refused.append(f"{r['variant']} (error {err:.1e} > {error_bound:g})")
        elif memory_budget is not None and (r.get("peak_bytes") or 0) > memory_budget:
            refused.append(f"{r['variant']} (memory {r['peak_bytes'] / 2**20:,.0f} MiB over "
                           f"budget)")
        else:
            cands.append((r["median_s"], r, err))
    if not cands:
        return None, f"no variant fits at n={n:,}: " + "; ".join(refused)
    t, r, err = min(cands, key=lambda c: c[0])
    sp = r.get("speedup")
    noise = " (within noise)" if sp and sp["within_noise"] else ""
    why = (f"{r['variant']}: fastest at n={n:,} ({t * 1e3:,.1f} ms, "
           f"{r.get('speedup_vs_dense', 1.0):.1f}x dense{noise}) with error {err:.1e} <= "
           f"{error_bound:g} on random q/k/v")
    if r.get("peak_bytes") is not None:
        why += f" and peak memory {r['peak_bytes'] / 2**20:,.1f} MiB"
        if memory_budget is not None:
            why += f" <= budget {memory_budget / 2**30:.1f} GiB"
    if refused:
        why += "; excluded: " + ", ".join(refused)
    return r["variant"], why
