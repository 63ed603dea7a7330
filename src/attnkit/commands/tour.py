"""``attnkit tour``: the engine tour (see :mod:`attnkit.tour`)."""
from __future__ import annotations


def run(args) -> int:
    from .. import tour
    return tour.run(args)


def add_parser(sub) -> None:
    from .. import tour
    p = sub.add_parser("tour", help="a short tour of the engine with live measurements "
                       "(the first part of `make demo`)",
                       description=tour.__doc__.split("\n\n")[0])
    tour.add_arguments(p)
    p.set_defaults(func=run)
