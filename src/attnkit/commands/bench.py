"""``attnkit bench``: which attention variant should a model use?

``--model NAME|DIR`` (inputs ``text``): fidelity inside the real model on real text,
speed and memory at its shapes, per-head evidence and a recommendation
(:mod:`attnkit.bench.model_bench`). ``--inputs random``: random q/k/v at ``--seq``
lengths and the given (or the model's) shapes (:mod:`attnkit.bench.runner`).

Every argument is checked before any measurement starts (one line, exit code 2).
"""
from __future__ import annotations

import os

from ..core.errors import UsageError
from . import bench_adapt

# option -> (default with random inputs, default with --model); None = no default
MODE_DEFAULTS = {
    "seq": ("1k,2k,4k", "256"),
    "variants": ("dense,window:256,bigbird,linear:elu",
                 "dense,window:16,window:64,bigbird:16,linear:elu"),
}
# random-input options: their defaults, and refused with --inputs text
RANDOM_ONLY = {"batch": 1, "heads": 12, "kv_heads": None, "head_dim": 64, "dtype": "fp32",
               "causal": True, "backward": False, "error_bound": 0.05, "error_max_n": 4096,
               "timeout": 600.0}
SHAPE_OPTS = ("heads", "kv_heads", "head_dim", "causal")


def default_text_path() -> str:
    """The English text shipped with attnkit (``attnkit/data/bench_text.txt``)."""
    from importlib.resources import files
    return str(files("attnkit") / "data" / "bench_text.txt")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resolve(args) -> None:
    """Fill the mode-dependent defaults in place; refuse options of the other mode."""
    if args.inputs is None:
        args.inputs = "text" if args.model else "random"
    if args.inputs == "text" and not args.model:
        raise UsageError("--inputs text: needs --model NAME|DIR (e.g. --model minilm)")
    model_mode = args.inputs == "text"
    for k, (rand, model) in MODE_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, model if model_mode else rand)
    if not model_mode and args.text is not None:
        raise UsageError("--text: used with --model (inputs text) only, not --inputs random")
    for k, d in RANDOM_ONLY.items():
        given = getattr(args, k) is not None
        if given and (model_mode or (args.model and k in SHAPE_OPTS)):
            raise UsageError(f"{_flag(k)}: the model fixes it; drop it "
                             + ("or use --inputs random without --model" if model_mode else
                                "(random inputs take the model's shapes)"))
        if not given:
            setattr(args, k, d)
    if not model_mode and args.layers is not None:
        raise UsageError("--layers: used with --model (inputs text) only")
    bench_adapt.check(args)


def _check_common(args) -> None:
    import torch
    try:
        dev = torch.device(args.device)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"--device: expected cpu or cuda[:i], got {args.device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device: expected cpu or cuda[:i], got {args.device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device: {args.device!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device: {args.device!r}, but there are "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    if args.repeats < 1:
        raise UsageError(f"--repeats: expected an int >= 1, got {args.repeats}")
    if args.threads < 0:
        raise UsageError(f"--threads: expected an int >= 0 (0 = torch's default), got "
                         f"{args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.time_budget > 0:
        raise UsageError(f"--time-budget: expected seconds > 0, got {args.time_budget:g}")
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out: expected a directory, got the existing file {args.out!r}")


def _variants(text: str, *, allow_ssm: bool = False) -> list[str]:
    from ..engine.variants import parse_variants
    try:
        vs = parse_variants(text)
    except ValueError as e:
        raise UsageError(f"--variants: {e}") from None
    for v in vs if not allow_ssm else ():
        try:
            v.attention_only("--variants")
        except ValueError as e:
            raise UsageError(str(e)) from None
    return [v.text for v in vs]


def _read_text(path: str | None) -> tuple[str, str]:
    shown = path or "the shipped text (attnkit/data/bench_text.txt)"
    path = path or default_text_path()
    if not os.path.isfile(path):
        raise UsageError(f"--text: expected a plain-text file, got {path!r} (no such file)")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--text: cannot read {path!r} as UTF-8 text ({e})") from None
    if not text.strip():
        raise UsageError(f"--text: {path!r} is empty (expected plain text to run the model on)")
    return text, shown


def _open(model: str, device: str):
    """The model source, loaded to run variants (a one-line UsageError naming --model)."""
    from ..sources import open_source
    src = open_source(model, device=device)
    try:
        return src.ready()
    except (ValueError, FileNotFoundError) as e:  # CheckpointError is a ValueError
        raise UsageError(f"--model: {e}") from None


def _command() -> str:
    import shlex
    import sys
    return "attnkit " + shlex.join(sys.argv[1:])


def run_model(args) -> int:
    from rich.console import Console

    from ..bench import model_report
    from ..bench.model_bench import ModelBenchConfig, check_config, run_model_bench, validate
    from ..bench.runner import parse_seqs, parse_size
    variants = _variants(args.variants)
    measured = bench_adapt.zero_shot_variants(variants) if args.adapt else variants
    try:
        seqs = parse_seqs(args.seq)
        budget = parse_size(args.memory_budget) if args.memory_budget else None
        layers = None if args.layers is None else sorted({int(x) for x in args.layers.split(",")})
    except ValueError as e:
        msg = str(e)
        if "invalid literal" in msg:
            msg = f"--layers: expected layer numbers like '0,5', got {args.layers!r}"
        raise UsageError(msg) from None
    cfg = ModelBenchConfig(seqs=seqs, variants=measured, layers=layers,
                           max_windows=args.max_windows, min_cosine=args.min_cosine,
                           max_kl=args.max_kl, memory_budget=budget,
                           time_budget_s=args.time_budget, min_runs=args.repeats)
    try:
        check_config(cfg)
    except ValueError as e:
        raise UsageError(str(e)) from None
    text, text_name = _read_text(args.text)
    source = _open(args.model, args.device)
    try:
        validate(source, text, cfg)
    except ValueError as e:
        raise UsageError(str(e)) from None
    prepared = bench_adapt.prepare(args, source, variants, seqs) if args.adapt else None
    con = Console()
    with con.status("bench") as status:
        res = run_model_bench(source, text, cfg, text_name=text_name,
                              on_step=lambda s: status.update(f"measuring {s}"))
    res["command"] = _command()
    con.print(f"[bold]{model_report.title(res)}[/]")
    for t in model_report.tables(res):
        con.print(t)
    con.print("Recommendation: " + res["recommendation"]["text"], style="bold", markup=False)
    for note in model_report.notes(res):
        con.print(f"* {note}", style="dim", markup=False)
    if prepared:
        bench_adapt.run(args, res, prepared, text, cfg, con)
    if args.out:
        for p in model_report.write(res, args.out):
            con.print(f"wrote {p}")
    return 0


def run_random(args) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from ..bench import report
    from ..bench.runner import Workload, parse_seqs, parse_size, recommend, run_bench
    variants = _variants(args.variants)
    heads, kv_heads, head_dim, causal = args.heads, args.kv_heads, args.head_dim, args.causal
    if args.model:  # random q/k/v at the model's shapes
        src = _open(args.model, "cpu")
        heads, kv_heads, head_dim = src.n_heads, src.n_kv_heads, src.head_dim
        kv_heads = None if kv_heads == heads else kv_heads
        causal = src.kind == "decoder"
    try:
        seqs = parse_seqs(args.seq)
        budget = parse_size(args.memory_budget) if args.memory_budget else None
    except ValueError as e:
        raise UsageError(str(e)) from None
    for k, v in (("batch", args.batch), ("heads", heads), ("head_dim", head_dim)):
        if isinstance(v, bool) or v < 1:
            raise UsageError(f"{_flag(k)}: expected an int >= 1, got {v}")
    if kv_heads is not None and (kv_heads < 1 or heads % kv_heads):
        raise UsageError(f"--kv-heads: expected a divisor of --heads={heads}, got {kv_heads}")
    if not args.error_bound > 0:
        raise UsageError(f"--error-bound: expected a number > 0, got {args.error_bound:g}")
    if args.error_max_n < 0:
        raise UsageError(f"--error-max-n: expected an int >= 0, got {args.error_max_n}")
    if not args.timeout > 0:
        raise UsageError(f"--timeout: expected seconds > 0, got {args.timeout:g}")
    wl = Workload(seqs=seqs, batch=args.batch, heads=heads, kv_heads=kv_heads,
                  head_dim=head_dim, dtype=args.dtype, device=args.device, causal=causal,
                  backward=args.backward)
    con = Console()
    title = (f"RANDOM q/k/v (not a model's activations): "
             f"{'causal' if wl.causal else 'bidirectional'} attention, B={wl.batch}, "
             f"H={wl.heads}{f'/{wl.kv_heads} KV' if wl.kv_heads else ''}, D={wl.head_dim}"
             f"{f' (shapes of {args.model})' if args.model else ''}, {wl.dtype}, {wl.device}, "
             f"{'forward+backward' if wl.backward else 'forward'}, "
             f"{args.threads or 'default'} thread(s)")
    with Progress(console=con, transient=True) as prog:
        task = prog.add_task("bench", total=(len(variants) + ("dense" not in variants))
                             * len(wl.seqs))

        def on_point(i, total, label):
            prog.update(task, completed=i, description=f"measuring {label}")
        result = run_bench(wl, variants, repeats=args.repeats, timeout=args.timeout,
                           error_max_n=args.error_max_n, on_point=on_point,
                           budget_s=args.time_budget, threads=args.threads)
    best, why = recommend(result, memory_budget=budget, error_bound=args.error_bound)
    con.print(report.rich_table(result, title))
    con.print(f"[bold]Recommendation:[/] {why}")
    con.print(f"* {report.NOTE}", style="dim", markup=False)
    if args.out:
        for p in report.write(result, args.out, title, why):
            con.print(f"wrote {p}")
    dead = [v for v in {r["variant"] for r in result["rows"]}
            if all("error" in r for r in result["rows"] if r["variant"] == v)]
    for v in sorted(dead):
        err = next(r["error"] for r in result["rows"] if r["variant"] == v)
        con.print(f"[red]{v}: failed at every length[/] ({err})")
    return 1 if dead else 0


def run(args) -> int:
    resolve(args)
    _check_common(args)
    return run_model(args) if args.inputs == "text" else run_random(args)


def add_parser(sub) -> None:
    rs, ms = MODE_DEFAULTS["seq"]
    rv, mv = MODE_DEFAULTS["variants"]
    p = sub.add_parser(
        "bench", help="which attention variant should a model use: fidelity, speed, memory",
        description="With --model: run the model on a text in windows of --seq tokens, swap "
        "each variant into its attention layers and measure fidelity to the dense model "
        "(encoders: cosine of hidden states and sentence embeddings; decoders: next-token KL, "
        "top-1 agreement, perplexity change; the worst layer's attention-output error), speed "
        "and memory at the model's shapes (interleaved, repeated until the medians are stable), "
        "per-head evidence (local and sink heads, mass each pattern keeps), and recommend the "
        "fastest variant meeting --min-cosine / --max-kl. With --inputs random: random q/k/v "
        "at --seq lengths (each point in its own process; error on random inputs).",
        epilog="Variants: dense, window:W, strided[:S], fixed[:S[:C]], dilated:W:D, "
        "longformer:W[:G], bigbird[:B], logsparse, linear:elu|relu|favor[:M]; with --adapt also "
        "the learned gqa:N and linear:hedgehog. "
        "Examples: attnkit bench --model minilm --out report; "
        "attnkit bench --model minilm --text my.txt --variants window:64 --adapt 50 --out r; "
        "attnkit bench --model ./my-hf-decoder --seq 512 --variants dense,window:128,linear:elu; "
        "attnkit bench --inputs random --seq 1k,4k,16k --variants dense,window:256,linear:elu")
    p.add_argument("--model", help="'minilm' or a Hugging Face checkpoint directory: "
                   "attnkit's port when it loads it exactly (BERT, GPT-2, Llama), else "
                   "transformers with every attention layer on attnkit (any text encoder or "
                   "causal LM, e.g. Qwen2, Mistral, DistilBERT; local files only, the model's "
                   "own tokenizer), as attnkit inspect chooses (default: none, i.e. random "
                   "inputs)")
    p.add_argument("--text", help="plain-text file to run the model on (default: the English "
                   "text shipped with attnkit, attnkit/data/bench_text.txt)")
    p.add_argument("--inputs", choices=["text", "random"], default=None,
                   help="text: the model on --text; random: random q/k/v (default: text with "
                   "--model, random without)")
    p.add_argument("--seq", default=None, help=f"sequence lengths, e.g. 128,256 or 1k,4k "
                   f"(default: {rs} with random inputs, {ms} with --model)")
    p.add_argument("--variants", default=None, help=f"comma-separated variants (default: {rv} "
                   f"with random inputs, {mv} with --model)")
    p.add_argument("--layers", help="--model: swap the variant into these attention layers "
                   "only, e.g. '0,1' (default: all)")
    p.add_argument("--max-windows", type=int, default=8,
                   help="--model: at most this many windows of the text per length (default: 8)")
    p.add_argument("--min-cosine", type=float, default=0.99, help="--model, encoders: least "
                   "cosine (hidden states and sentence embeddings) to recommend (default: 0.99)")
    p.add_argument("--max-kl", type=float, default=0.02, help="--model, decoders: largest "
                   "next-token KL in nats per token to recommend (default: 0.02)")
    p.add_argument("--memory-budget", help="e.g. 8GB: variants above it are not recommended "
                   "(default: none)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    p.add_argument("--repeats", type=int, default=5, help="at least this many timed runs, "
                   "then more until the median is stable or --time-budget is spent (default: 5)")
    p.add_argument("--time-budget", type=float, default=10.0, help="seconds of timing per "
                   "length (--model) or per point (random) (default: 10)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch; 0 keeps "
                   "torch's default (all cores), which on a shared machine makes times swing "
                   "with other processes' load (default: 1)")
    p.add_argument("--out", help="directory for bench.md, bench.json and PNGs (default: none)")
    bench_adapt.add_arguments(p)
    g = p.add_argument_group("random inputs (--inputs random)")
    g.add_argument("--batch", type=int, default=None, help="batch size (default: 1)")
    g.add_argument("--heads", type=int, default=None, help="query heads (default: 12; with "
                   "--model: the model's)")
    g.add_argument("--kv-heads", type=int, default=None, help="GQA/MQA key/value heads "
                   "(default: --heads)")
    g.add_argument("--head-dim", type=int, default=None, help="head dim (default: 64)")
    g.add_argument("--dtype", choices=["fp32", "fp16", "bf16", "fp64"], default=None,
                   help="(default: fp32)")
    c = g.add_mutually_exclusive_group()
    c.add_argument("--causal", dest="causal", action="store_const", const=True, default=None,
                   help="causal attention (the default)")
    c.add_argument("--bidirectional", dest="causal", action="store_const", const=False,
                   help="no causal mask")
    g.add_argument("--backward", action="store_const", const=True, default=None,
                   help="time forward+backward (default: forward only)")
    g.add_argument("--error-bound", type=float, default=None,
                   help="max relative error on random q/k/v to recommend (default: 0.05)")
    g.add_argument("--error-max-n", type=int, default=None,
                   help="measure error up to this n; the float64 reference is O(n^2) "
                   "(default: 4096)")
    g.add_argument("--timeout", type=float, default=None,
                   help="seconds per point before it is killed (default: 600)")
    p.set_defaults(func=run)
