"""The ``attnkit`` console script's entry point (``pyproject.toml``: ``attnkit.cli:main``;
``python -m attnkit.cli`` too); the command itself lives in :mod:`attnkit.commands` (the
top layer)."""
import sys

from .commands.main import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
