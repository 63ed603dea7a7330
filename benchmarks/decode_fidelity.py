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


def summarize(nll: torch.Tensor, kl: torch.Tensor | None, W: int | None) -> dict:
    """nll, kl: (n, T) per position."""
    row = {"ppl": math.exp(nll.mean())}
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


def run(n: int, variants, batch: int, decode: bool, T: int = 256) -> list[dict]:
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
        attnkit.hf.use(model, base)
        t0 = time.perf_counter()
        if repos:       # no masked forward computes moved sinks: decode token by token
            lp = torch.cat([decode_logprobs(model, c, reposition=True)[0]
                            for c in ids.split(batch)])
        else:
            lp = logprobs(model, ids, batch)
        nll = -lp.gather(-1, target[..., None])[..., 0]
        kl = (dense.exp() * (dense - lp)).sum(-1)                # (n, T)
        W = int(base.split(":")[1]) if base.split(":")[0] in ("window", "longformer") else None
        row = {"variant": v, "windows": n, "context": T, "s": time.perf_counter() - t0,
               **summarize(nll, kl, W)}
        if decode and not repos:
            dec, cache = decode_logprobs(model, ids[:1])
            row["decode_max_abs_diff"] = float((dec - lp[:1]).abs().max())
            row["decode_cache_bytes"] = sum(attnkit.hf.cache_bytes(cache))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows) -> str:
    head = ["variant", "ppl", *(f"ppl_{lo}_{hi}" for lo, hi in bands(rows[0]["context"])),
            "ppl_past", "kl_past"]
    out = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        cells = [f"`{r['variant']}`"] + [
            "" if k not in r else f"{r[k]:.4f}" if k.startswith("kl") else f"{r[k]:.2f}"
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
    p.add_argument("--json", default=None, help="also write the rows here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = run(a.windows, a.variants.split(","), a.batch, a.decode, a.context)
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
