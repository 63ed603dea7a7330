"""Deprecated: the named sparse patterns moved to :mod:`attnkit.sparse` (``local`` is now
``window``). Every name still resolves here, with a DeprecationWarning."""
import warnings as _warnings

from . import sparse as _sparse


def __getattr__(name):
    if name == "local":
        return _sparse.local
    if hasattr(_sparse, name):
        _warnings.warn(f"attnkit.patterns.{name} is now attnkit.sparse.{name}",
                       DeprecationWarning, stacklevel=2)
        return getattr(_sparse, name)
    raise AttributeError(f"module 'attnkit.patterns' has no attribute {name!r}")
