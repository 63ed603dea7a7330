"""``attn_implementation`` names: ``attnkit[:BACKEND][:VARIANT]``.

===================================  ================================================
``"attnkit"``                        every layer through ``attnkit.attention``, backend
                                     ``auto``, exact (the model as trained)
``"attnkit:tiled"``                  the same on one backend (``reference``, ``sdpa``,
                                     ``flex``, ``tiled``, ``triton``, ...)
``"attnkit:window:256"``             a variant swapped into every layer (the grammar of
                                     ``attnkit bench``/``train``: ``window:W``,
                                     ``bigbird:B``, ``strided:S``, ``linear:elu``, ...),
                                     AND-ed with the model's own mask
``"attnkit:tiled:window:256"``       both
===================================  ================================================
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...backends import available_backends
from ...engine.variants import Variant, parse_variant

__all__ = ["Implementation", "parse_implementation", "implementation_name", "PREFIX"]

PREFIX = "attnkit"


@dataclass(frozen=True)
class Implementation:
    name: str
    backend: str               # "auto" or a registered backend
    variant: Variant | None    # None: the model's own attention (dense, exact)


_PARSED: dict[str, Implementation] = {}


def parse_implementation(name: str) -> Implementation:
    """``"attnkit:tiled:window:256"`` -> Implementation; ValueError naming what is wrong.
    Cached; under torch.compile parsed afresh (a pure function: no guard on the cache,
    which a first call inside the compiled region would fill, forcing a recompile)."""
    if torch.compiler.is_compiling():
        return _parse(name)
    hit = _PARSED.get(name) if isinstance(name, str) else None
    if hit is None:
        hit = _parse(name)
        _PARSED[name] = hit
    return hit


def _parse(name: str) -> Implementation:
    if not isinstance(name, str) or name.split(":")[0] != PREFIX:
        raise ValueError(f"attn_implementation: expected 'attnkit[:BACKEND][:VARIANT]', got "
                         f"{name!r}")
    rest = name.split(":")[1:]
    backend = "auto"
    if rest and rest[0] in available_backends():
        backend, rest = rest[0], rest[1:]
    variant = None
    if rest:
        try:
            variant = parse_variant(":".join(rest))
        except ValueError as e:
            raise ValueError(f"attn_implementation {name!r}: {e} (or a backend: "
                             f"{', '.join(available_backends())})") from None
        variant.attention_only(f"attn_implementation {name!r}")
        if variant.is_dense:
            variant = None
    return Implementation(name, backend, variant)


def implementation_name(spec: str | None = None) -> str:
    """``None`` -> ``"attnkit"``; ``"window:256"`` -> ``"attnkit:window:256"`` (validated)."""
    if spec is None or spec == "":
        return PREFIX
    if not isinstance(spec, str):
        raise TypeError(f"variant: expected a string like 'window:256' or 'tiled', got "
                        f"{type(spec).__name__}")
    name = spec if spec.split(":")[0] == PREFIX else f"{PREFIX}:{spec}"
    parse_implementation(name)
    return name
