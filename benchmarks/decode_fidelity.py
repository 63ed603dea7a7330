"""Fidelity of the bounded-cache variants on the shipped decoder (``stdlib-lm``: a Llama-style
decoder, 4 layers, 4 heads / 2 KV heads, trained at context 256 on the Python standard
library, ``attnkit train --task lm``), zero-shot: the model's weights unchanged, its
attention swapped for the variant inside transformers (``attnkit.hf``).

Data: the held-out split of its training run (``attnkit.tasks.text``: the last 5% of the
stdlib corpus, never seen by the tokenizer or the model), cut into non-overlapping
windows of 256 tokens + 1 (the next-token targets; ``--context``: another length). Per variant and per window: the
next-token loss of every position, and KL(dense || variant) of the next-token
distributions. Reported: perplexity exp(mean loss) over all positions, over the positions
inside the window (p < W: a query there sees every earlier key, so the variant is dense
there) and past it (p >= W), per position band, and the mean KL past the window.

A full forward with the variant's mask computes exactly what decoding from the variant's
bounded cache computes (``tests/test_decode_cache.py``: greedy tokens equal); ``--decode``
also decodes the first window token by token from the bounded cache ``generate`` builds
and reports the largest difference of its log-probabilities from the forward's.

    python benchmarks/decode_fidelity.py --windows 64 --decode
    python benchmarks/decode_fidelity.py --windows 16 --context 1024 --batch 4 \
        --variants window:64,longformer:64:4,window:32,longformer:32:4

The second scores past the model's training context (256): the StreamingLLM setting,
where a window keeps every distance the model was trained on and dense attention does not.
A variant ending in ``+repos`` (``longformer:64:4+repos``) re-positions the sinks just
before the window (``bounded_cache(model, reposition=True)``, StreamingLLM); no masked
forward computes that, so those rows decode every window token by token.

``--adapted VARIANT=DIR`` (repeatable) adds, after VARIANT's zero-shot row, a row for the
directory ``attnkit adapt --variant VARIANT`` wrote (``attnkit.hf.from_pretrained(DIR)``:
the adapted weights running the recorded variant), scored against the same dense
``stdlib-lm`` on the same windows; every row also reports the top-1 agreement with dense and
the perplexity change. The zero-shot row of ``linear:hedgehog`` (a learnable feature map)
runs the identity maps that ``attnkit adapt`` starts from.

    python benchmarks/decode_fidelity.py --variants window:32,gqa:1 \
        --adapted window:32=/tmp/w32 --adapted gqa:1=/tmp/gqa1 --json out.json
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

VARIANTS = ("window:32", "longformer:32:4", "window:64", "longformer:64:4", "linear:elu")
EDGES = (0, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def bands(T: int) -> list[tuple[int, int]]:
    """Position bands [lo, hi) up to the context T."""
    e = [x for x in EDGES if x < T] + [T]
    return list(zip(e[:-1], e[1:]))


def heldout_windows(model_dir, n: int, T: int) -> torch.Tensor:
    """(n, T + 1) token ids: the held-out split of the decoder's training run."""
    from attnkit.tasks.text import TextLM, stdlib_files
    task = TextLM(seq_len=T, n_eval=n, text=tuple(stdlib_files()))
    task.prepare(model_dir, load=True)         # the shipped tokenizer.json; nothing written
    return task.eval_windows()


def logprobs(model, ids: torch.Tensor, batch: int) -> torch.Tensor:
    """log p(next token) (n, T, V) of a forward over the windows, in batches."""
    out = []
    with torch.no_grad():
        for chunk in ids.split(batch):
            out.append(model(input_ids=chunk, use_cache=False).logits.float().log_softmax(-1))
    return torch.cat(out)


def decode_logprobs(model, ids: torch.Tensor, reposition: bool = False
                    ) -> tuple[torch.Tensor, object]:
    """log p (B, T, V) of windows decoded token by token from generate's bounded cache
    (``reposition``: the sinks re-positioned before the window, StreamingLLM)."""
    import attnkit.hf
    cache = attnkit.hf.bounded_cache(model, reposition=reposition)
    out = []
    with torch.no_grad():
        for t in range(ids.shape[1]):
            logits = model(input_ids=ids[:, t:t + 1], cache=cache, use_cache=True).logits
            out.append(logits.float().log_softmax(-1))
    return torch.cat(out, 1), cache


def summarize(nll: torch.Tensor, kl: torch.Tensor | None, W: int | None,
              agree: torch.Tensor | None = None) -> dict:
    """nll, kl, agree (top-1 equal to dense): (n, T) per position."""
    row = {"ppl": math.exp(nll.mean())}
    if agree is not None:
        row["top1_agreement"] = float(agree.float().mean())
    for lo, hi in bands(nll.shape[1]):
        row[f"ppl_{lo}_{hi}"] = math.exp(nll[:, lo:hi].mean())
    if W is not None:
        row["ppl_inside"] = math.exp(nll[:, :W].mean())
        row["ppl_past"] = math.exp(nll[:, W:].mean())
    if kl is not None:
        row["kl"] = float(kl.mean())
        if W is not None:
            row["kl_past"] = float(kl[:, W:].mean())
    return row


def score(lp, dense, target, W) -> dict:
    """The variant's log-probs lp (n, T, V) against dense's, on the targets (n, T)."""
    nll = -lp.gather(-1, target[..., None])[..., 0]
    kl = (dense.exp() * (dense - lp)).sum(-1)                    # (n, T)
    return summarize(nll, kl, W, lp.argmax(-1) == dense.argmax(-1))


def run(n: int, variants, batch: int, decode: bool, T: int = 256,
        adapted: dict | None = None) -> list[dict]:
    import attnkit.hf
    from attnkit.loading import resolve
    d = resolve("stdlib-lm")
    win = heldout_windows(d, n, T)                               # (n, T + 1)
    ids, target = win[:, :-1], win[:, 1:]
    model = attnkit.hf.from_pretrained(d).eval()                 # dense, attnkit
    t0 = time.perf_counter()
    dense = logprobs(model, ids, batch)                          # (n, T, V)
    nll_dense = -dense.gather(-1, target[..., None])[..., 0]     # (n, T)
    rows = [{"variant": "dense", "windows": n, "context": T, "tokens": target.numel(),
             "s": time.perf_counter() - t0, **summarize(nll_dense, None, None)}]
    print(json.dumps(rows[-1]), flush=True)
    for v in variants:
        base, repos = v.removesuffix("+repos"), v.endswith("+repos")
        if base == "linear:hedgehog":   # zero-shot = adapt's start: identity feature maps
            from attnkit.integrations.hf import learned
            c = model.config
            learned.install(model, c.num_attention_heads, c.num_key_value_heads, c.head_dim)
        attnkit.hf.use(model, base)
        t0 = time.perf_counter()
        if repos:       # no masked forward computes moved sinks: decode token by token
            lp = torch.cat([decode_logprobs(model, c, reposition=True)[0]
                            for c in ids.split(batch)])
        else:
            lp = logprobs(model, ids, batch)
        W = int(base.split(":")[1]) if base.split(":")[0] in ("window", "longformer") else None
        row = {"variant": v, "windows": n, "context": T, "s": time.perf_counter() - t0,
               **score(lp, dense, target, W)}
        row["ppl_change"] = row["ppl"] / rows[0]["ppl"] - 1
        if decode and not repos:
            dec, cache = decode_logprobs(model, ids[:1])
            row["decode_max_abs_diff"] = float((dec - lp[:1]).abs().max())
            row["decode_cache_bytes"] = sum(attnkit.hf.cache_bytes(cache))
        rows.append(row)
        print(json.dumps(row), flush=True)
        if adapted and v in adapted:
            rows.append(adapted_row(v, adapted[v], ids, dense, target, W, batch, rows[0]))
            print(json.dumps(rows[-1]), flush=True)
    if adapted and set(adapted) - set(variants):
        raise ValueError(f"adapted: expected variants among --variants, got "
                         f"{sorted(set(adapted) - set(variants))}")
    return rows


def adapted_row(v, path, ids, dense, target, W, batch, dense_row) -> dict:
    """The row of the model ``attnkit adapt --variant v`` wrote to ``path``."""
    import attnkit.hf
    model = attnkit.hf.from_pretrained(path).eval()              # the recorded variant
    rec = model.config.attnkit_adapted
    if rec["variant"] != v:
        raise ValueError(f"adapted: expected a directory adapted for {v!r}, got {path} "
                         f"(adapted for {rec['variant']!r})")
    t0 = time.perf_counter()
    lp = logprobs(model, ids, batch)
    row = {"variant": f"{v} adapted", "dir": str(path), "windows": len(ids),
           "context": ids.shape[1], "s": time.perf_counter() - t0,
           "steps": rec.get("steps"), "adapt_seconds": rec.get("seconds"),
           **score(lp, dense, target, W)}
    row["ppl_change"] = row["ppl"] / dense_row["ppl"] - 1
    return row


def table(rows) -> str:
    head = ["variant", "ppl", *(f"ppl_{lo}_{hi}" for lo, hi in bands(rows[0]["context"])),
            "ppl_past", "kl", "kl_past", "top1_agreement", "ppl_change"]
    out = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        cells = [f"`{r['variant']}`"] + [
            "" if k not in r else f"{r[k]:+.1%}" if k == "ppl_change"
            else f"{r[k]:.4f}" if k.startswith("kl") else f"{r[k]:.3f}" if k.startswith("top")
            else f"{r[k]:.2f}"
            for k in head[1:]]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--windows", type=int, default=64, help="held-out windows of --context tokens")
    p.add_argument("--context", type=int, default=256, help="tokens per window (the model was "
                   "trained at 256; longer: scoring past its training context)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--decode", action="store_true", help="also decode one window from the "
                   "bounded cache and compare with the forward")
    p.add_argument("--adapted", action="append", default=[], metavar="VARIANT=DIR",
                   help="also score the directory attnkit adapt wrote for VARIANT")
    p.add_argument("--json", default=None, help="also write the rows here")
    a = p.parse_args(argv)
    bad = [x for x in a.adapted if "=" not in x]
    if bad:
        p.error(f"--adapted: expected VARIANT=DIR, got {bad[0]!r}")
    torch.set_num_threads(a.threads)
    rows = run(a.windows, a.variants.split(","), a.batch, a.decode, a.context,
               dict(x.split("=", 1) for x in a.adapted))
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
