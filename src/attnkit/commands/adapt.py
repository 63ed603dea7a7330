"""``attnkit adapt``: adapt a pretrained model to a cheaper attention (see
:mod:`attnkit.adaptation`). Bad input: one line, exit 2; Ctrl-C: a checkpoint, exit 130."""
from __future__ import annotations

import argparse
import textwrap

from ..core.errors import UsageError

DESCRIPTION = textwrap.fill(
    "Turn a pretrained model into a cheaper-attention model that keeps its quality: the "
    "teacher is the model (dense), the student the same weights running --variant. Stage 1 "
    "(attention transfer): each layer's attention is fitted to the teacher's on your text, "
    "the rest frozen; stage 2: the whole model is distilled (full fine-tuning). Held-out "
    "fidelity (bench's metrics) before, during and after; checkpoints and exact --resume; "
    "--out is a Hugging Face directory that loads with attnkit.hf.from_pretrained(DIR).")
EPILOG = """\
variants: window:W, bigbird[:B], longformer:W[:G], strided[:S], ..., linear:elu|relu|favor,
  linear:hedgehog (a learnable feature map), gqa:N (K/V heads mean-pooled into N groups)

examples:
  attnkit adapt --model minilm --variant window:64 --seq 256 --text docs.txt --steps 200 \\
      --out minilm-w64
  attnkit adapt --resume minilm-w64                 # after Ctrl-C or kill -9 (exact)
  torchrun --nproc_per_node 2 -m attnkit adapt --model minilm --variant window:64 \\
      --seq 256 --text docs.txt --steps 200 --batch-size 8 --out minilm-w64
                       # data parallel: each process takes 8/2 windows of every step
  attnkit bench --model minilm-w64 --text docs.txt --variants window:64

exit codes: 0 done, 2 bad arguments, 130 interrupted (Ctrl-C; resume with --resume)"""

_OPTIONS = ("seq", "batch_size", "stage1_steps", "lr1", "lr2", "stage1_weights", "eval_every",
            "eval_fraction", "eval_windows", "ckpt_every", "seed", "threads")


def add_parser(sub) -> None:
    p = sub.add_parser("adapt", help="adapt a pretrained model to a cheaper attention "
                       "(attention transfer + distillation); an adapted HF directory",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="'minilm' or a Hugging Face checkpoint directory that "
                   "attnkit's transformers integration runs")
    p.add_argument("--variant", help="the attention to adapt to (e.g. window:64, gqa:4)")
    p.add_argument("--text", help="training text (a UTF-8 file)")
    p.add_argument("--eval-text", help="held-out text (default: the last --eval-fraction "
                   "of --text's windows, never trained on)")
    p.add_argument("--steps", type=int, help="optimizer steps, both stages")
    p.add_argument("--out", help="the directory to write (new or empty)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR (--steps may "
                   "extend it)")
    p.add_argument("--seq", type=int, help="tokens per window (default 128)")
    p.add_argument("--batch-size", type=int, help="windows per step (default 8)")
    p.add_argument("--stage1-steps", type=int, help="attention-transfer steps (default "
                   "steps / 4)")
    p.add_argument("--lr1", type=float, help="stage-1 learning rate (default 1e-3)")
    p.add_argument("--lr2", type=float, help="stage-2 learning rate (default 5e-5)")
    p.add_argument("--stage1-weights", type=float, metavar="W", help="linear and gqa "
                   "variants: weight of stage 1's attention-weight matching term, KL(teacher "
                   "softmax row || student row: linear, or softmax over gqa's pooled keys), "
                   "added to the output loss (default 1 for linear:hedgehog, 0 for a fixed "
                   "map such as linear:elu and for gqa: 0 is outputs only; refused for sparse "
                   "variants)")
    p.add_argument("--eval-every", type=int, help="held-out evaluation every K steps "
                   "(default steps / 5)")
    p.add_argument("--eval-fraction", type=float, help="held-out share of --text (default 0.1)")
    p.add_argument("--eval-windows", type=int, help="at most this many held-out windows "
                   "(default 64)")
    p.add_argument("--ckpt-every", type=int, help="checkpoint every K steps (default: with "
                   "each evaluation)")
    p.add_argument("--seed", type=int, help="batch order (default 0)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's; kept for "
                   "--resume)")
    p.add_argument("--dist-timeout", type=float, default=60.0, help="under torchrun: "
                   "seconds a process waits for the others before failing (default 60)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..adaptation import adapt
    opts = {k: getattr(args, k) for k in _OPTIONS if getattr(args, k) is not None}
    if args.resume:
        given = [f"--{k}" for k in ("model", "variant", "text", "eval_text", "out")
                 if getattr(args, k) is not None] + [f"--{k.replace('_', '-')}" for k in opts]
        if given:
            raise UsageError(f"--resume: continues with the run's own settings; drop "
                             f"{', '.join(given)} (only --steps may change)")
    else:
        missing = [f"--{k}" for k in ("model", "variant", "text", "steps", "out")
                   if getattr(args, k) is None]
        if missing:
            raise UsageError(f"{', '.join(missing)}: required (or --resume DIR)")
    if not args.dist_timeout > 0:
        raise UsageError(f"--dist-timeout: expected a number of seconds > 0, got "
                         f"{args.dist_timeout}")
    try:
        adapt(args.model, args.variant, args.text, args.steps, args.resume or args.out,
              resume=bool(args.resume), progress=not args.no_progress,
              dist_timeout=args.dist_timeout,
              eval_text=args.eval_text, **({} if args.resume else opts))
    except ValueError as e:
        raise UsageError(str(e)) from None
    return 0
