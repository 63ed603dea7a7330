"""``attnkit train`` / ``python -m attnkit.train`` (also under torchrun): arguments and runs.

Exit codes: 0 done, 1 the run failed (diverged, a process died, ...), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from ..core.errors import UsageError
from .config import run_slug

__all__ = ["add_arguments", "run"]

# flag -> TrainConfig field, for the flags that configure a run (default None = not given)
_FIELDS = ("task", "text", "model", "attention", "width", "layers", "heads", "kv_heads", "ffn", "positions", "patch",
           "dropout", "init", "embed_std", "tie_output", "schedule", "min_lr_ratio",
           "target_acc", "steps", "batch_size", "lr", "warmup", "weight_decay", "grad_clip",
           "eval_every", "eval_batch_size", "ckpt_every", "keep_ckpts", "seed", "device")
# the fields a resumed run may change (neither changes the numbers of a step)
_RESUME_OVERRIDES = ("steps", "target_acc")

DESCRIPTION = textwrap.fill(
    "Train an attention variant on a task from the literature, with a progress bar, "
    "evaluation at intervals, atomic checkpoints (safetensors) and exact resume; under "
    "`torchrun --nproc_per_node P -m attnkit.train ...` with DistributedDataParallel "
    "(gloo on CPU, NCCL on GPU) on the same global batch. --sweep runs a grid "
    "(tasks x variants x widths, each over --lrs x --seeds) and writes the quality table. "
    "Ctrl-C leaves a checkpoint and says how to resume.")
EPILOG = """\
tasks (name[:key=value...]): mqar, assoc_recall, induction, selective_copy, listops (lm:
  GPT or SSM), reverse, sort (seq2seq: Transformer), digits (image: ViT), karate (graph: GAT);
  e.g. mqar:seq_len=128:n_pairs=8; lm[:seq_len=256:heldout=0.05] with --text FILE...
  (a tokenizer and a Llama-style decoder trained on your text, saved in Hugging Face
  format in OUT/model)
attention variants: dense, window:W, strided[:S], fixed[:S[:C]], dilated:W:D,
  longformer:W[:G], bigbird[:B], logsparse, linear:elu|relu|favor[:M], ssm (the SSM model)

examples:
  attnkit train --task mqar --attention window:16 --steps 2000 --out runs/mqar-window
  attnkit train --task lm --text notes/*.txt --vocab-size 4096 --width 128 --layers 4 \
      --heads 4 --kv-heads 2 --out runs/my-lm         # then: OUT/model is an HF directory
  attnkit train --resume runs/mqar-window
  attnkit train --resume runs/mqar-window --steps 4000     # extend it (exact)
  torchrun --nproc_per_node 2 -m attnkit.train --task mqar --out runs/ddp
  attnkit train --sweep --tasks mqar,mqar:seq_len=128:n_pairs=8 \\
      --variants dense,window:16,linear:elu,ssm --widths 64,128 \\
      --lrs 1e-3,3e-3 --seeds 0,1,2 --target-acc 0.99 --steps 4000 --out runs/quality

exit codes: 0 done, 1 the run failed, 2 bad arguments, 130 interrupted (Ctrl-C)"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to train")
    g.add_argument("--task", help="task spec (default mqar)")
    g.add_argument("--text", nargs="+", metavar="PATH", help="task lm: the text files (UTF-8) "
                   "the tokenizer and the model learn from; the last 5%% of the characters "
                   "(task parameter heldout) is held out")
    g.add_argument("--tokenizer", choices=["bpe", "byte"], help="task lm: byte-level BPE "
                   "trained on the text (default) or plain bytes")
    g.add_argument("--vocab-size", type=int, help="task lm, bpe: tokenizer size (default 4096)")
    g.add_argument("--model", help="gpt | ssm | transformer | vit | gat | llama (default: by the "
                   "task; llama for lm)")
    g.add_argument("--attention", help="attention variant (default dense)")
    g.add_argument("--width", type=int, help="model width d_model (default 64)")
    g.add_argument("--layers", type=int, help="layers (default 2)")
    g.add_argument("--heads", type=int, help="attention heads (default 2; GAT 8)")
    g.add_argument("--kv-heads", type=int, help="llama (task lm): key/value heads, a divisor "
                   "of --heads (GQA; default --heads)")
    g.add_argument("--ffn", type=int, help="feed-forward width (default 2 x width)")
    g.add_argument("--positions", choices=["learned", "sinusoidal", "rope", "alibi"],
                   help="GPT positions (default rope)")
    g.add_argument("--patch", type=int, help="ViT patch size (default 2)")
    g.add_argument("--dropout", type=float, help="dropout (default 0; GAT 0.6)")
    g = p.add_argument_group("recipe (GPT and SSM trained from scratch; see README)")
    g.add_argument("--init", choices=["scaled", "normal", "torch"],
                   help="scaled: embeddings N(0, 1), Linear N(0, 1/fan_in), residual outputs "
                   "/ sqrt(2 layers), output N(0, 1/width) (default); normal: N(0, 0.02) "
                   "everywhere (GPT-2); torch: PyTorch's defaults")
    g.add_argument("--embed-std", type=float, help="token-embedding std (default: scaled 1, "
                   "normal 0.02)")
    g.add_argument("--tie-output", action=argparse.BooleanOptionalAction, default=None,
                   help="output layer tied to the token embedding (default: untied)")
    g.add_argument("--schedule", choices=["constant", "cosine"],
                   help="learning rate after the warm-up: constant (default) or cosine "
                   "decay to lr x --min-lr-ratio at --steps")
    g.add_argument("--min-lr-ratio", type=float, help="cosine: final lr / peak (default 0.1)")
    g.add_argument("--target-acc", type=float, help="stop at the first evaluation whose "
                   "score (accuracy; exact match for seq2seq) is >= this (default: none)")
    g = p.add_argument_group("how")
    g.add_argument("--steps", type=int, help="optimizer steps (default 1000; with --resume: "
                   "extend or shorten the run to this many)")
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
    g.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; with "
                   "--resume: the run's own, saved in DIR/settings.json)")
    g.add_argument("--dist-timeout", type=float, default=60.0,
                   help="seconds a collective waits for a dead or stuck process (default 60)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("sweep (quality table)")
    g.add_argument("--sweep", action="store_true", help="run a grid into --out")
    g.add_argument("--tasks", help="comma-separated task specs for the grid")
    g.add_argument("--variants", help="comma-separated attention variants for the grid")
    g.add_argument("--widths", help="comma-separated widths for the grid (default 64)")
    g.add_argument("--lrs", help="comma-separated learning rates: each cell keeps the best "
                   "(most seeds at --target-acc, then fewest steps; else the best mean "
                   "score), all recorded (default: --lr)")
    g.add_argument("--seeds", help="comma-separated seeds: each cell is run with each, and "
                   "reports the mean and the min (default: --seed)")
    g.add_argument("--jobs", type=int, default=1, help="grid runs in parallel (default 1)")


def _given(args) -> dict:
    given = {f: getattr(args, f) for f in _FIELDS if getattr(args, f, None) is not None}
    extra = [f"{k}={getattr(args, k)}" for k in ("tokenizer", "vocab_size")
             if getattr(args, k, None) is not None]
    if extra:                                  # task lm's parameters, as in its spec
        task = given.get("task") or args.tasks or ""
        if task.split(":")[0] != "lm" or args.sweep:
            flag = "--tokenizer" if args.tokenizer is not None else "--vocab-size"
            raise UsageError(f"{flag}: a parameter of --task lm, got task {task or 'mqar'!r}")
        given["task"] = ":".join([task, *extra])
    return given


def _check_threads(args) -> None:
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads: expected an int >= 1, got {args.threads}")
    if not args.dist_timeout > 0:
        raise UsageError(f"--dist-timeout: expected a number of seconds > 0, got "
                         f"{args.dist_timeout}")
    if args.jobs < 1:
        raise UsageError(f"--jobs: expected an int >= 1, got {args.jobs}")


def run(args) -> int:
    from .checkpoint import CheckpointError
    from .config import TrainConfig
    from .loop import TrainingInterrupted, train
    _check_threads(args)
    if args.sweep:
        return _sweep(args)
    for f in ("tasks", "variants", "widths", "lrs", "seeds"):
        if getattr(args, f):
            raise UsageError(f"--{f}: only with --sweep")
    if args.jobs != 1:
        raise UsageError("--jobs: only with --sweep")
    given = _given(args)
    overrides = {}
    try:
        if args.resume:
            overrides = {k: given.pop(k) for k in _RESUME_OVERRIDES if k in given}
            if given:
                raise UsageError(f"--resume takes the run's own config.json (it may change "
                                 f"only --steps and --target-acc); drop "
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
            if out.exists() and not out.is_dir():
                raise UsageError(f"--out: {out} is a file; expected a directory (new or empty)")
        metrics = train(cfg, out, resume=bool(args.resume), progress=not args.no_progress,
                        dist_timeout=args.dist_timeout, threads=args.threads, **overrides)
    except TrainingInterrupted as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"attnkit train: interrupted; checkpoint at step {e.step} in {e.out}; resume "
                  f"with: attnkit train --resume {e.out}", file=sys.stderr)
        return 130
    except (ValueError, CheckpointError, OSError) as e:
        raise UsageError(str(e)) from None
    if int(os.environ.get("RANK", "0")) == 0:
        ev = ", ".join(f"{k} {v:.4f}" for k, v in metrics["eval"].items())
        print(f"done: {metrics['steps']} steps, loss {metrics['final_loss']:.4f}, {ev}; "
              f"wrote {out}/metrics.json")
    return 0


def _floats(flag: str, text: str | None, cast, example: str) -> list | None:
    if text is None:
        return None
    try:
        vals = [cast(x) for x in text.split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals or len(set(vals)) != len(vals):
        raise UsageError(f"--{flag}: expected a comma-separated list of distinct values like "
                         f"{example}, got {text!r}")
    return vals


def _sweep(args) -> int:
    from .loop import TrainingInterrupted
    from .sweep import run_sweep
    given = _given(args)
    for f in ("task", "attention", "width"):
        if f in given:
            raise UsageError(f"--{f}: a sweep takes --{f}s (a list) instead")
    for f in ("lr", "seed"):
        if f in given and getattr(args, f + "s"):
            raise UsageError(f"--{f}: give --{f}s (the sweep's list) or --{f}, not both")
    if args.resume:
        raise UsageError("--resume: a sweep resumes by itself: run it again with the same --out")
    if not (args.tasks and args.variants and args.out):
        raise UsageError("--sweep needs --tasks, --variants and --out")
    widths = _floats("widths", args.widths or "64", int, "64,128")
    lrs = _floats("lrs", args.lrs, float, "3e-4,1e-3,3e-3")
    seeds = _floats("seeds", args.seeds, int, "0,1,2")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        table = run_sweep(tasks, variants, widths, Path(args.out), base=given, jobs=args.jobs,
                          threads=args.threads, progress=not args.no_progress, lrs=lrs,
                          seeds=seeds)
    except TrainingInterrupted:
        print(f"attnkit train: sweep interrupted; finished runs are kept and unfinished ones "
              f"have checkpoints: run the same command again to resume", file=sys.stderr)
        return 130
    except ValueError as e:
        raise UsageError(str(e)) from None
    failed = [c for c in table["cells"] if "error" in c]
    return 1 if failed else 0
