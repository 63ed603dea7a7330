"""``attnkit bench --model``: which variant should *this* model use, on real text.

For every length n in ``seqs`` the text is cut into n-token windows (at most
``max_windows``). On each window the dense model runs once (outputs, each layer's
q/k/v, the attention weights), then every variant is swapped in (all layers, or
``layers``) and compared with it (:mod:`attnkit.bench.fidelity`); the weights feed the
per-head analysis (:mod:`attnkit.bench.heads`). On the first window every variant is
then timed -- the attention operation of layer 0 on its real q/k/v, and the whole model
forward -- in interleaved rounds (:mod:`attnkit.bench.timing`), and its peak extra
memory during one forward is measured.

The recommendation (:func:`recommend`) is made at the largest n: the variant with the
fastest model forward among those meeting the fidelity bound (``min_cosine`` for
encoders, ``max_kl`` for decoders) and the memory budget -- unless its speed-up over
dense is within noise, in which case dense (exact) is recommended and the reason says so.
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field

import torch

from ..engine.variants import Variant, parse_variant
from .fidelity import Accumulator, passes
from .heads import HeadStats
from .measure import PeakMemory
from .timing import interleaved, ratio

__all__ = ["ModelBenchConfig", "check_config", "validate", "run_model_bench", "recommend",
           "machine"]


@dataclass
class ModelBenchConfig:
    seqs: list[int] = field(default_factory=lambda: [256])
    variants: list[str] = field(default_factory=lambda: ["dense"])
    layers: list[int] | None = None         # attention layers that get the variant
    max_windows: int = 8                    # windows of the text per length
    min_cosine: float = 0.99                # encoders: cosine and embedding cosine
    max_kl: float = 0.02                    # decoders: nats per token
    memory_budget: int | None = None        # bytes of peak extra memory per forward
    time_budget_s: float = 10.0             # timing per length, all variants together
    min_runs: int = 5
    max_runs: int = 200
    rel_tol: float = 0.02                   # stop when the median's std error <= 2%


def machine(device: str) -> dict:
    import os
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "device": device}
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


def _variants(names: list[str]) -> list[Variant]:
    vs = [parse_variant(v) for v in names]
    return [parse_variant("dense")] + [v for v in vs if v.name != "dense"]


def check_config(cfg: ModelBenchConfig) -> None:
    """The bounds that need neither the model nor the text; ValueError naming the option."""
    if not 0.0 <= cfg.min_cosine <= 1.0:
        raise ValueError(f"--min-cosine: expected a number in [0, 1], got {cfg.min_cosine:g}")
    if not cfg.max_kl >= 0.0:
        raise ValueError(f"--max-kl: expected a number >= 0, got {cfg.max_kl:g}")
    if cfg.max_windows < 1:
        raise ValueError(f"--max-windows: expected an int >= 1, got {cfg.max_windows}")
    if not cfg.time_budget_s > 0:
        raise ValueError(f"--time-budget: expected seconds > 0, got {cfg.time_budget_s:g}")
    if cfg.min_runs < 1:
        raise ValueError(f"--repeats: expected an int >= 1, got {cfg.min_runs}")
    if cfg.memory_budget is not None and cfg.memory_budget <= 0:
        raise ValueError(f"--memory-budget: expected a size > 0, got {cfg.memory_budget}")
    if cfg.layers is not None and (not cfg.layers or min(cfg.layers) < 0):
        raise ValueError(f"--layers: expected layer numbers >= 0, got {cfg.layers}")
    if not cfg.seqs:
        raise ValueError("--seq: expected at least one length")


def validate(source, text: str, cfg: ModelBenchConfig) -> None:
    """Every check that needs no measurement; ValueError naming the argument."""
    check_config(cfg)
    if not text.strip():
        raise ValueError("--text: the file is empty (expected plain text to run the model on)")
    for n in cfg.seqs:
        if not 2 <= n <= source.max_tokens:
            raise ValueError(f"--seq: expected lengths in 2..{source.max_tokens} (the model's "
                             f"position limit), got {n}")
    tokens = source.count_tokens(text)
    longest = max(cfg.seqs)
    if not source.windows(text, longest):
        raise ValueError(f"--text: has {tokens} tokens ({source.tokenizer_name} tokenizer, "
                         f"special tokens included); --seq {longest} needs at least one full "
                         f"window of {longest}")
    if cfg.layers is not None:
        bad = [i for i in cfg.layers if not 0 <= i < source.n_layers]
        if bad:
            raise ValueError(f"--layers: expected layer numbers in 0..{source.n_layers - 1}, "
                             f"got {cfg.layers}")
    for v in _variants(cfg.variants):
        for n in sorted(set(cfg.seqs)):
            try:
                source.check_variant(v, n)
            except ValueError as e:
                raise ValueError(f"--variants: {v.text!r}: {e}") from None


def _sync(device):
    if str(device).startswith("cuda"):
        return torch.cuda.synchronize
    return None


def _fix_malloc() -> str:
    """Make freed large CPU blocks go back to the OS at once (glibc), so that the
    process's high-water mark shows each forward's own peak."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 64 * 1024) and libc.mallopt(-1, 0)  # M_MMAP_THRESHOLD, M_TRIM
        return " (glibc mmap threshold 64 KiB)" if ok else ""
    except (OSError, AttributeError):
        return ""


WEIGHTS_BYTES = 256 * 2**20  # dense weights held at once for the per-head analysis


def _head_evidence(source, ids, n, variants, cfg, stats) -> None:
    """Feed one window's dense weights to ``stats``, a chunk of layers at a time."""
    L = source.n_layers
    per = max(1, WEIGHTS_BYTES // (source.n_heads * n * n * 4))
    for c0 in range(0, L, per):
        layers = list(range(c0, min(L, c0 + per)))
        source.apply("dense", n)
        weights = source.weights(ids, layers)
        stats.add(weights, new_window=c0 == 0)
        for v in variants:
            if v.is_sparse:
                source.apply(v, n, cfg.layers)
                stats.add_pattern(v.text, weights, {i: source.pattern_mask(i, n) for i in layers})


def _one_length(source, text, n, variants, cfg, on_step) -> tuple[list[dict], dict]:
    L, kind = source.n_layers, source.kind
    wins = source.windows(text, n)[:cfg.max_windows]
    stats = HeadStats(n, L, source.n_heads, causal=kind == "decoder")
    acc = {v.text: Accumulator(kind, L) for v in variants}
    served = {}
    for w, ids in enumerate(wins):
        if on_step:
            on_step(f"fidelity at n={n:,}, window {w + 1}/{len(wins)}")
        _head_evidence(source, ids, n, variants, cfg, stats)
        source.apply("dense", n)
        dense = source.run(ids)
        qkv = source.attention_inputs(ids)
        d_att = [source.attend(i, *qkv[i]) for i in range(L)]
        for v in variants:
            source.apply(v, n, cfg.layers)
            acc[v.text].add_outputs(dense, source.run(ids), ids)
            with torch.no_grad():
                for i in range(L):
                    acc[v.text].add_layer(i, d_att[i], source.attend(i, *qkv[i]))
            if w == 0:
                layer = cfg.layers[0] if cfg.layers else 0
                served[v.text] = source.served_by(layer, *qkv[layer])
    # -- speed and memory on the first window ---------------------------------------
    ids = wins[0]
    layer = cfg.layers[0] if cfg.layers else 0
    q, k, v_ = source.attention_inputs(ids)[layer]
    setups = {v.text: (lambda v=v: source.apply(v, n, cfg.layers)) for v in variants}
    common = dict(min_runs=cfg.min_runs, max_runs=cfg.max_runs, budget_s=cfg.time_budget_s / 2,
                  rel_tol=cfg.rel_tol, sync=_sync(source.device), setup=setups)
    if on_step:
        on_step(f"timing the attention of layer {layer} at n={n:,}")
    with torch.no_grad():
        t_att = interleaved({v.text: (lambda: source.attend(layer, q, k, v_))
                             for v in variants}, **common)
    if on_step:
        on_step(f"timing the model forward at n={n:,}")
    t_model = interleaved({v.text: (lambda: source.run(ids)) for v in variants}, **common)
    mem, method = {}, ""
    for v in variants:
        source.apply(v, n, cfg.layers)
        source.run(ids)
        with PeakMemory(source.device) as pm:
            source.run(ids)
        mem[v.text], method = pm.peak_bytes, pm.method
    source.apply("dense", n)
    rows = []
    for v in variants:
        r = {"variant": v.text, "kind": v.kind, "n": n, "windows": len(wins),
             "fidelity": acc[v.text].result(), "attention_time": t_att[v.text],
             "model_time": t_model[v.text], "peak_bytes": mem[v.text], "memory_method": method,
             "served_by": served[v.text],
             "attention_speedup": ratio(t_att["dense"], t_att[v.text]),
             "model_speedup": ratio(t_model["dense"], t_model[v.text])}
        if mem["dense"] and mem[v.text] is not None:
            r["memory_ratio"] = mem[v.text] / mem["dense"]
        rows.append(r)
    wsizes = [v.args[0] for v in variants if v.name == "window"]
    return rows, stats.result(wsizes)


def run_model_bench(source, text: str, cfg: ModelBenchConfig, *, on_step=None,
                    text_name: str = "the text") -> dict:
    """Measure every variant at every length; the result dict behind bench.json."""
    variants = _variants(cfg.variants)
    malloc = _fix_malloc() if str(source.device) == "cpu" else ""
    rows, heads = [], {}
    for n in sorted(set(cfg.seqs)):
        r, h = _one_length(source, text, n, variants, cfg, on_step)
        rows += r
        heads[str(n)] = h
    for r in rows:
        r["memory_method"] += malloc
    res = {"mode": "model", "inputs": "text", "model": source.name, "kind": source.kind,
           "shapes": {"layers": source.n_layers, "heads": source.n_heads,
                      "kv_heads": source.n_kv_heads, "head_dim": source.head_dim,
                      "positions": getattr(source, "positions", None)},
           "text_name": text_name, "text_tokens": source.count_tokens(text),
           "config": asdict(cfg),
           "machine": machine(str(source.device)), "rows": rows, "heads": heads,
           "variants": [v.text for v in variants]}
    res["recommendation"] = recommend(res, cfg)
    return res


def _evidence(res: dict, variant: str, n: int) -> str:
    """The per-head fact behind a sparse variant's fidelity: its weakest layer."""
    layers = res["heads"][str(n)]["layers"]
    kept = [(row["kept"][variant]["mean"], row) for row in layers if variant in row["kept"]]
    if not kept:
        return ""
    m, row = min(kept, key=lambda t: t[0])
    k = row["kept"][variant]
    sinks = (f"; {len(row['sink_heads'])} sink head(s) there, "
             f"{row['last_mass']:.0%} of mass on the last token, {row['first_mass']:.0%} on "
             f"the first") if row["sink_heads"] else ""
    return (f"keeps {m:.0%} of the attention mass in layer {row['layer']} (head "
            f"{k['min_head']}: {k['min']:.0%}){sinks}")


def recommend(res: dict, cfg: ModelBenchConfig) -> dict:
    """``{"variant", "n", "text", "reasons"}``: see the module docstring."""
    n = max(r["n"] for r in res["rows"])
    rows = {r["variant"]: r for r in res["rows"] if r["n"] == n}
    kind = res["kind"]
    reasons, cands = [], []
    for name, r in rows.items():
        ok, why = passes(r["fidelity"], kind, min_cosine=cfg.min_cosine, max_kl=cfg.max_kl)
        ev = _evidence(res, name, n) if r["kind"] == "sparse" else ""
        if not ok:
            reasons.append(f"{name}: excluded, {why}" + (f"; it {ev}" if ev else ""))
            continue
        peak = r.get("peak_bytes")
        if cfg.memory_budget is not None and peak is not None and peak > cfg.memory_budget:
            reasons.append(f"{name}: excluded, peak memory {peak / 2**20:,.1f} MiB > budget "
                           f"{cfg.memory_budget / 2**20:,.1f} MiB")
            continue
        cands.append(r)
        if name != "dense":
            reasons.append(f"{name}: meets the bound ({why}); model forward "
                           f"{r['model_speedup']['ratio']:.2f}x dense"
                           + (" (within noise)" if r["model_speedup"]["within_noise"] else ""))
    if not cands:
        return {"variant": None, "n": n, "reasons": reasons,
                "text": f"no variant fits at n={n:,}: " + "; ".join(reasons)}
    best = min(cands, key=lambda r: r["model_time"]["median_s"])
    dense_ok = any(r["variant"] == "dense" for r in cands)
    if best["variant"] != "dense" and dense_ok and best["model_speedup"]["within_noise"]:
        s = best["model_speedup"]
        head = (f"dense at n={n:,}: {best['variant']} meets the fidelity bound but its model "
                f"forward is not measurably faster ({s['ratio']:.2f}x, interval "
                f"{s['low']:.2f}–{s['high']:.2f}); dense is exact")
        best = rows["dense"]
    elif best["variant"] == "dense":
        head = (f"dense at n={n:,}: no variant both meets the bound and runs faster"
                if len(cands) > 1 else
                f"dense at n={n:,}: no other variant meets the fidelity bound")
    else:
        s = best["model_speedup"]
        _, why = passes(best["fidelity"], kind, min_cosine=cfg.min_cosine, max_kl=cfg.max_kl)
        head = (f"{best['variant']} at n={n:,}: the fastest variant meeting the bound "
                f"({why}); model forward {s['ratio']:.2f}x dense (interval "
                f"{s['low']:.2f}–{s['high']:.2f})")
        if best.get("peak_bytes") is not None:
            head += f", peak memory {best['peak_bytes'] / 2**20:,.1f} MiB"
    share = _attention_share(rows["dense"], res["shapes"]["layers"])
    if share is not None:
        reasons.append(f"attention is about {share:.0%} of the dense forward at n={n:,} "
                       f"({res['shapes']['layers']} layers x the measured attention time), so "
                       f"a faster attention speeds the model up by at most that much")
    return {"variant": best["variant"], "n": n, "reasons": reasons,
            "text": head + ". " + "; ".join(reasons)}


def _attention_share(dense_row: dict, layers: int) -> float | None:
    a, m = dense_row["attention_time"]["median_s"], dense_row["model_time"]["median_s"]
    return min(1.0, layers * a / m) if m > 0 else None
