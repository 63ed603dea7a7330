"""``attnkit inspect``: what a model attends to -- attnkit's ports or any Hugging Face
checkpoint directory (text encoders, decoders, encoder-decoders, ViTs): heads ranked by
contrast, head types, PNG heatmaps, the offline viewer and a JSON of the numbers.

Every user error is one line on stderr and exit code 2, checked before the model runs
(arguments, optional packages, the output path, the backend, the checkpoint's files,
the words of ``--from/--to``)."""
from __future__ import annotations

import os

from ..core.errors import UsageError

GENERATE_DEFAULT = 20     # encoder-decoders without --target


def _cheap_checks(args) -> None:
    from ..sources import check_backend
    if (args.from_word is None) != (args.to_word is None):
        raise UsageError("--from and --to go together (e.g. --from it --to cat)")
    if args.versus is not None and args.from_word is None:
        raise UsageError("--versus: needs --from and --to (e.g. --from it --to cat --versus mat)")
    if args.top < 1:
        raise UsageError(f"--top: expected an integer >= 1, got {args.top}")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold: expected a number in [0, 1], got {args.threshold}")
    if args.generate is not None and not 1 <= args.generate <= 1024:
        raise UsageError(f"--generate: expected a number of tokens in 1..1024, got "
                         f"{args.generate}")
    if args.generate is not None and args.target is not None:
        raise UsageError("--target and --generate: give one (the decoder's input is the "
                         "target text or the generated tokens)")
    if args.out is not None:
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise UsageError(f"--out: expected a directory (created if missing), got the "
                             f"existing file {args.out!r}")
        from ..analysis.plots import require_matplotlib
        require_matplotlib()
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--out: cannot create the directory {args.out!r} ({e.strerror})") \
                from None
        if not os.access(args.out, os.W_OK):
            raise UsageError(f"--out: the directory {args.out!r} is not writable")
    if args.image is not None:
        if not os.path.isfile(args.image):
            raise UsageError(f"--image: expected an image file, got {args.image!r} (no such file)")
        try:
            import PIL  # noqa: F401
        except ImportError:
            raise UsageError("--image: reading images needs Pillow (pip install pillow)") from None
    check_backend(args.backend)


def _kind_checks(args, src) -> None:
    kind = src.kind
    if kind == "image":
        if args.image is None:
            raise UsageError(f"--image: {src.arch} is a vision model; give an image file "
                             f"(--image cat.png)")
        if args.text:
            raise UsageError(f"text: {src.arch} reads --image, not text; got {args.text!r}")
        for opt, val in (("--from", args.from_word), ("--generate", args.generate),
                         ("--target", args.target)):
            if val is not None:
                raise UsageError(f"{opt}: applies to text models; {src.arch} is a vision model")
    else:
        if not args.text or not args.text.strip():
            raise UsageError("text: expected the text to run (a quoted sentence)")
        if args.image is not None:
            raise UsageError(f"--image: {src.arch} is a text model ({kind}); --image needs a "
                             f"vision transformer")
    if args.generate is not None and not src.can_generate:
        raise UsageError(f"--generate: {src.arch} is {'an' if kind[0] in 'ei' else 'a'} {kind} "
                         f"without a language-model head; generation needs a decoder")
    if args.target is not None and kind != "encoder-decoder":
        raise UsageError(f"--target: the decoder input of an encoder-decoder; {src.arch} is "
                         f"{'an' if kind[0] in 'ei' else 'a'} {kind}")
    src.check_backend()


def _print(con, cap, ranking, rows_by_view, args) -> None:
    from rich.table import Table
    con.print(f"[bold]{cap.model}[/]: {cap.arch}, {cap.attention}; {cap.kind}; "
              + ", ".join(f"{v.name} {len(v.q)}x{len(v.k)}" for v in cap.views))
    for n in cap.notes:
        con.print(f"[yellow]note:[/] {n}")
    if cap.generated is not None:
        con.print("generated: " + " ".join(repr(t) for t in cap.generated))
    if ranking:
        a, b = args.from_word, args.to_word
        t = Table(title=f"Heads ranked by contrast: {a!r} -> {b!r} minus the other words' "
                        f"mean weight to {b!r}")
        # headers wrap at their spaces and cells fold, so the table fits 80 columns without
        # cutting a number or a word to '…'
        cols = ["#", "layer", "head", f"{a} -> {b}", "others", "contrast", "ratio"]
        cols += [f"{a} -> {args.versus}"] if args.versus else []
        for c in cols + ["type"]:
            t.add_column(c, justify="right", overflow="fold")
        for r, row in enumerate(ranking[:args.top], 1):
            t.add_row(str(r), str(row["layer"]), str(row["head"]), f"{row['weight']:.3f}",
                      f"{row['others']:.3f}", f"{row['contrast']:+.3f}",
                      "-" if row["ratio"] is None else f"{row['ratio']:.2f}",
                      *([f"{row['versus_weight']:.3f}"] if args.versus else []),
                      row["type"] or "-")
        con.print(t)
    from ..analysis.inspect import HEAD_TYPES
    main = cap.main
    rows = rows_by_view[main.name]
    L, H = len(main.layers), main.weights.shape[1]
    if L * H <= 144:
        t = Table(title=f"Head types, {main.name} ({L} layers x {H} heads, {len(main.k)} "
                        f"tokens; best type if >= {args.threshold:g})")
        for c in ("layer", "head") + HEAD_TYPES + ("type",):
            t.add_column(c, justify="right", overflow="fold")
        for r in rows:
            t.add_row(str(r["layer"]), str(r["head"]),
                      *("-" if r[k] is None else f"{r[k]:.2f}" for k in HEAD_TYPES),
                      r["type"] or "-")
        con.print(t)
    counts = {k: sum(r["type"] == k for r in rows) for k in HEAD_TYPES}
    con.print(f"head types ({main.name}, {L * H} heads): " +
              ", ".join(f"{k} {v}" for k, v in counts.items() if v) +
              f", unclassified {sum(r['type'] is None for r in rows)}")


def _write(con, args, cap, ranking, rows_by_view) -> None:
    import json

    from ..analysis.plots import plot_heads, plot_patches
    from ..analysis.viewer import write_page
    out, main = args.out, cap.main
    paths = []
    li = main.layers.index(ranking[0]["layer"]) if ranking else 0
    layer = main.layers[li]
    name = f"layer{layer}.png" if main is cap.views[0] else f"{main.name}_layer{layer}.png"
    plot_heads(main.weights[li], main.q.labels, os.path.join(out, name),
               f"{cap.model}: {main.name}, layer {layer}, all heads", k_labels=main.k.labels)
    paths.append(name)
    if ranking:
        r = ranking[0]
        name = f"layer{layer}_head{r['head']}.png"
        plot_heads(main.weights[li], main.q.labels, os.path.join(out, name),
                   f"layer {layer} head {r['head']}: {args.from_word!r} -> {args.to_word!r} "
                   f"{r['weight']:.2f}, others {r['others']:.2f}, contrast {r['contrast']:+.2f}",
                   heads=[r["head"]], k_labels=main.k.labels)
        paths.append(name)
    for v in cap.views:
        if v is main:
            continue
        name = f"{v.name}_layer{v.layers[-1]}.png"
        plot_heads(v.weights[-1], v.q.labels, os.path.join(out, name),
                   f"{cap.model}: {v.about}, layer {v.layers[-1]}", k_labels=v.k.labels)
        paths.append(name)
    if cap.image:
        name = f"patches_layer{main.layers[-1]}.png"
        plot_patches(main.weights[-1], cap.image["png"], cap.image["grid"], cap.image["first"],
                     os.path.join(out, name), f"{cap.model}: where [CLS] attends, layer "
                     f"{main.layers[-1]}")
        paths.append(name)
    rank = None
    if ranking:
        from ..sources.words import find_word
        q = main.q.groups()[find_word(main.q.words, args.from_word, "--from")][0]
        rank = {"from": args.from_word, "to": args.to_word, "versus": args.versus,
                "view": cap.views.index(main), "rows": ranking[:max(12, args.top)], "q": q}
    write_page(os.path.join(out, "attention.html"), cap, rows_by_view, rank)
    paths.append("attention.html")
    doc = {"text": cap.text, "model": cap.model, "arch": cap.arch, "via": cap.via,
           "attention": cap.attention, "kind": cap.kind, "notes": cap.notes,
           "tokens": main.q.raw, "labels": main.q.labels, "words": main.q.words,
           "generated": cap.generated,
           "ranked": [[r["layer"], r["head"], r["contrast"]] for r in ranking or []],
           "score": "contrast = weight(from -> to) - mean weight of the other words to 'to'",
           "ranking": ranking, "from": args.from_word, "to": args.to_word,
           "versus": args.versus, "heads": rows_by_view[main.name],
           "views": [{"name": v.name, "about": v.about, "shape": list(v.weights.shape),
                      "layers": v.layers, "causal": v.causal, "query_labels": v.q.labels,
                      "key_labels": v.k.labels, "heads": rows_by_view.get(v.name)}
                     for v in cap.views]}
    with open(os.path.join(out, "inspect.json"), "w") as f:
        json.dump(doc, f, indent=1, allow_nan=False, default=_jsonable)
    paths.append("inspect.json")
    for p in paths:
        con.print(f"wrote {os.path.join(out, p)}")


def _jsonable(x):
    raise TypeError(f"not JSON: {type(x).__name__}")


def run(args) -> int:
    import math

    from rich.console import Console

    from ..sources.capture import parse_layers
    from ..analysis.inspect import check_words, classify_heads, rank_heads
    from ..sources import open_source
    if args.ablate:
        from .inspect_ablate import run as run_ablate
        return run_ablate(args)
    _cheap_checks(args)
    if args.induction is not None:
        from .induction import run_induction
        return run_induction(args)
    src = open_source(args.model, via=args.via, backend=args.backend)
    _kind_checks(args, src)
    try:
        layers = parse_layers(args.layers, src.n_layers, src.arch)
        dec_layers = parse_layers(args.layers, src.n_decoder_layers, f"{src.arch}'s decoder")
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.from_word is not None:
        check_words(src.tokens(args.text, args.generate),
                    [("--from", args.from_word), ("--to", args.to_word)] +
                    ([("--versus", args.versus)] if args.versus else []), src.kind == "decoder")
    generate = args.generate
    con = Console()
    if src.kind == "encoder-decoder" and args.target is None and generate is None:
        generate = GENERATE_DEFAULT
        con.print(f"[yellow]note:[/] no --target: the decoder input is {generate} generated "
                  f"tokens")
    cap = src.capture(args.text, layers, generate=generate, target=args.target,
                      image=args.image, dec_layers=dec_layers)
    from ..analysis.rollout import flow_view, rollout_view
    roll = [f(cap.main, cap.n_layers) for f in (rollout_view, flow_view)] \
        if src.kind != "image" else []
    rows_by_view = {v.name: classify_heads(v.weights, args.threshold, v.causal, v.layers)
                    for v in cap.views}
    cap.views += [v for v in roll if v is not None]   # beside the raw maps (one map each)
    if roll and roll[0] is not None and roll[1] is None:
        from ..analysis.rollout import FLOW_MAX_PROBLEMS
        cap.notes.append(f"attention flow not shown: {cap.n_layers} layers x {len(cap.main.q)}"
                         f"^2 tokens is over {FLOW_MAX_PROBLEMS:,} max-flow problems")
    ranking = None
    if args.from_word is not None:
        main = cap.main
        try:
            ranking = rank_heads(main.weights, main.q, args.from_word, args.to_word,
                                 versus=args.versus, causal=main.causal, layers=main.layers)
        except ValueError as e:
            raise UsageError(str(e)) from None
        types = {(r["layer"], r["head"]): r["type"] for r in rows_by_view[main.name]}
        for r in ranking:
            r["type"] = types[(r["layer"], r["head"])]
            if not math.isfinite(r["ratio"]):
                r["ratio"] = None                     # others' mean 0 (JSON has no inf)
        if ranking[0]["n_others"] == 0:
            cap.notes.append(f"no other word can attend to {args.to_word!r} (causal): the "
                             f"others' mean is 0 and the contrast is the raw weight")
    _print(con, cap, ranking, rows_by_view, args)
    if args.out:
        _write(con, args, cap, ranking, rows_by_view)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "inspect", help="what a model attends to: head ranking by contrast, head types, "
        "heatmaps, an offline viewer (attnkit's ports or any HF checkpoint directory)",
        description="Run a model on a text (or an image) and show its attention. --model is "
        "'minilm' (bundled) or a Hugging Face checkpoint directory: attnkit's port runs it "
        "when attnkit.load supports it exactly, otherwise transformers (AutoConfig + the "
        "model class of config.json's architectures + its own tokenizer or image "
        "processor, local files only; --via forces a path). Views: self-attention "
        "(encoders, decoders), encoder/decoder/cross-attention (encoder-decoders, with "
        "--target or generated tokens), patches over the image (ViT, --image) and "
        "--generate N (greedy, KV cache: how generated tokens attend). --from A --to B "
        "ranks heads by contrast: A's weight to B minus the other words' mean weight to B. "
        "With --out: PNG heatmaps, attention.html (one offline page) and inspect.json.",
        epilog='Example: attnkit inspect "The cat sat on the mat because it was tired." '
        "--from it --to cat --versus mat --out report")
    p.add_argument("text", nargs="?", help="the text to run (not for vision models)")
    p.add_argument("--model", default="minilm", help="'minilm', 'stdlib-lm' (bundled) or a "
                   "checkpoint directory (Hugging Face layout, safetensors) (default: minilm)")
    p.add_argument("--via", choices=("auto", "attnkit", "transformers"), default="auto",
                   help="which implementation runs the model (default: auto = attnkit's port "
                   "if attnkit.load accepts the directory, else transformers)")
    p.add_argument("--from", dest="from_word", help="the attending word (e.g. it; word#2 "
                   "for its second occurrence)")
    p.add_argument("--to", dest="to_word", help="the attended word (e.g. cat)")
    p.add_argument("--versus", help="a second attended word to compare with (e.g. mat)")
    p.add_argument("--top", type=int, default=5, help="how many ranked heads to show "
                   "(default: 5)")
    p.add_argument("--threshold", type=float, default=0.5, help="score a head needs for a "
                   "type (default: 0.5)")
    p.add_argument("--layers", help="only these layers, e.g. '0,5', '2-4' or '-1' "
                   "(default: all)")
    p.add_argument("--backend", default="auto", help="attention backend of attnkit's port "
                   "(weights recomputed by the reference where a backend never forms them) "
                   "(default: auto)")
    p.add_argument("--generate", type=int, metavar="N", help="decoders and encoder-decoders: "
                   "generate N tokens greedily and show how they attend")
    p.add_argument("--target", metavar="TEXT", help="encoder-decoders: the decoder's input "
                   "text (default: 20 generated tokens); with --ablate: the next token to "
                   "score (decoders) or the word whose final state is compared (encoders)")
    p.add_argument("--ablate", choices=("zero", "mean"), help="rank every head by the change "
                   "in the output when it is zeroed or replaced by its mean (transformers "
                   "models with attnkit inside; see attnkit patch)")
    p.add_argument("--image", metavar="FILE", help="vision transformers: the image to run")
    p.add_argument("--out", help="directory for PNG heatmaps, attention.html and inspect.json")
    from .induction import add_arguments
    add_arguments(p)
    p.set_defaults(func=run)
