"""Decoding cost inside transformers: tokens/s and cache bytes of one decoding step after a
context of N tokens, for a random Llama-style decoder with GQA (4 layers, hidden 512,
8 heads of 64, 2 KV heads, fp32), batch B, through ``attn_implementation``:

* ``sdpa`` and ``attnkit`` (dense: the same model, the same full cache; their ratio is
  the decode overhead of attnkit),
* ``attnkit:window:W``, ``attnkit:longformer:W:G`` (G sinks + a window of W, StreamingLLM)
  and ``attnkit:linear:elu``, each with the bounded cache ``generate`` builds for it
  (:func:`attnkit.hf.bounded_cache`).

The cache is filled with random keys/values for N tokens (no O(N²) prefill: a step's cost
depends only on what the cache holds), then one token is decoded; the step is timed and
the cache put back as it was, ``--reps`` times per implementation, implementations
interleaved in each round so load from other processes hits all alike. Reported: median
ms/step, tokens/s (B / median), the spread (min..max ms), the cache bytes of all layers,
and the per-round ratio attnkit/sdpa (median, min..max).

    python benchmarks/decode.py --contexts 2048,8192,32768 --batches 1,8 --reps 7

``--op``: one attention call of a decoding step instead (transformers' mask function and
attention function, ``attnkit`` vs ``sdpa``, GQA 8/2, D 64; 200 calls per round, rounds
interleaved; median and minimum us per call), the per-layer overhead without the rest
of the model (a small ``--contexts 128`` isolates the Python); runs against any
attnkit tree (``PYTHONPATH=OTHER/src`` for a before/after).

``--clock cpu`` times with this thread's CPU time (``time.thread_time``; with one torch
thread all the work is on it) instead of wall time: on a machine shared with other jobs
it leaves out the time the process waits for a core, which wall time adds at random.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

CLOCK = time.perf_counter   # --clock cpu: time.thread_time

IMPLS = ("sdpa", "attnkit", "attnkit:window:512", "attnkit:longformer:512:4",
         "attnkit:linear:elu")


def build_model(layers: int = 4):
    import transformers as t
    torch.manual_seed(0)
    cfg = t.LlamaConfig(vocab_size=1000, hidden_size=512, intermediate_size=1024,
                        num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=2,
                        max_position_embeddings=65536)
    return t.LlamaForCausalLM(cfg).eval()


def filled_cache(model, impl: str, B: int, N: int):
    """A cache for ``impl`` as if N tokens had been decoded (random keys/values/state)."""
    import transformers as t
    import attnkit.hf
    from attnkit.integrations.hf.cache_layers import LinearStateLayer
    from attnkit.linear import LinearAttentionState
    cfg = model.config
    Hkv, D = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    g = torch.Generator().manual_seed(1)
    bounded = impl.startswith("attnkit:") and impl != "attnkit"
    cache = attnkit.hf.bounded_cache(model, impl) if bounded else t.DynamicCache(config=cfg)
    for layer in cache.layers:
        if isinstance(layer, LinearStateLayer):
            st = LinearAttentionState.zeros("elu", B, Hkv, D, D)
            layer.state = LinearAttentionState(torch.rand(B, Hkv, D, D, generator=g) * N,
                                               torch.rand(B, Hkv, D, generator=g) * N, st.m,
                                               st.feature_map)
            layer.is_initialized, layer.device, layer.cumulative_length = True, "cpu", N
            continue
        keep = N
        if hasattr(layer, "sliding_window"):
            keep = min(N, layer.sliding_window - 1)
        elif hasattr(layer, "sinks"):
            keep = min(N, layer.sinks + layer.window)
        k = torch.randn(B, Hkv, N if keep == N else keep, D, generator=g)
        layer.lazy_initialization(k, k)
        layer.keys, layer.values = k, torch.randn(B, Hkv, keep, D, generator=g)
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = N
    return cache


def snapshot(cache):
    return [dict(vars(layer)) for layer in cache.layers]


def restore(cache, snap):
    for layer, saved in zip(cache.layers, snap):
        vars(layer).clear()
        vars(layer).update(saved)


def step(model, cache, B: int, N: int):
    ids = torch.full((B, 1), 7, dtype=torch.long)
    mask = torch.ones(B, N + 1, dtype=torch.long)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True,
              position_ids=torch.full((B, 1), N, dtype=torch.long), logits_to_keep=1)


def run(contexts, batches, impls, reps: int, layers: int):
    import attnkit.hf
    attnkit.hf.register()
    model = build_model(layers)
    for impl in impls:
        if impl.startswith("attnkit"):
            attnkit.hf.register(impl.removeprefix("attnkit").lstrip(":") or None)
    rows = []
    for N in contexts:
        for B in batches:
            caches = {}
            for impl in impls:
                c = filled_cache(model, impl, B, N)
                caches[impl] = (c, snapshot(c), sum(attnkit.hf.cache_bytes(c)))
            times = {impl: [] for impl in impls}
            for r in range(reps + 1):                       # round 0: warm-up, not kept
                order = impls if r % 2 == 0 else impls[::-1]
                for impl in order:
                    model.set_attn_implementation(impl)
                    cache, snap, _ = caches[impl]
                    t0 = CLOCK()
                    step(model, cache, B, N)
                    dt = CLOCK() - t0
                    restore(cache, snap)
                    if r:
                        times[impl].append(dt)
            for impl in impls:
                ts = times[impl]
                med = statistics.median(ts)
                row = {"context": N, "batch": B, "impl": impl, "ms": med * 1e3,
                       "min_ms": min(ts) * 1e3, "max_ms": max(ts) * 1e3, "tok_s": B / med,
                       "cache_bytes": caches[impl][2]}
                if impl == "attnkit" and "sdpa" in times:
                    ratios = [a / s for a, s in zip(ts, times["sdpa"])]
                    row["ratio_vs_sdpa"] = statistics.median(ratios)
                    row["ratio_range"] = (min(ratios), max(ratios))
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def op_ratio(contexts, batches, reps: int):
    """us per call (mask + attention) of attnkit and transformers' sdpa, and their ratio."""
    import transformers as t
    from transformers import masking_utils as mu
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    import attnkit.hf

    class Layer(torch.nn.Module):
        is_causal, layer_idx, num_key_value_groups = True, 0, 4

        def __init__(self, impl):
            super().__init__()
            self.config = t.LlamaConfig(num_attention_heads=8, num_key_value_heads=2)
            self.config._attn_implementation = impl

    attnkit.hf.register()
    ak, sd = Layer("attnkit"), Layer("sdpa")
    rows = []
    for N in contexts:
        for B in batches:
            q, k, v = torch.randn(B, 8, 1, 64), torch.randn(B, 2, N, 64), torch.randn(B, 2, N, 64)
            am = torch.ones(B, N, dtype=torch.bool)

            def run_ak():
                m = attnkit.hf.attnkit_mask(B, 1, N, N - 1, 0, mu.causal_mask_function, am)
                return attnkit.hf.attnkit_attention_forward(ak, q, k, v, m, scaling=0.125)[0]

            def run_sd():
                m = mu.sdpa_mask(B, 1, N, N - 1, 0, mu.causal_mask_function, am,
                                 allow_is_causal_skip=True)
                return sdpa_attention_forward(sd, q, k, v, m, scaling=0.125)[0]
            assert torch.allclose(run_ak(), run_sd(), atol=1e-6)
            res = {"attnkit": [], "sdpa": []}
            for r in range(reps):
                for name, f in (("attnkit", run_ak), ("sdpa", run_sd))[::1 if r % 2 else -1]:
                    t0 = CLOCK()
                    for _ in range(200):
                        f()
                    res[name].append((CLOCK() - t0) / 200 * 1e6)
            ratios = [a / s for a, s in zip(res["attnkit"], res["sdpa"])]
            row = {"context": N, "batch": B, "attnkit_us": statistics.median(res["attnkit"]),
                   "sdpa_us": statistics.median(res["sdpa"]), "attnkit_min_us": min(res["attnkit"]),
                   "sdpa_min_us": min(res["sdpa"]), "ratio": statistics.median(ratios),
                   "ratio_range": (min(ratios), max(ratios))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def table(rows) -> str:
    out = ["| context | batch | implementation | ms/step (min..max) | tokens/s | cache bytes | "
           "attnkit/sdpa (per-round min..max) |", "|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        ratio = (f"{r['ratio_vs_sdpa']:.3f} ({r['ratio_range'][0]:.2f}..{r['ratio_range'][1]:.2f})"
                 if "ratio_vs_sdpa" in r else "")
        out.append(f"| {r['context']} | {r['batch']} | `{r['impl']}` | {r['ms']:.2f} "
                   f"({r['min_ms']:.2f}..{r['max_ms']:.2f}) | {r['tok_s']:.0f} | "
                   f"{r['cache_bytes'] / 2**20:.2f} MiB | {ratio} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", default="2048,8192")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--op", action="store_true", help="one attention call, not the model")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    global CLOCK
    CLOCK = time.thread_time if a.clock == "cpu" else time.perf_counter
    if a.op:
        op_ratio([int(x) for x in a.contexts.split(",")], [int(x) for x in a.batches.split(",")],
                 a.reps)
        return
    rows = run([int(x) for x in a.contexts.split(",")], [int(x) for x in a.batches.split(",")],
               tuple(a.impls.split(",")), a.reps, a.layers)
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
