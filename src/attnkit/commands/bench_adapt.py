"""``attnkit bench --model M --text FILE --adapt N``: bench's zero-shot run, then each
candidate variant adapted for N steps (:mod:`attnkit.adaptation.sweep`, through
``attnkit.adapt``) and reported beside it (:mod:`attnkit.bench.adapted`). Every check runs
before any measurement (one line, exit 2)."""
from __future__ import annotations

import os
import shutil
import tempfile

from ..core.errors import UsageError

__all__ = ["add_arguments", "check", "zero_shot_variants", "prepare", "run"]

OPTIONS = ("adapt_dir", "adapt_every", "adapt_batch_size", "eval_text")


def add_arguments(p) -> None:
    g = p.add_argument_group("adaptation (--model, with --adapt N)")
    g.add_argument("--adapt", type=int, metavar="N", help="also adapt each variant (not "
                   "dense) to the model for N steps with attnkit adapt (attention transfer, "
                   "then distillation) on --text, one run per variant and --seq length, and "
                   "report zero-shot and adapted held-out fidelity side by side; learned "
                   "variants (gqa:N, linear:hedgehog) are measured only this way (default: "
                   "none, zero-shot only)")
    g.add_argument("--adapt-dir", help="where the adapted Hugging Face directories go, one per "
                   "variant and length, e.g. DIR/window-64@256; a finished run there is reused, "
                   "an interrupted one resumed (default: OUT/adapted with --out, else a "
                   "temporary directory, removed)")
    g.add_argument("--adapt-every", type=int, metavar="K", help="held-out fidelity every K "
                   "steps: the points of the curve (default: N / 5)")
    g.add_argument("--adapt-batch-size", type=int, metavar="B", help="windows per adaptation "
                   "step (default: 8)")
    g.add_argument("--eval-text", help="held-out text for the adapted fidelity (default: the "
                   "last 10%% of --text's windows, which adaptation never trains on)")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check(args) -> None:
    """The adaptation options on their own (no model needed)."""
    given = [k for k in OPTIONS if getattr(args, k, None) is not None]
    if args.adapt is None:
        if given:
            raise UsageError(f"{_flag(given[0])}: used with --adapt N only")
        return
    if args.inputs != "text":
        raise UsageError("--adapt: used with --model (inputs text) only, not --inputs random")
    if isinstance(args.adapt, bool) or args.adapt < 1:
        raise UsageError(f"--adapt: expected a number of steps >= 1, got {args.adapt}")
    if args.text is None:
        raise UsageError("--adapt: needs --text FILE, your own text to adapt on (the shipped "
                         "text is too short to train on and hold out)")
    for k in ("adapt_every", "adapt_batch_size"):
        v = getattr(args, k)
        if v is not None and v < 1:
            raise UsageError(f"{_flag(k)}: expected an integer >= 1, got {v}")
    if args.layers is not None:
        raise UsageError("--layers: not with --adapt (adaptation swaps every attention layer)")
    if args.device != "cpu":
        raise UsageError(f"--device: --adapt runs on cpu only (attnkit adapt has no device "
                         f"option), got {args.device!r}")
    if args.adapt_dir and os.path.exists(args.adapt_dir) and not os.path.isdir(args.adapt_dir):
        raise UsageError(f"--adapt-dir: expected a directory, got the existing file "
                         f"{args.adapt_dir!r}")


def zero_shot_variants(variants: list[str]) -> list[str]:
    """What bench measures zero-shot: learned variants run only after adaptation."""
    from ..engine.variants import parse_variant
    return [v for v in variants if not parse_variant(v).learned]


def prepare(args, source, variants: list[str], seqs: list[int]):
    """(plans, adapt root, keep): every adapt run checked, nothing trained yet."""
    from ..adaptation.sweep import plan_runs
    keep = bool(args.adapt_dir or args.out)
    root = args.adapt_dir or (os.path.join(args.out, "adapted") if args.out else
                              tempfile.mkdtemp(prefix="attnkit-adapt-"))
    try:
        plans = plan_runs(args.model, args.text, variants, seqs, args.adapt, root,
                          source=source, eval_text=args.eval_text, every=args.adapt_every,
                          batch_size=args.adapt_batch_size, threads=args.threads)
    except ValueError as e:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        raise UsageError(str(e)) from None
    if not plans:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        raise UsageError("--adapt: no variant to adapt in --variants (dense is the model "
                         "itself)")
    return plans, root, keep


def run(args, res: dict, prepared, text: str, cfg, con) -> None:
    """Adapt (or reuse), then print the adapted table and recommendation; fills
    ``res["adaptation"]`` for the report."""
    from ..adaptation.sweep import run_plans
    from ..bench import adapted
    plans, root, keep = prepared

    def log(s):
        con.print(s, markup=False, highlight=False)
    try:
        res["adaptation"] = run_plans(plans, text, cfg, log=log, keep=keep)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    res["adaptation"]["recommendation"] = adapted.recommend_adapted(res)
    for t in adapted.tables(res):
        con.print(t)
    con.print("Recommendation after adaptation: " + res["adaptation"]["recommendation"]["text"],
              style="bold", markup=False)
    for note in adapted.notes(res):
        con.print(f"* {note}", style="dim", markup=False)
