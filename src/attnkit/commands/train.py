"""``attnkit train``: the command-line face of :mod:`attnkit.train`."""
from __future__ import annotations

import argparse
import sys


def run(args) -> int:
    from ..train import command
    try:
        return command.run(args)
    except (FloatingPointError, RuntimeError) as e:   # diverged; a peer process died
        print(f"attnkit train: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def add_parser(sub) -> None:
    from ..train.command import DESCRIPTION, EPILOG, add_arguments
    p = sub.add_parser("train", help="train attention variants on tasks from the literature; "
                       "checkpoints, resume, torchrun, --sweep for the quality table",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)
