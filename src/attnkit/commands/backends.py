"""``attnkit backends``: the registered attention backends."""
from __future__ import annotations


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..backends import available_backends, get_backend
    t = Table(title="attnkit backends (backend='auto' picks among them; see README)")
    t.add_column("name")
    t.add_column("what")
    for name in available_backends():
        try:
            desc = get_backend(name).description
        except ValueError as e:  # a lazily registered backend whose package is missing
            desc = f"unavailable here: {e}"
        t.add_row(name, desc)
    Console().print(t)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("backends", help="list the registered attention backends")
    p.set_defaults(func=run)
