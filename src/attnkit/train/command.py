"""``attnkit train`` / ``python -m attnkit.train`` (also under torchrun): arguments and runs.

Exit codes: 0 done, 1 the run failed (diverged, a process died, ...), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import os
import textwrap
from pathlib import Path

from ..errors import UsageError
from .config import run_slug

__all__ = ["add_arguments", "run"]

# flag -> TrainConfig field, for the flags that configure a run (default None = not given)
_FIELDS = ("task", "model", "attention", "width", "layers", "heads", "ffn", "positions", "patch",
           "dropout", "steps", "batch_size", "lr", "warmup", "weight_decay", "grad_clip",
           "eval_every", "eval_batch_size", "ckpt_every", "keep_ckpts", "seed", "device")

DESCRIPTION = textwrap.fill(
    "Train an attention variant on a task from the literature, with a progress bar, "
    "evaluation at intervals, atomic checkpoints (safetensors) and exact resume; under "
    "`torchrun --nproc_per_node P -m attnkit.train ...` with DistributedDataParallel "
    "(gloo on CPU, NCCL on GPU) on the same global batch. --sweep runs a grid "
    "(tasks x variants x widths) and writes the quality table.")
EPILOG = """\
tasks (name[:key=value...]): mqar, assoc_recall, induction, selective_copy, listops (lm:
  GPT or SSM), reverse, sort (seq2seq: Transformer), digits (image: ViT), karate (graph: GAT);
  e.g. mqar:seq_len=128:n_pairs=8
attention variants: dense, window:W, strided[:S], fixed[:S[:C]], dilated:W:D,
  longformer:W[:G], bigbird[:B], logsparse, linear:elu|relu|favor[:M], ssm (the SSM model)

examples:
  attnkit train --task mqar --attention window:16 --steps 2000 --out runs/mqar-window
  attnkit train --resume runs/mqar-window
  torchrun --nproc_per_node 2 -m attnkit.train --task mqar --out runs/ddp
  attnkit train --sweep --tasks mqar,mqar:seq_len=128:n_pairs=8 \\
      --variants dense,window:16,linear:elu,ssm --widths 64,128 --out runs/quality

exit codes: 0 done, 1 the run failed, 2 bad arguments"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to train")
    g.add_argument("--task", help="task spec (default mqar)")
    g.add_argument("--model", help="gpt | ssm | transformer | vit | gat (default: by the task)")
    g.add_argument("--attention", help="attention variant (default dense)")
    g.add_argument("--width", type=int, help="model width d_model (default 64)")
    g.add_argument("--layers", type=int, help="layers (default 2)")
    g.add_argument("--heads", type=int, help="attention heads (default 2; GAT 8)")
    g.add_argument("--ffn", type=int, help="feed-forward width (default 2 x width)")
    g.add_argument("--positions", choices=["learned", "sinusoidal", "rope", "alibi"],
                   help="GPT positions (default rope)")
    g.add_argument("--patch", type=int, help="ViT patch size (default 2)")
    g.add_argument("--dropout", type=float, help="dropout (default 0; GAT 0.6)")
    g = p.add_argument_group("how")
    g.add_argument("--steps", type=int, help="optimizer steps (default 1000)")
    g.add_argument("--batch-size", type=int, help="global batch size (default 64)")
    g.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    g.add_argument("--warmup", type=int, help="warm-up steps (default 50)")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.1)")
    g.add_argument("--grad-clip", type=float, help="max gradient norm, 0 = off (default 1)")
    g.add_argument("--eval-every", type=int, help="evaluate every N steps (default 200)")
    g.add_argument("--eval-batch-size", type=int, help="evaluation batch size (default 250)")
    g.add_argument("--ckpt-every", type=int, help="checkpoint every N steps (default 200)")
    g.add_argument("--keep-ckpts", type=int, help="checkpoints kept (default 2)")
    g.add_argument("--seed", type=int, help="seed of init, dropout and data (default 0)")
    g.add_argument("--device", help="cpu or cuda (default cpu)")
    g = p.add_argument_group("run")
    g.add_argument("--out", help="run directory (default runs/TASK-ATTENTION-dWIDTH)")
    g.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its latest "
                   "checkpoint, with its own config.json")
    g.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    g.add_argument("--dist-timeout", type=float, default=60.0,
                   help="seconds a collective waits for a dead or stuck process (default 60)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("sweep (quality table)")
    g.add_argument("--sweep", action="store_true", help="run a grid into --out")
    g.add_argument("--tasks", help="comma-separated task specs for the grid")
    g.add_argument("--variants", help="comma-separated attention variants for the grid")
    g.add_argument("--widths", help="comma-separated widths for the grid (default 64)")
    g.add_argument("--jobs", type=int, default=1, help="grid runs in parallel (default 1)")


def _given(args) -> dict:
    return {f: getattr(args, f) for f in _FIELDS if getattr(args, f, None) is not None}


def run(args) -> int:
    from .checkpoint import CheckpointError
    from .config import TrainConfig
    from .loop import train
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.sweep:
        return _sweep(args)
    for f in ("tasks", "variants", "widths"):
        if getattr(args, f):
            raise UsageError(f"--{f}: only with --sweep")
    given = _given(args)
    try:
        if args.resume:
            if given:
                raise UsageError(f"--resume takes the run's own config.json; drop "
                                 f"{', '.join('--' + k.replace('_', '-') for k in given)}")
            if args.out and Path(args.out) != Path(args.resume):
                raise UsageError("--out: with --resume the run stays in its directory")
            cfg, out = None, Path(args.resume)
            if not out.is_dir():
                raise UsageError(f"--resume: {out} is not a directory")
        else:
            cfg = TrainConfig(**given)
            slug = run_slug(f"{cfg.task}-{cfg.attention}-d{cfg.width}")
            out = Path(args.out or f"runs/{slug}")
        metrics = train(cfg, out, resume=bool(args.resume), progress=not args.no_progress,
                        dist_timeout=args.dist_timeout)
    except (ValueError, CheckpointError) as e:
        raise UsageError(str(e)) from None
    if int(os.environ.get("RANK", "0")) == 0:
        ev = ", ".join(f"{k} {v:.4f}" for k, v in metrics["eval"].items())
        print(f"done: {metrics['steps']} steps, loss {metrics['final_loss']:.4f}, {ev}; "
              f"wrote {out}/metrics.json")
    return 0


def _sweep(args) -> int:
    from .sweep import run_sweep
    given = _given(args)
    for f in ("task", "attention", "width"):
        if f in given:
            raise UsageError(f"--{f}: a sweep takes --{f}s (a list) instead")
    if args.resume:
        raise UsageError("--resume: a sweep resumes by itself: run it again with the same --out")
    if not (args.tasks and args.variants and args.out):
        raise UsageError("--sweep needs --tasks, --variants and --out")
    try:
        widths = [int(w) for w in (args.widths or "64").split(",") if w.strip()]
    except ValueError:
        raise UsageError(f"--widths: expected integers like 64,128, got {args.widths!r}") from None
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        table = run_sweep(tasks, variants, widths, Path(args.out), base=given, jobs=args.jobs,
                          threads=args.threads, progress=not args.no_progress)
    except ValueError as e:
        raise UsageError(str(e)) from None
    failed = [c for c in table["cells"] if "error" in c]
    return 1 if failed else 0

