"""``attnkit patch CLEAN CORRUPTED --model M [--target T] [--per-position] --out DIR``:
activation patching -- for every head, the share of the clean-vs-corrupted difference in
the target restored by patching that head's clean output into the corrupted run
(:func:`attnkit.analysis.causal.patch_heads`), with a plain-language summary.

CLEAN and CORRUPTED must tokenize to the same number of tokens (a minimal pair: one word
swapped for a word of the same token count); otherwise the command refuses with both
lengths -- it does not guess an alignment."""
from __future__ import annotations

import os
import time

from ..core.errors import UsageError


def run(args) -> int:
    from rich.console import Console

    from ..analysis import causal as C
    from ..analysis import causal_report as R
    if args.top < 1:
        raise UsageError(f"--top: expected an integer >= 1, got {args.top}")
    R.check_out(args.out)
    model, tok, plan, notes = R.open_model(args.model, "patch")
    clean, toks = R.encode_text(tok, plan, args.clean, "CLEAN")
    corrupted, ctoks = R.encode_text(tok, plan, args.corrupted, "CORRUPTED")
    a, b = clean["input_ids"].shape[1], corrupted["input_ids"].shape[1]
    if a != b:
        raise UsageError(f"CORRUPTED: tokenizes to {b} tokens, CLEAN to {a}; patching needs "
                         f"a minimal pair of equal length (swap a word for one of the same "
                         f"token count)")
    if args.foil is not None and plan.kind != "decoder":
        raise UsageError(f"--foil: a second next token, for decoders; {plan.arch} is an encoder")
    target = R.make_target(plan, tok, toks, args.target, args.foil)
    con = Console()
    t0 = time.perf_counter()
    probe = C.Probe(model, clean, target)
    res = C.patch_heads(probe, corrupted, args.per_position)
    secs = time.perf_counter() - t0
    names = C.layer_names(model, probe.modules)
    diff = [i for i, (x, y) in enumerate(zip(clean["input_ids"][0], corrupted["input_ids"][0]))
            if x != y]
    con.print(f"[bold]{args.model}[/]: {plan.arch} ({plan.kind}), {a} tokens, "
              f"{sum(probe.n_heads)} heads; target: {R.describe_target(target, tok)}")
    con.print("changed tokens: " + ", ".join(f"{toks.labels[i]!r} -> {ctoks.labels[i]!r}"
                                            for i in diff) if diff else
              "[yellow]note:[/] CLEAN and CORRUPTED tokenize identically: nothing to patch")
    dname = "log-prob difference" if target.kind == "token" else "1 - cos(clean, corrupted)"
    con.print(f"{dname}: {res['difference']:.4g}; {secs:.1f} s")
    R.print_patching(con, res, names, args.top)
    if args.out:
        share = {(r["layer"], r["head"]): r["share"] for r in res["rows"]}
        R.plot_grid(share, probe.n_heads, names, os.path.join(args.out, "patching.png"),
                    f"{args.model}: share of the difference restored by one head\n"
                    f"{R.describe_target(target, tok)}", "share restored")
        res.update(clean=args.clean, corrupted=args.corrupted, model=args.model,
                   arch=plan.arch, kind=plan.kind, tokens=toks.labels,
                   corrupted_tokens=ctoks.labels, changed=diff, layer_names=names,
                   seconds=secs, summary=R.summary(res, names),
                   target_text=R.describe_target(target, tok))
        R.write_json(os.path.join(args.out, "patching.json"), res)
        for p in ("patching.png", "patching.json"):
            con.print(f"wrote {os.path.join(args.out, p)}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "patch", help="activation patching: which heads carry the difference between a "
        "clean and a corrupted text (transformers models with attnkit inside)",
        description="Run CLEAN and CORRUPTED (a minimal pair of equal token length) and, for "
        "every head, patch its clean output into the corrupted run: the share of the "
        "clean-vs-corrupted difference in the target that this restores (1 = all). Target: "
        "encoders, the pooled embedding or --target WORD's final state; decoders, the "
        "log-prob of the next token --target (default: the clean run's top token), minus "
        "--foil's. --model is 'minilm' or a Hugging Face checkpoint directory (local files).",
        epilog='Example: attnkit patch "The trophy didn\'t fit in the suitcase because it was '
        'too big." "The trophy didn\'t fit in the suitcase because it was too small." '
        "--model minilm --target it --out patch")
    p.add_argument("clean", metavar="CLEAN", help="the clean text")
    p.add_argument("corrupted", metavar="CORRUPTED", help="the corrupted text (same length)")
    p.add_argument("--model", default="minilm", help="'minilm' or a checkpoint directory "
                   "(default: minilm)")
    p.add_argument("--target", help="decoders: the next token to score; encoders: the word "
                   "whose final state is compared (default: the pooled embedding)")
    p.add_argument("--foil", help="decoders: score target minus this token (a logit "
                   "difference)")
    p.add_argument("--per-position", action="store_true", help="also patch each head at "
                   "each position alone (in the JSON)")
    p.add_argument("--top", type=int, default=10, help="heads shown (default: 10)")
    p.add_argument("--out", help="directory for patching.png and patching.json")
    p.set_defaults(func=run)
