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
