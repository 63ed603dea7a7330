"""The MiniLM adaptation table of the README: ``attnkit adapt`` on all-MiniLM-L6-v2 for
each variant, held-out pooled-embedding cosine against the dense model (mean and worst
window) before and after, and the time spent.

Text: the docstrings (> 200 characters) of the Python standard library's top-level
modules, present on every machine and written by nobody here; a module's docstrings are
held out when crc32(file name) % 10 == 0 (112 docstrings, 73 kB), the rest (1079, 616 kB)
train. Every run: one seed, the default recipe (a quarter of the steps attention transfer,
the rest distillation), the held-out text scored every --eval-every steps.

    python benchmarks/adapt.py --out runs/adapt [--runs window:16@128:40,gqa:4@128:40]
        [--threads 2] [--eval-windows 32]

Each run is ``VARIANT@SEQ:STEPS``; the adapted directories stay in --out; the table is
printed and written to --out/table.md.
"""
from __future__ import annotations

import argparse
import ast
import json
import shutil
import sysconfig
import time
import zlib
from pathlib import Path

import torch

DEFAULT = ("window:64@256:20,window:16@128:40,bigbird:16@256:20,linear:hedgehog@128:40,"
           "gqa:4@128:40")


def docstrings(out: Path) -> tuple[Path, Path]:
    """Write train.txt / held.txt (see the module doc); returns their paths."""
    train, held = [], []
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(p.read_text(errors="replace"))
        except SyntaxError:
            continue
        docs = [ast.get_docstring(n) for n in ast.walk(tree) if isinstance(
            n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        docs = [d for d in docs if d and len(d) > 200]
        (held if zlib.crc32(p.name.encode()) % 10 == 0 else train).extend(docs)
    a, b = out / "train.txt", out / "held.txt"
    a.write_text("\n\n".join(train))
    b.write_text("\n\n".join(held))
    return a, b


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", default=DEFAULT)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr1", type=float, default=None, help="stage-1 lr (default: adapt's)")
    ap.add_argument("--lr2", type=float, default=None, help="stage-2 lr (default: adapt's)")
    ap.add_argument("--stage1-weights", type=float, default=None,
                    help="linear variants: weight of stage 1's attention-weight matching "
                    "(default: adapt's: 1 for linear:hedgehog, 0 for fixed maps); passed "
                    "to the linear runs only")
    ap.add_argument("--stage1-steps", type=int, default=None,
                    help="attention-transfer steps (default: adapt's, a quarter)")
    args = ap.parse_args(argv)
    import attnkit
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, held = docstrings(out)
    rows = []
    for run in args.runs.split(","):
        variant, rest = run.split("@")
        seq, steps = (int(x) for x in rest.split(":"))
        d = out / f"{variant.replace(':', '-')}-{seq}-s{args.seed}"
        shutil.rmtree(d, ignore_errors=True)
        t0 = time.perf_counter()
        rec = attnkit.adapt("minilm", variant, str(train), steps, str(d), eval_text=str(held),
                            seq=seq, batch_size=args.batch_size, eval_windows=args.eval_windows,
                            eval_every=max(1, steps // 4), seed=args.seed, progress=False,
                            **{k: getattr(args, k) for k in ("lr1", "lr2", "stage1_steps",
                                                            "stage1_weights")
                               if getattr(args, k) is not None and not (
                                   k == "stage1_weights" and not variant.startswith("linear"))})
        shutil.rmtree(d / "ckpt", ignore_errors=True)      # the run's checkpoint (resume)
        h0, h1 = rec["history"][0], rec["history"][-1]
        rows.append((variant, seq, steps, h0["embedding_cosine"], h0["embedding_cosine_min"],
                     h1["embedding_cosine"], h1["embedding_cosine_min"],
                     h1["worst_layer_error"], rec["seconds"], time.perf_counter() - t0,
                     [(h["step"], round(h["embedding_cosine"], 4)) for h in rec["history"]]))
        print(json.dumps(rows[-1]), flush=True)
    lines = ["| variant | tokens | steps | zero-shot cosine (worst) | adapted cosine (worst) | "
             "worst layer error | adapt time | curve (step: cosine) |",
             "|---|---:|---:|---|---|---:|---:|---|"]
    for v, n, s, c0, m0, c1, m1, e, sec, _, curve in rows:
        pts = ", ".join(f"{a}: {b:.3f}" for a, b in curve)
        lines.append(f"| {v} | {n} | {s} | {c0:.3f} ({m0:.3f}) | {c1:.3f} ({m1:.3f}) | "
                     f"{e:.3f} | {sec / 60:.1f} min | {pts} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
