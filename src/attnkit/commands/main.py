"""The ``attnkit`` command: the parser and the one error path.

Exit codes: 0 success, 1 the work failed, 2 bad arguments (one clear line on stderr,
never a traceback), 130 interrupted. Each subcommand lives in :mod:`attnkit.commands`.
"""
from __future__ import annotations

import argparse
import sys

from ..core.errors import UsageError

__all__ = ["build_parser", "main", "UsageError"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from ..core.version import __version__
    from . import COMMANDS
    p = _Parser(prog="attnkit", description="The attention mechanism, exact, fast and open to "
                "inspection. Layout everywhere: (B, H, T, D).",
                epilog="Exit codes: 0 ok, 1 failure, 2 bad arguments.")
    p.add_argument("--version", action="version", version=f"attnkit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for cmd in COMMANDS:
        cmd.add_parser(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .requirements import PACKAGES, check_command, missing_message
    try:
        check_command(args)  # packages the arguments need, before any work
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"attnkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # a dependency missing from this environment
        if (e.name or "").split(".")[0] not in PACKAGES:
            raise
        print(f"attnkit {args.command}: error: {missing_message(e.name)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
