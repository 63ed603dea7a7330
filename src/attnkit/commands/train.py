"""``attnkit train``: the command-line face of :mod:`attnkit.train`."""
from __future__ import annotations

import argparse
import os
import sys


def run(args) -> int:
    from ..train import command
    try:
        return command.run(args)
    except (FloatingPointError, RuntimeError) as e:   # diverged; a peer process died
        print(f"attnkit train: failed: {type(e).__name__}: {e}", file=sys.stderr)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # a peer died: gloo's/NCCL's threads can abort the interpreter's teardown
            # ("terminate called without an active exception", exit -6, seen in CI), so
            # leave with the exit code we mean, without running the C++ destructors
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(1)
        return 1


def add_parser(sub) -> None:
    from ..train.command import DESCRIPTION, EPILOG, add_arguments
    p = sub.add_parser("train", help="train attention variants on tasks from the literature; "
                       "checkpoints, resume, torchrun, --sweep for the quality table",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)
