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
