"""The ``attnkit`` subcommands, one module each: ``add_parser(sub)`` declares the options,
``run(args)`` does the work and returns the exit code (a user error raises
:class:`attnkit.core.errors.UsageError`; :mod:`attnkit.cli` prints it as one line, exit 2)."""
from . import adapt, backends, bench, inspect, patch, tour, train

COMMANDS = (backends, bench, inspect, patch, train, adapt, tour)

__all__ = ["COMMANDS"]
