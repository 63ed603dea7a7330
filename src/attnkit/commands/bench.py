"""``attnkit bench``: speed, memory, scaling and error of attention variants, and a
recommendation."""
from __future__ import annotations

from ..errors import UsageError


def run(args) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from ..bench import report
    from ..bench.runner import Workload, parse_seqs, parse_size, recommend, run_bench
    from ..variants import parse_variants
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


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="time, memory, scaling exponent and error of attention variants",
        description="Measure attention variants on a workload and recommend one. Each point "
        "runs in its own process (for peak memory); times are medians after warm-up; dense "
        "softmax attention is always measured as the baseline. Error is ||out - dense||/||dense|| "
        "on the same random inputs. Default workload: GPT-2 small (12 heads x 64), causal.",
        epilog="Variants: dense, window:W, strided[:S], fixed[:S[:C]], dilated:W:D, "
        "longformer:W[:G], bigbird[:B], logsparse, linear:elu|relu|favor[:M]. "
        "Example: attnkit bench --seq 1k,4k,16k --variants dense,window:256,linear:elu --out report")
    p.add_argument("--seq", default="1k,2k,4k", help="sequence lengths (default 1k,2k,4k)")
    p.add_argument("--variants", default="dense,window:256,bigbird,linear:elu",
                   help="comma-separated variants (default dense,window:256,bigbird,linear:elu)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=None, help="GQA/MQA key/value heads")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16", "fp64"], default="fp32")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--causal", dest="bidirectional", action="store_false",
                   help="causal attention (the default)")
    p.add_argument("--bidirectional", action="store_true", help="no causal mask")
    p.add_argument("--backward", action="store_true", help="time forward+backward")
    p.add_argument("--memory-budget", help="e.g. 8GB: variants above it are not recommended")
    p.add_argument("--error-bound", type=float, default=0.05,
                   help="max relative error for a recommendation (default 0.05)")
    p.add_argument("--error-max-n", type=int, default=4096,
                   help="measure error up to this n (the float64 reference is O(n^2))")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per point (median)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per point")
    p.add_argument("--out", help="directory for bench.md, bench.json and bench.png")
    p.set_defaults(func=run)
