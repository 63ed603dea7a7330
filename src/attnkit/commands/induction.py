"""``attnkit inspect --model M --induction [L]``: the induction-head test of Olsson et al.
2022 on a decoder (:mod:`attnkit.analysis.induction`): random token sequences of length
L repeated twice; per head the induction score and the previous-token score, the loss on
the first half and on the repeat; with ``--out`` the numbers in ``induction.json``.
Runs on attnkit's port (GPT-2 and Llama decoders)."""
from __future__ import annotations

import json
import os

from ..core.errors import UsageError

__all__ = ["run_induction", "add_arguments"]


def add_arguments(p) -> None:
    p.add_argument("--induction", type=int, nargs="?", const=50, metavar="L",
                   help="decoders: the induction-head test (Olsson et al. 2022) on random "
                   "sequences of L tokens (default 50) repeated twice: induction and "
                   "previous-token score per head, loss on the first half vs the repeat "
                   "(no text needed)")
    p.add_argument("--samples", type=int, default=16, help="--induction: how many random "
                   "sequences (default 16)")
    p.add_argument("--seed", type=int, default=0, help="--induction: seed of the random "
                   "tokens (default 0)")


def _check(args) -> None:
    if args.induction < 2:
        raise UsageError(f"--induction: expected a sequence length >= 2, got {args.induction}")
    if args.samples < 1:
        raise UsageError(f"--samples: expected an int >= 1, got {args.samples}")
    if args.seed < 0:
        raise UsageError(f"--seed: expected an int >= 0, got {args.seed}")
    for opt, val in (("text", args.text), ("--from", args.from_word), ("--image", args.image),
                     ("--generate", args.generate), ("--target", args.target),
                     ("--layers", args.layers)):
        if val is not None:
            raise UsageError(f"{opt}: not used by --induction (it runs random repeated "
                             f"tokens on every layer); drop it")


def run_induction(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..analysis.induction import induction_test
    from ..sources import AttnkitSource, open_source
    _check(args)
    src = open_source(args.model, via=args.via, backend=args.backend)
    if not isinstance(src, AttnkitSource) or src.kind != "decoder":
        raise UsageError(f"--induction: needs a decoder that attnkit's port runs (GPT-2, "
                         f"Llama); {args.model!r} is {src.arch} ({src.kind}) on {src.via}")
    m = src.model
    tok = m.tokenizer
    special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    vocab = [i for i in range(tok.get_vocab_size()) if i not in special]
    bos = (m.hf_config or {}).get("bos_token_id")
    bos = bos if isinstance(bos, int) else None
    try:
        r = induction_test(m, vocab, length=args.induction, n=args.samples, seed=args.seed,
                           bos=bos)
    except ValueError as e:
        raise UsageError(f"--induction: {e}") from None
    con = Console()
    th = args.threshold
    con.print(f"[bold]{args.model}[/]: {src.arch}; induction test (Olsson et al. 2022): "
              f"{args.samples} sequences of {args.induction} random tokens (of {len(vocab)}; "
              f"seed {args.seed}) repeated twice{'' if bos is None else ', after bos'}")
    t = Table(title=f"Head scores (* if >= {th:g})")
    for c in ("layer", "head", "induction", "previous"):
        t.add_column(c, justify="right")
    for li, layer in enumerate(r.layers):
        for h in range(r.induction.shape[1]):
            a, b = float(r.induction[li, h]), float(r.previous[li, h])
            t.add_row(str(layer), str(h), f"{a:.3f}{' *' if a >= th else ''}",
                      f"{b:.3f}{' *' if b >= th else ''}")
    con.print(t)
    con.print("induction: weight from a repeated token to the token after its previous "
              "occurrence; previous: weight on the token before")
    fmt = lambda hs: ", ".join(f"L{layer}H{h} {s:.2f}" for layer, h, s in hs) or "none"  # noqa
    con.print(f"induction heads (>= {th:g}): {fmt(r.heads('induction', th))}")
    con.print(f"previous-token heads (>= {th:g}): {fmt(r.heads('previous', th))}")
    con.print(f"loss: first half {r.loss_first:.3f} nats, repeat {r.loss_repeat:.3f} nats "
              f"(chance {r.chance:.3f})")
    if args.out:
        path = os.path.join(args.out, "induction.json")
        with open(path, "w") as f:
            json.dump({"model": args.model, "arch": src.arch, "threshold": th, **r.to_json(),
                       "induction_heads": r.heads("induction", th),
                       "previous_heads": r.heads("previous", th)}, f, indent=1)
        con.print(f"wrote {path}")
    return 0
