"""The one table of named patterns by variant name (``window:256``, ``bigbird:64``...):
:mod:`attnkit.engine.variants` (``bench``, ``train``), :mod:`attnkit.analysis.approx` and the
benchmarks all read it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ..masks import dilated, window
from .bigbird import bigbird
from .fixed import fixed
from .log_sparse import log_sparse
from .longformer import longformer
from .pattern import Pattern
from .strided import strided

__all__ = ["PatternEntry", "PATTERNS", "build_pattern"]


@dataclass(frozen=True)
class PatternEntry:
    """``grammar``: how it is written; ``build(args, n, causal)``: the pattern for n tokens
    (``causal`` is ignored by patterns that are causal by definition)."""
    name: str
    grammar: str
    min_args: int
    max_args: int
    build: Callable[[tuple, int, bool], Pattern]
    doc: str


def _sqrt(n: int) -> int:
    return max(1, round(math.sqrt(n)))


PATTERNS: dict[str, PatternEntry] = {e.name: e for e in [
    PatternEntry("window", "window:W", 1, 1,
                 lambda a, n, c: window(a[0], 0 if c else a[0]),
                 "sliding window, W keys back (and W ahead if not causal)"),
    PatternEntry("strided", "strided[:S]", 0, 1,
                 lambda a, n, c: strided(a[0] if a else _sqrt(n)),
                 "Sparse Transformer strided (causal); S defaults to round(sqrt(n))"),
    PatternEntry("fixed", "fixed[:S[:C]]", 0, 2,
                 lambda a, n, c: fixed(a[0] if a else _sqrt(n), a[1] if len(a) > 1 else 1),
                 "Sparse Transformer fixed (causal); C summary keys per block"),
    PatternEntry("dilated", "dilated:W:D", 2, 2,
                 lambda a, n, c: dilated(a[0], a[1], causal=c),
                 "dilated window, W steps of D"),
    PatternEntry("longformer", "longformer:W[:G]", 1, 2,
                 lambda a, n, c: longformer(a[0], a[1] if len(a) > 1 else 1, causal=c),
                 "window W each side + G global tokens"),
    PatternEntry("bigbird", "bigbird[:B]", 0, 1,
                 lambda a, n, c: bigbird(a[0] if a else 64, causal=c),
                 "BigBird with blocks of B (window, global and random blocks)"),
    PatternEntry("logsparse", "logsparse", 0, 0,
                 lambda a, n, c: log_sparse(),
                 "LogSparse: keys at distances 0, 1, 2, 4, 8, ... (causal)"),
]}


def build_pattern(name: str, args: tuple, n: int, causal: bool) -> Pattern:
    """The pattern named ``name`` with integer ``args`` for n tokens."""
    if name not in PATTERNS:
        raise ValueError(f"pattern: expected one of {', '.join(PATTERNS)}, got {name!r}")
    return PATTERNS[name].build(tuple(args), n, causal)
