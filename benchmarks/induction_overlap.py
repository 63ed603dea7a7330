"""Induction heads found by attention vs by ablation (Olsson et al. 2022) on a decoder.

    python benchmarks/induction_overlap.py --model DIR [--n 24] [--seqs 4] [--top 5]

Repeated random tokens ``[bos] r r`` (``--n`` tokens twice, ``--seqs`` draws):

* attention: a head's *induction score* is its mean weight from each position i of the
  second copy to i - n + 1 (the token after the previous occurrence of token i);
* ablation: the rise of the loss on the second copy (after its first token) when the head's output is zeroed
  (:func:`attnkit.analysis.causal.head_importance`, target ``sequence``).

Prints both rankings, the overlap of their top ``--top`` and Spearman over all heads;
``--out FILE`` writes the numbers as JSON.
"""
from __future__ import annotations

import argparse
import json

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from attnkit.analysis import causal as C
    from attnkit.analysis.causal_report import open_model
    model, tok, plan, _ = open_model(a.model, "induction")
    if plan.kind != "decoder":
        raise SystemExit(f"--model: {plan.arch} is not a decoder")
    g = torch.Generator().manual_seed(a.seed)
    V = model.config.vocab_size
    special = set(tok.all_special_ids)
    pool = torch.tensor([i for i in range(V) if i not in special])
    n = a.n
    ind, abl = None, None
    for _ in range(a.seqs):
        r = pool[torch.randint(len(pool), (n,), generator=g)]
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        o = len(bos)
        ids = torch.cat([torch.tensor(bos, dtype=r.dtype), r, r])[None]    # (1, o + 2n)
        with torch.no_grad():
            att = model(input_ids=ids, output_attentions=True).attentions   # L x (1, H, T, T)
        i = torch.arange(o + n, o + 2 * n)
        score = torch.stack([w[0][:, i, i - n + 1].mean(-1) for w in att])  # (L, H)
        probe = C.Probe(model, {"input_ids": ids}, C.Target("sequence", "repeat loss",
                                                            span=(o + n, o + 2 * n - 1)))
        res = C.head_importance(probe, "zero", gradient=False)
        eff = torch.zeros_like(score)
        for row in res["rows"]:
            eff[row["layer"], row["head"]] = row["effect"]
        ind = score if ind is None else ind + score
        abl = eff if abl is None else abl + eff
    ind, abl = ind / a.seqs, abl / a.seqs
    L, H = ind.shape
    heads = [(li, h) for li in range(L) for h in range(H)]
    by_ind = sorted(heads, key=lambda k: -float(ind[k]))
    by_abl = sorted(heads, key=lambda k: -float(abl[k]))
    top = set(by_ind[:a.top]) & set(by_abl[:a.top])
    rho = C.spearman([float(ind[k]) for k in heads], [float(abl[k]) for k in heads])
    print(f"{a.model}: {L} layers x {H} heads; {a.seqs} sequences of {n} random tokens "
          f"repeated")
    print("by induction score:", ", ".join(f"{li}.{h} ({float(ind[li, h]):.2f})"
                                           for li, h in by_ind[:a.top]))
    print("by ablation (loss rise on the repeat, nats):",
          ", ".join(f"{li}.{h} ({float(abl[li, h]):.3f})" for li, h in by_abl[:a.top]))
    print(f"overlap of the top {a.top}: {len(top)}/{a.top}; Spearman over {L * H} heads: "
          f"{rho:.3f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"model": a.model, "n": n, "seqs": a.seqs, "top": a.top,
                       "induction": ind.tolist(), "ablation": abl.tolist(),
                       "overlap": len(top), "spearman": rho,
                       "by_induction": by_ind[:a.top], "by_ablation": by_abl[:a.top]}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
